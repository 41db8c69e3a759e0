"""Real-data sources (harness.corpora): registry, unavailable corpora, cached extraction and checksum,
the fixed split, reference figures, LM windows; then the three loaders on the installed packages
(.ci/setup installs them; skipped with the install command when a package is genuinely absent)."""
from __future__ import annotations

import ast
import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import harness.corpora as corpora
from harness.corpora import fashion_mnist, kjv, music
from harness.corpora.lm import held_out_bits, held_out_windows, sample_windows
from harness.corpora.reference import compressed_bits_per_byte, references, unigram_cross_entropy, unigram_entropy
from harness.corpora.source import Corpus, CorpusUnavailable, available, load, source_key
from harness.corpora.split import corpus_split, split

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FileCorpus(Corpus):
    """A corpus read from one file, for tests of load and its cache."""

    name: str = "file"
    title: str = "a test file"
    package: str = "none"
    origin: str = "a file"
    install: str = "write the file"
    licence: str = "none"
    token: str = "byte"
    block_len: int = 8
    held_out_every: int = 4
    path: str = ""

    def locate(self) -> list[Path]:
        if not Path(self.path).is_file():
            raise self.unavailable(f"no {self.path}")
        return [Path(self.path)]

    def extract(self, sources: list[Path]) -> bytes:
        return sources[0].read_bytes()


# --- registry and sources ------------------------------------------------------------------------------

def test_the_three_corpora_are_registered_with_their_source_install_command_and_licence():
    assert set(corpora.CORPORA) == {"kjv", "fashion_mnist", "music21"}
    for name, corpus in corpora.CORPORA.items():
        assert corpus.name == name and corpora.get(name) is corpus
        assert corpus.package and corpus.origin and corpus.licence and corpus.token in ("byte", "pixel")
    assert corpora.get("kjv").install == "apt-get install -y bible-kjv"
    assert corpora.get("fashion_mnist").install == "apt-get install -y dataset-fashion-mnist"
    assert "music21" in corpora.get("music21").install and corpora.get("music21").install.startswith("pip install")
    with pytest.raises(ValueError, match="unknown corpus 'enwik8'.*kjv"):
        corpora.get("enwik8")
    with pytest.raises(ValueError, match="registered twice"):
        corpora.register(kjv.CORPUS)


def test_harness_corpora_does_not_import_the_run_report_or_views_layers():
    for path in (REPO / "harness" / "corpora").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert not name.startswith(("harness.run", "harness.report", "harness.views")), (path, name)


@pytest.mark.parametrize("missing, field, value", [
    (kjv.CORPUS, "program", "no-such-bible-program"),
    (fashion_mnist.CORPUS, "directory", "/no/such/fashion-mnist"),
    (music.CORPUS, "module", "no_such_music21_package"),
])
def test_a_corpus_not_installed_is_one_line_naming_its_install_command(missing, field, value, tmp_path):
    corpus = replace(missing, **{field: value})
    ok, reason = available(corpus)
    assert not ok
    assert "\n" not in reason and reason.endswith(f"install it with: {missing.install}")
    assert reason.startswith(f"corpus {missing.name!r} is not installed (") and value in reason
    with pytest.raises(CorpusUnavailable) as caught:
        load(corpus, tmp_path)
    assert str(caught.value) == reason
    assert not any(tmp_path.iterdir())  # nothing extracted, nothing fetched


