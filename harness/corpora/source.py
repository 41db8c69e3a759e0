"""A corpus as a data source: where its data come from, how it installs, its licence, and its tokens.

A corpus module defines a frozen dataclass subclass of Corpus whose fields say where the data lie (a
command, a directory, a package); `locate` turns them into the files read (or raises CorpusUnavailable,
one line naming the install command), `extract` turns those files into the token bytes. `load` caches
the extracted bytes under cache_dir() and returns them with their SHA-256, which every row carries.

Depends on the standard library and torch only.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

CACHE_ENV = "REFORMER_BENCH_CACHE"


class CorpusUnavailable(RuntimeError):
    """A corpus whose package is not installed: one line naming the corpus, what is missing and the
    command that installs it (a case on it becomes status `unavailable` with this line)."""


@dataclass(frozen=True)
class Corpus:
    """name: the registry key. title: what it is, for a report. package: where it comes from (registry
    and package name). origin: the path or command inside the package that the data are read from.
    install: the one command that installs it. licence: of the data. token: "byte" (a text's bytes)
    or "pixel" (grey levels 0..255); either way a token is one uint8, vocab 256. block_len,
    held_out_every: the fixed split (harness.corpora.split). extract_version: raised when extract
    changes its output, so that a cached extraction is not reused."""

    name: str
    title: str
    package: str
    origin: str
    install: str
    licence: str
    token: str
    block_len: int
    held_out_every: int
    extract_version: int = 1

    vocab = 256

    def locate(self) -> list[Path]:
        """The files (or programs) the data are read from; CorpusUnavailable if any is missing."""
        raise NotImplementedError

    def extract(self, sources: list[Path]) -> bytes:
        """The corpus as token bytes, read from `sources` (locate's result)."""
        raise NotImplementedError

    def unavailable(self, missing: str) -> CorpusUnavailable:
        return CorpusUnavailable(f"corpus {self.name!r} is not installed ({missing}); "
                                 f"install it with: {self.install}")


def available(corpus: Corpus) -> tuple[bool, str]:
    """(True, "") when the corpus's files are there, else (False, the one-line reason)."""
    try:
        corpus.locate()
    except CorpusUnavailable as exc:
        return False, str(exc)
    return True, ""


@dataclass(frozen=True)
class CorpusData:
    """A loaded corpus: tokens (1-D uint8 tensor), their SHA-256 (hex) and where they are cached."""

    corpus: Corpus
    tokens: torch.Tensor
    sha256: str
    cache_path: Path


def provenance(data: CorpusData) -> dict:
    """What a row says of the corpus it was computed on: name, checksum, size, package and licence."""
    corpus = data.corpus
    return {"corpus": corpus.name, "corpus_sha256": data.sha256, "corpus_tokens": int(data.tokens.numel()),
            "corpus_package": corpus.package, "corpus_licence": corpus.licence}


def cache_dir() -> Path:
    """$REFORMER_BENCH_CACHE/corpora, else $XDG_CACHE_HOME (or ~/.cache)/reformer-bench/corpora."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root) / "corpora"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reformer-bench" / "corpora"


def source_key(corpus: Corpus, sources: list[Path]) -> str:
    """Names a cached extraction: the corpus's fields and each source's path, size and mtime, so that an
    upgraded package or a changed extractor is extracted afresh."""
    stats = []
    for path in sources:
        st = path.stat()
        stats.append([str(path), st.st_size, st.st_mtime_ns])
    spec = {f.name: getattr(corpus, f.name) for f in fields(corpus)}
    text = json.dumps({"class": type(corpus).__name__, "fields": spec, "sources": stats}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(corpus: Corpus, directory: Path | None = None) -> CorpusData:
    """The corpus's tokens, extracted once per source_key and cached in `directory` (cache_dir()).

    The checksum is computed from the bytes returned, on every load, so a row's checksum is that of the
    data it was computed on even if a cache file was altered. Raises CorpusUnavailable (one line) when
    the package is not installed; nothing is ever downloaded.
    """
    sources = corpus.locate()
    directory = Path(directory) if directory is not None else cache_dir()
    path = directory / f"{corpus.name}-{source_key(corpus, sources)}.bin"
    if path.exists():
        data = path.read_bytes()
    else:
        data = corpus.extract(sources)
        if not data:
            raise corpus.unavailable(f"{corpus.origin} gave no data")
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)  # written beside and renamed: a killed run never leaves half a file
        os.replace(tmp, path)
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return CorpusData(corpus=corpus, tokens=tokens, sha256=hashlib.sha256(data).hexdigest(), cache_path=path)
