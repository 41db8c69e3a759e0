"""Real corpora as registered data sources (issue 21): a book, images as pixel sequences, music.

CORPORA maps a corpus's name to its source (harness.corpora.source.Corpus): where its data come from,
the command that installs it, its licence, how it is extracted to uint8 tokens, its fixed split.
load(name) gives the tokens and their SHA-256; split.corpus_split the train / held-out split;
reference.references the held-out split's unigram entropy and bz2 / xz bits per byte.

Depends on the standard library and torch only (no harness.run, report or views).
"""
from __future__ import annotations

from . import fashion_mnist, kjv, music
from .source import Corpus, CorpusData, CorpusUnavailable, available, cache_dir, provenance
from .source import load as load_corpus

CORPORA: dict[str, Corpus] = {}


def register(corpus: Corpus) -> Corpus:
    """Add a corpus under its name; a second corpus of the same name is refused."""
    if corpus.name in CORPORA:
        raise ValueError(f"corpus {corpus.name!r} is registered twice")
    CORPORA[corpus.name] = corpus
    return corpus


def get(name: str) -> Corpus:
    """The corpus registered as `name`; ValueError naming the known ones otherwise."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r} (known: {', '.join(sorted(CORPORA))})")
    return CORPORA[name]


def load(name: str) -> CorpusData:
    """Tokens and checksum of the corpus registered as `name` (CorpusUnavailable when not installed)."""
    return load_corpus(get(name))


for _module in (kjv, fashion_mnist, music):
    register(_module.CORPUS)

__all__ = ["CORPORA", "Corpus", "CorpusData", "CorpusUnavailable", "available", "cache_dir", "get", "load",
           "provenance", "register"]
