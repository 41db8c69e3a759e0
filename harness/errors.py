"""The one error type for bad user input (a suite file, a flag, a results or baseline file)."""
from __future__ import annotations


class UserError(ValueError):
    """Input that cannot be used, as one line naming the file (and line), the key and the value.

    The command line prints it without a traceback and exits with code 2."""
