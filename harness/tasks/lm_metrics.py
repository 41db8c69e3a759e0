"""The row metrics of the language-modelling task (harness.tasks.lm), by name: they are declared with the
built-in metrics (harness.measure.metrics), since the metric table sits above the task registry in the
layers (docs/DESIGN.md) and a row check or a report must know them without loading the task."""
from __future__ import annotations

NAMES = (
    "bits_per_dim",
    "eval_tokens",
    "heldout_curve",
    "lm_setting",
    "heldout_unigram_bits",
    "heldout_unigram_train_bits",
    "heldout_bz2_bits",
    "heldout_xz_bits",
    "corpus",
    "corpus_sha256",
    "corpus_tokens",
    "corpus_package",
    "corpus_licence",
)
