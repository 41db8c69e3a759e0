"""The King James Bible as bytes: Debian `bible-kjv`, printed by its `bible` program.

`bible -f 'gen1:1-rev22:21'` prints every verse on a line of its own, `Ref Text` (e.g. `Ge1:1 In the
beginning ...`, `SSol1:1 ...`). The reference and the one space after it are stripped from each line
(the text a reader reads, without the numbering a model could only learn as a counter); the newline
ending each verse is kept. A line without a reference is refused, so a changed output format fails
loudly rather than leaving references in the text.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .source import Corpus

VERSE = re.compile(rb"^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ ")
ALL_VERSES = "gen1:1-rev22:21"


@dataclass(frozen=True)
class KingJamesBible(Corpus):
    name: str = "kjv"
    title: str = "King James Bible (31,102 verses, references stripped)"
    package: str = "Debian bible-kjv (text in bible-kjv-text's /usr/lib/bible.data)"
    origin: str = f"bible -f '{ALL_VERSES}'"
    install: str = "apt-get install -y bible-kjv"
    licence: str = "public domain (text); GPL-2+ (the bible program)"
    token: str = "byte"
    block_len: int = 65536
    held_out_every: int = 10
    program: str = "bible"
    data_file: str = "/usr/lib/bible.data"

    def locate(self) -> list[Path]:
        program = shutil.which(self.program)
        if program is None:
            raise self.unavailable(f"no {self.program!r} command on PATH")
        sources = [Path(program)]
        if Path(self.data_file).exists():  # only for the cache key: the program finds its own data
            sources.append(Path(self.data_file))
        return sources

    def extract(self, sources: list[Path]) -> bytes:
        done = subprocess.run([str(sources[0]), "-f", ALL_VERSES], capture_output=True, timeout=120)
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip().splitlines()
            raise self.unavailable(f"{self.origin} exited with {done.returncode}: "
                                   f"{stderr[-1] if stderr else 'no message'}")
        return strip_references(done.stdout)


def strip_references(printed: bytes) -> bytes:
    """Each `Ref Text` line of bible's output as `Text\\n`; ValueError naming the first line without one."""
    out = []
    for number, line in enumerate(printed.splitlines(), 1):
        match = VERSE.match(line)
        if match is None:
            raise ValueError(f"line {number} of bible's output has no verse reference: {line[:60]!r}")
        out.append(line[match.end():])
    return b"\n".join(out) + b"\n" if out else b""


CORPUS = KingJamesBible()