def test_load_caches_the_extraction_and_checksums_the_bytes_it_returns(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"abcdefgh" * 10)
    corpus = FileCorpus(path=str(source))
    first = load(corpus, tmp_path / "cache")
    assert first.sha256 == hashlib.sha256(b"abcdefgh" * 10).hexdigest()
    assert first.tokens.dtype == torch.uint8 and bytes(first.tokens.tolist()) == b"abcdefgh" * 10
    assert first.cache_path.name == f"file-{source_key(corpus, [source])}.bin" and first.cache_path.exists()
    again = load(corpus, tmp_path / "cache")  # from the cache, not extracted again
    assert again.sha256 == first.sha256 and again.cache_path == first.cache_path
    assert corpora.provenance(again) == {"corpus": "file", "corpus_sha256": first.sha256, "corpus_tokens": 80,
                                         "corpus_package": "none", "corpus_licence": "none"}
    source.write_bytes(b"something else, longer")  # a changed source is extracted afresh
    changed = load(corpus, tmp_path / "cache")
    assert changed.cache_path != first.cache_path
    assert changed.sha256 == hashlib.sha256(b"something else, longer").hexdigest()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REFORMER_BENCH_CACHE", str(tmp_path))
    assert corpora.cache_dir() == tmp_path / "corpora"
    monkeypatch.delenv("REFORMER_BENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpora.cache_dir() == tmp_path / "xdg" / "reformer-bench" / "corpora"


def test_bible_references_are_stripped_and_a_line_without_one_is_refused():
    printed = b"Ge1:1 In the beginning.\nSSol1:2 Let him kiss me.\n1Cor13:4 Charity suffereth long.\n"
    assert kjv.strip_references(printed) == b"In the beginning.\nLet him kiss me.\nCharity suffereth long.\n"
    with pytest.raises(ValueError, match="line 2 .* no verse reference"):
        kjv.strip_references(b"Ge1:1 In.\nno reference here\n")


# --- the split -----------------------------------------------------------------------------------------

def test_split_holds_out_interleaved_blocks_disjoint_from_training_and_covers_every_token():
    tokens = torch.arange(1000)  # a token's value is its position
    parts = split(tokens, block_len=30, every=5)
    held = parts.held_out.reshape(-1).tolist()
    train = torch.cat(parts.train).tolist()
    assert set(held).isdisjoint(train) and sorted(held + train) == list(range(1000))
    assert parts.held_out_starts == [60, 210, 360, 510, 660, 810, 960]  # blocks 2, 7, 12, ...: not the tail
    assert parts.held_out.shape == (7, 30)
    for run in parts.train:  # runs are contiguous stretches of the corpus
        assert run.tolist() == list(range(int(run[0]), int(run[0]) + len(run)))
    assert parts.train_tokens + parts.held_out_tokens == 1000
    assert [int(r[0]) for r in parts.train] == [0, 90, 240, 390, 540, 690, 840, 990]  # the tail is training
    assert "7 blocks, 210 tokens" in parts.describe()


def test_split_refuses_bad_arguments_with_the_value():
    with pytest.raises(ValueError, match="every must be an integer >= 2, got every=1"):
        split(torch.arange(100), 10, 1)
    with pytest.raises(ValueError, match="block_len must be an integer >= 1, got block_len=0"):
        split(torch.arange(100), 0, 4)
    with pytest.raises(ValueError, match="none is held out"):
        split(torch.arange(100), 50, 4)  # blocks 0 and 1; the held-out index is 2


# --- reference figures ---------------------------------------------------------------------------------

def test_unigram_entropy_and_cross_entropy():
    assert unigram_entropy(torch.tensor([0, 1, 2, 3] * 50, dtype=torch.uint8)) == pytest.approx(2.0)
    assert unigram_entropy(torch.full((100,), 7, dtype=torch.uint8)) == 0.0
    tokens = torch.tensor([0, 1] * 50, dtype=torch.uint8)
    reference = torch.tensor([0] * 99 + [1] * 99, dtype=torch.uint8)  # add-one: p = 100 / (198 + 256)
    assert unigram_cross_entropy(tokens, reference) == pytest.approx(-math.log2(100 / 454))


def test_compressors_tell_random_bytes_from_repetitive_ones():
    noise = bytes(torch.randint(0, 256, (20000,), generator=torch.Generator().manual_seed(0)).tolist())
    bz2_noise, xz_noise = compressed_bits_per_byte(noise)
    assert bz2_noise > 7.9 and xz_noise > 7.9
    bz2_rep, xz_rep = compressed_bits_per_byte(b"in the beginning " * 1000)
    assert bz2_rep < 0.2 and xz_rep < 0.2
    with pytest.raises(ValueError, match="at least one byte"):
        compressed_bits_per_byte(b"")


def test_references_of_a_split():
    tokens = torch.tensor(list(b"abcd" * 500), dtype=torch.uint8)
    parts = split(tokens, block_len=100, every=4)
    figures = references(parts.held_out, parts.train)
    assert figures.tokens == parts.held_out_tokens == 500
    assert figures.unigram_bits == pytest.approx(2.0) and figures.unigram_train_bits > 2.0
    assert figures.bz2_bits < 2.0 and figures.xz_bits < 2.0
    with pytest.raises(ValueError, match="uint8"):
        references(parts.held_out.long())


# --- language-model windows ----------------------------------------------------------------------------

def test_training_windows_lie_inside_one_run_and_start_aligned():
    tokens = torch.arange(2000)
    parts = split(tokens, block_len=100, every=4)
    windows = sample_windows(parts.train, 64, 200, torch.Generator().manual_seed(0))
    held = set(parts.held_out.reshape(-1).tolist())
    assert windows.shape == (200, 64) and windows.dtype == torch.int64
    assert bool(((windows[:, 1:] - windows[:, :-1]) == 1).all())  # contiguous: no run boundary inside
    assert held.isdisjoint(windows.reshape(-1).tolist())
    again = sample_windows(parts.train, 64, 200, torch.Generator().manual_seed(0))
    assert torch.equal(windows, again)
    aligned = sample_windows(parts.train, 200, 50, torch.Generator().manual_seed(1), align=100)
    assert bool((aligned[:, 0] % 100 == 0).all())
    with pytest.raises(ValueError, match="no training run holds a window of seq_len=400"):
        sample_windows(parts.train, 400, 1, torch.Generator())


def test_held_out_windows_cut_blocks_and_join_whole_blocks_only():
    held = torch.arange(6 * 10).reshape(6, 10)
    assert held_out_windows(held, 5).shape == (12, 5)
    assert held_out_windows(held, 20).tolist()[0] == list(range(20))  # two whole blocks (images)
    assert held_out_windows(held, 5, max_windows=3).tolist() == [[0, 1, 2, 3, 4], [30, 31, 32, 33, 34],
                                                                 [55, 56, 57, 58, 59]]
    with pytest.raises(ValueError, match="not a whole number of blocks"):
        held_out_windows(held, 15)


def test_held_out_bits_of_a_tiny_model_fall_when_it_learns_a_periodic_corpus():
    import impls
    from impls.model import ModelConfig, ReformerLM

    torch.manual_seed(0)
    tokens = torch.tensor(list(b"abcdefgh" * 200), dtype=torch.uint8)
    parts = split(tokens, block_len=64, every=5)
    cfg = ModelConfig(vocab=256, d_model=32, heads=2, d_ff=64, layers=1, max_seq_len=32, n_hashes=1, chunk_len=8)
    model = ReformerLM(cfg, backend=impls.reference_backend(), reversible=False)
    windows = held_out_windows(parts.held_out, 32)
    before = held_out_bits(model, windows, batch=8)
    assert before == pytest.approx(8.0, abs=0.3)  # an untrained model: about uniform over 256
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = model.loss(sample_windows(parts.train, 32, 8, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.training
    assert held_out_bits(model, windows, batch=8) < 1.0 and model.training


# --- the installed corpora ------------------------------------------------------------------------------

def _installed(name: str):
    ok, reason = available(corpora.get(name))
    if not ok:
        pytest.skip(reason)
    return corpora.load(name)


def test_king_james_bible_loads_without_references(tmp_path):
    data = _installed("kjv")
    text = bytes(data.tokens.tolist())
    assert text.startswith(b"In the beginning God created the heaven and the earth.\n")
    assert text.endswith(b"The grace of our Lord Jesus Christ be with you all. Amen.\n")
    assert text.count(b"\n") == 31102 and kjv.VERSE.search(text) is None
    fresh = load(corpora.get("kjv"), tmp_path)  # extracted again: the same checksum
    assert fresh.sha256 == data.sha256 == hashlib.sha256(text).hexdigest()
    parts = corpus_split(data)
    assert 0.05 < parts.held_out_tokens / len(data.tokens) < 0.15 and parts.held_out.shape[1] == 65536


def test_fashion_mnist_loads_70000_images_of_784_pixels(tmp_path):
    data = _installed("fashion_mnist")
    assert len(data.tokens) == 70000 * 784 and int(data.tokens.max()) == 255 and int(data.tokens.min()) == 0
    parts = corpus_split(data)
    assert parts.held_out.shape == (7000, 784)
    assert load(corpora.get("fashion_mnist"), tmp_path).sha256 == data.sha256


def test_music21_corpus_loads_its_krn_and_abc_files_separated(tmp_path):
    data = _installed("music21")
    corpus = corpora.get("music21")
    files = corpus.locate()
    assert {p.suffix for p in files} == {".krn", ".abc"} and len(files) > 1000
    text = bytes(data.tokens.tolist())
    assert text.count(music.SEPARATOR) == len(files) and text.endswith(music.SEPARATOR)
    assert b"**kern" in text and b"\nX:" in text
    assert load(corpus, tmp_path).sha256 == data.sha256
