"""Test corpora for the lm task (suite plugin `lm_corpora`): `pattern`, a short repeating text a tiny
model learns in a few dozen steps, and `missing`, a corpus whose package is never installed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import corpora
from harness.corpora import Corpus

PATTERN = b"abcdefgh"


@dataclass(frozen=True)
class PatternCorpus(Corpus):
    name: str = "pattern"
    title: str = "a repeating pattern of eight letters (test)"
    package: str = "tests/suites/lm_corpora.py"
    origin: str = "generated"
    install: str = "nothing to install"
    licence: str = "CC0"
    token: str = "byte"
    block_len: int = 64
    held_out_every: int = 4

    def locate(self) -> list[Path]:
        return []

    def extract(self, sources: list[Path]) -> bytes:
        return PATTERN * 512


@dataclass(frozen=True)
class MissingCorpus(Corpus):
    name: str = "missing"
    title: str = "a corpus that is never installed (test)"
    package: str = "Debian: no-such-corpus"
    origin: str = "/nonexistent/no-such-corpus"
    install: str = "apt-get install -y no-such-corpus"
    licence: str = "none"
    token: str = "byte"
    block_len: int = 64
    held_out_every: int = 4

    def locate(self) -> list[Path]:
        raise self.unavailable(f"{self.origin} not found")


for _corpus in (PatternCorpus(), MissingCorpus()):
    if _corpus.name not in corpora.CORPORA:
        corpora.register(_corpus)
