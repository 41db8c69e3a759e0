"""The row metrics of the language-modelling task (harness.tasks.lm), declared in the metric table when
the task is registered (torch-free, so that a report or a row check knows them without loading torch)."""
from __future__ import annotations

from harness.measure.metrics import Metric, register_metric

LM_METRICS = (
    Metric("bits_per_dim", "1", "lm task: held-out next-token cross-entropy in bits per token (per byte of text, "
           "per pixel of an image), evaluated with the case's attention on the corpus's fixed held-out windows",
           title="bits/dim", fmt=".3f", terminal=True),
    Metric("eval_tokens", "1", "lm task: the held-out tokens bits_per_dim is the mean over (predicted tokens)",
           kind="count", title="held-out tokens"),
    Metric("heldout_curve", "", "lm task, training cases: [step, held-out bits per token, training seconds] at "
           "every curve_every steps, under the training attention on curve_windows held-out windows",
           kind="trace"),
    Metric("lm_setting", "", "lm task: the model's training setting (shared or separate query-key, two-stream "
           "or plain residuals, reversible backward)", kind="text", title="setting"),
    Metric("heldout_unigram_bits", "1", "lm task, training cases: entropy of the held-out split's own token "
           "frequencies, bits per token (what frequencies alone give)", title="unigram", fmt=".3f"),
    Metric("heldout_unigram_train_bits", "1", "lm task, training cases: held-out tokens under the training "
           "split's frequencies (add-one), bits per token", title="unigram (train freq.)", fmt=".3f"),
    Metric("heldout_bz2_bits", "1", "lm task, training cases: bz2 -9 of the held-out split, bits per byte",
           title="bz2", fmt=".3f"),
    Metric("heldout_xz_bits", "1", "lm task, training cases: xz -9e of the held-out split, bits per byte",
           title="xz", fmt=".3f"),
    Metric("corpus", "", "the corpus the model was trained and evaluated on (harness.corpora)", kind="text"),
    Metric("corpus_sha256", "", "SHA-256 of the corpus's extracted tokens", kind="text", title="corpus sha256"),
    Metric("corpus_tokens", "1", "tokens in the whole corpus", kind="count"),
    Metric("corpus_package", "", "where the corpus comes from (registry and package)", kind="text"),
    Metric("corpus_licence", "", "the corpus's licence", kind="text"),
)
for _metric in LM_METRICS:
    register_metric(_metric)

NAMES = tuple(metric.name for metric in LM_METRICS)
