"""Process helpers shared by the tests that kill runners and watch their workers."""
from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process pid exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
