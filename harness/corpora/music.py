"""music21's corpus as text: PyPI `music21`, the Humdrum (.krn) and ABC (.abc) files inside the package.

The files are read as bytes (music21 is never imported: its parser is not needed, and importing it
is slow), in sorted order of their path relative to the corpus directory, each followed by one
SEPARATOR byte, a byte that no .krn or .abc file of the corpus contains, so a model sees where a
piece ends. The package is found with importlib's find_spec, which does not import it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .source import Corpus

SEPARATOR = b"\x00"
SUFFIXES = (".krn", ".abc")


@dataclass(frozen=True)
class Music21Corpus(Corpus):
    name: str = "music21"
    title: str = "music21's corpus: Humdrum .krn (Bach chorales, Palestrina, ...) and .abc folk tunes, as text"
    package: str = "PyPI music21"
    origin: str = "music21/corpus/**/*.krn and *.abc, sorted by path, NUL after each file"
    install: str = "pip install 'music21>=9'"
    licence: str = "BSD-3-Clause (music21 and its corpus)"
    token: str = "byte"
    block_len: int = 65536
    held_out_every: int = 10
    module: str = "music21"

    def corpus_dir(self) -> Path:
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            raise self.unavailable(f"no Python package {self.module!r}")
        return Path(spec.origin).parent / "corpus"

    def locate(self) -> list[Path]:
        root = self.corpus_dir()
        files = sorted((p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()),
                       key=lambda p: p.relative_to(root).as_posix())
        if not files:
            raise self.unavailable(f"no .krn or .abc file under {root}")
        return files

    def extract(self, sources: list[Path]) -> bytes:
        return b"".join(path.read_bytes() + SEPARATOR for path in sources)


CORPUS = Music21Corpus()
