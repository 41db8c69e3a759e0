"""Units of user input: sizes such as "512 MiB" (suite files, pytest marks). Below every other harness module."""
from __future__ import annotations

import re

_SIZE_UNITS = {
    "b": 1,
    "kb": 1000, "kib": 1024,
    "mb": 1000 ** 2, "mib": 1024 ** 2,
    "gb": 1000 ** 3, "gib": 1024 ** 3,
}
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in a size such as "64 MiB", "1.5GB", "512" (plain bytes) or an int.

    Units: B, KB = 1000 B, KiB = 1024 B, MB = 1000**2 B, MiB = 1024**2 B, GB, GiB (case-insensitive).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must be >= 0 bytes, got size={text!r}")
        return text
    if not isinstance(text, str):
        raise ValueError(
            f"size must be a string like '64 MiB' or an int, got size={text!r}")
    match = _SIZE_PATTERN.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or (unit and unit not in _SIZE_UNITS):
        raise ValueError(f"size must be a number with an optional unit B, KB, KiB, MB, MiB, GB or GiB, "
                         f"got size={text!r}")
    return round(float(match.group(1)) * _SIZE_UNITS[unit or "b"])
