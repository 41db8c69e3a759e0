"""A suite file (TOML) -> its tables, then its cases (harness.suite.expand); a file that cannot be read
or parsed is one UserError line naming it (and the line of a syntax error)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from .expand import Suite, expand_suite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib


def load_suite(path: str | Path, backends: list[str] | None = None, max_seq_len: int | None = None) -> Suite:
    """Read, validate and expand a suite file. backends / max_seq_len filter the cases (CLI flags)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read suite file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if "end of document" in message and "line" not in message:
            message += f" (line {len(text.splitlines())}, the last)"
        raise UserError(f"{path}: TOML syntax error: {message}") from None
    return expand_suite(data, path, backends=backends, max_seq_len=max_seq_len)
