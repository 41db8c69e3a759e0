"""The metric table: every figure a results row carries, declared once.

A Metric says what a row key holds (unit, how it is measured, whether the gate compares it, how tables
show it); rows, `show`, the report's tables, the gate and the pytest-benchmark extra_info are derived
from this table. A Measurement is the function that fills some metrics of a case in the worker, in
table order; built-in measurements live in harness.measure.stages.

A new metric is one declaration and one measuring function, e.g. in a suite plugin module:

    from harness.measure.metrics import Metric, register_metric

    def out_abs_max(ctx):                       # ctx: harness.measure.stages.Context
        return {"out_abs_max": float(ctx.output.abs().max())}

    register_metric(Metric("out_abs_max", unit="1", how="max |out| of the untimed call", terminal=True),
                    measure=out_abs_max)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Units a table may show a stored unit in: shown unit -> (stored unit, divisor).
SHOWN_UNITS = {
    "s": ("s", 1.0), "ms": ("s", 1e-3), "µs": ("s", 1e-6),
    "B": ("B", 1.0), "KiB": ("B", 2.0 ** 10), "MiB": ("B", 2.0 ** 20), "GiB": ("B", 2.0 ** 30),
    "FLOP": ("FLOP", 1.0), "GFLOP": ("FLOP", 1e9), "TFLOP": ("FLOP", 1e12),
    "FLOP/s": ("FLOP/s", 1.0), "GFLOP/s": ("FLOP/s", 1e9), "TFLOP/s": ("FLOP/s", 1e12),
    "tokens/s": ("tokens/s", 1.0), "1": ("1", 1.0), "%": ("1", 0.01), "": ("", 1.0),
}
KINDS = ("number", "count", "text", "flag", "trace", "mapping", "records")
GATE_RULES = (None, "always", "on request")


@dataclass(frozen=True)
class Metric:
    """name: the row key. unit: of the stored value ("s", "B", "FLOP", "FLOP/s", "1" for a pure number,
    "" for text and flags). how: how it is measured, one sentence. kind: number | count | text | flag |
    trace (a list of [x, y] samples: plotted, never in a table) | mapping (an object of name -> number,
    in `unit`) | records (a list of flat objects); tables show a mapping's largest entries and a
    records list's length.
    title / shown_unit / fmt: its column in tables (shown_unit from SHOWN_UNITS; fmt a format spec).
    terminal: a column of `reformer-bench show`. gate: None, "always" (the memory gate compares it) or
    "on request" (compared when its tolerance is given). tolerance: the relative change that counts as
    a regression or improvement, in the gate and the report alike: a metric with one is compared between
    two runs in the report (larger is worse). noise: the metric whose value is the measurement noise of
    this one (a change within it is no regression). quantity: what it measures in a word or two, where
    two runs are compared (the report's comparison columns, ratios and verdicts); default its title.
    benchmark: part of a pytest-benchmark test's extra_info. run_setting: says how the case ran rather
    than what it measured; the report folds it into the sentence above its cases table where every row
    has the same value."""

    name: str
    unit: str
    how: str
    kind: str = "number"
    title: str = ""
    shown_unit: str | None = None
    fmt: str = ".4g"
    terminal: bool = False
    gate: str | None = None
    tolerance: float | None = None
    noise: str | None = None
    quantity: str = ""
    benchmark: bool = False
    run_setting: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"metric name must be an identifier, got name={self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {KINDS}, got kind={self.kind!r}")
        if self.gate not in GATE_RULES:
            raise ValueError(f"metric {self.name!r}: gate must be one of {GATE_RULES}, got gate={self.gate!r}")
        shown = self.shown_unit if self.shown_unit is not None else self.unit
        if shown not in SHOWN_UNITS or (self.kind in ("number", "count") and SHOWN_UNITS[shown][0] != self.unit):
            raise ValueError(f"metric {self.name!r}: shown_unit={shown!r} does not show unit={self.unit!r}")

    @property
    def numeric(self) -> bool:
        return self.kind in ("number", "count")

    @property
    def shown(self) -> str:
        """The unit its tables show."""
        return self.shown_unit if self.shown_unit is not None else self.unit

    @property
    def column(self) -> str:
        """Its table header, with the unit shown."""
        return self.headed(self.title or self.name)

    def headed(self, title: str) -> str:
        """A column title about this metric with its shown unit: "title (ms)"; a pure number has none."""
        return f"{title} ({self.shown})" if self.shown and self.shown != "1" else title

    @property
    def compared_as(self) -> str:
        """Its name where two runs are compared: quantity, else its title, else its name."""
        return self.quantity or self.title or self.name

    @property
    def divisor(self) -> float:
        return SHOWN_UNITS[self.shown][1]

    def format(self, value) -> str | None:
        """The value as a table shows it; None for null (unknown, never 0)."""
        if value is None or (isinstance(value, float) and value != value):
            return None
        if self.kind == "count":
            return f"{int(value):,}"
        if self.kind == "number":
            shown = value / self.divisor
            # Large values in full (17,390 rather than 1.739e+04): the digits beyond fmt's are not noise here.
            return f"{shown:,.0f}" if abs(shown) >= 1e4 else format(shown, self.fmt)
        if self.kind == "flag":
            return "yes" if value else "no"
        if self.kind == "trace":
            return f"{len(value)} samples"
        if self.kind == "mapping":
            largest = sorted(value.items(), key=lambda kv: -kv[1])[:3]
            return ", ".join(f"{k} {v / self.divisor:{self.fmt}}" for k, v in largest) + (
                ", ..." if len(value) > 3 else "")
        if self.kind == "records":
            return f"{len(value)} entries"
        return str(value)


@dataclass(frozen=True)
class Measurement:
    """A function that fills `metrics` of a case: measure(ctx) -> {metric: value} (ctx:
    harness.measure.stages.Context). auxiliary: a failure of it leaves the case's status alone (the
    reason says what is missing and why), as for a cross-check; otherwise it fails the case."""

    name: str
    measure: Callable
    metrics: tuple[str, ...]
    auxiliary: bool = False
    # For a measurement a case must ask for (a profile): whether it runs for this case (a Case); a case
    # that does not ask has neither its stage nor its figures. None: it runs for every case.
    applies: Callable | None = None


METRICS: dict[str, Metric] = {}
# Built-in measurements (harness.measure.stages) run first, in their order, then the others in theirs,
# whatever order the modules were imported in.
BUILT_IN_MEASUREMENTS: list[Measurement] = []
MEASUREMENTS: list[Measurement] = []


def register_metric(metric: Metric, measure: Callable | None = None) -> Metric:
    """Declare a metric; with `measure`, also the (auxiliary) measurement that fills it, run after
    the ones registered before it. A metric filled by the harness itself (wall time) has none."""
    METRICS[metric.name] = metric
    if measure is not None:
        register_measurement(Measurement(metric.name, measure, (metric.name,), auxiliary=True))
    return metric


def register_measurement(measurement: Measurement, built_in: bool = False) -> None:
    unknown = [m for m in measurement.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"measurement {measurement.name!r} fills undeclared metrics {unknown}")
    target = BUILT_IN_MEASUREMENTS if built_in else MEASUREMENTS
    target[:] = [m for m in target if m.name != measurement.name] + [measurement]


def measurements() -> list[Measurement]:
    """Every measurement in the order the worker runs them: the built-in ones, then the others."""
    return BUILT_IN_MEASUREMENTS + MEASUREMENTS


def metrics(predicate: Callable[[Metric], bool] = lambda m: True) -> list[Metric]:
    """The declared metrics, in table order, that satisfy predicate."""
    return [m for m in METRICS.values() if predicate(m)]


# --- the built-in metrics, in row order ---------------------------------------------------------

_BUILT_IN = (
    Metric("status", "", "ok | oom | timeout | error | crashed | unavailable | nonfinite", kind="text"),
    Metric("reason", "", "why a case failed, and which cross-check was not measured", kind="text"),
    Metric("time_median_s", "s", "median of `repeats` timed calls after the first call and `warmup` more "
           "(time.perf_counter; torch.cuda.synchronize around each call on CUDA)", title="median",
           shown_unit="ms", terminal=True, gate="on request", tolerance=0.10, noise="time_iqr_s", quantity="time",
           benchmark=False),
    Metric("time_q1_s", "s", "first quartile of the timed calls (inclusive method)", title="Q1", shown_unit="ms"),
    Metric("time_q3_s", "s", "third quartile of the timed calls (inclusive method)", title="Q3", shown_unit="ms"),
    Metric("time_iqr_s", "s", "Q3 - Q1 of the timed calls; 0 for one repeat", title="IQR", shown_unit="ms",
           terminal=True),
    Metric("time_min_s", "s", "fastest timed call", title="min", shown_unit="ms"),
    Metric("repeats", "1", "timed calls", kind="count", run_setting=True),
    Metric("tokens_per_s", "tokens/s", "batch * seq_len / time_median_s (a model: tokens of one step); a training "
           "case: tokens trained per second of the steps it ran",
           title="tokens/s", fmt=",.0f"),
    Metric("first_call_s", "s", "the first call alone: lazy init, compilation and autotuning land here",
           title="first", shown_unit="ms", terminal=True),
    Metric("compile_time_s", "s", "first call - warm median, for backends that compile (others: null)",
           title="compile", shown_unit="s"),
    Metric("compilations", "1", "dynamo compilations the backend reports (compile_stats)", kind="count"),
    Metric("mem_peak_bytes", "B", "what lives before the call (inputs, grad_out; or parameters and optimizer "
           "state) + the peak the call adds: exact live tensor bytes on the CPU, the CUDA allocator's peak on GPU",
           title="peak mem", shown_unit="MiB", terminal=True, gate="always", tolerance=0.05, quantity="memory",
           benchmark=True),
    Metric("mem_method", "", "how mem_peak_bytes was measured, or why it was not", kind="text", title="memory method",
           benchmark=True, run_setting=True),
    Metric("mem_bound", "", "exact, or lower bound: memory the method cannot see was used (an ATen kernel's "
           "workspace outside tensors, a compiled or interpreted kernel's own scratch)", kind="text",
           title="memory is"),
    Metric("mem_alloc_peak_bytes", "B", "CPU: what lives before the call + the peak of bytes allocated minus freed "
           "through PyTorch's CPU allocator during it (torch.profiler allocator events): kernel workspaces and "
           "compiled code included", title="allocator peak", shown_unit="MiB"),
    Metric("nvml_peak_used_bytes", "B", "NVML device memory used, sampled in a thread: a device-wide cross-check "
           "(CUDA context, allocator cache, other processes)", title="NVML peak", shown_unit="MiB"),
    Metric("rss_peak_bytes", "B", "the worker process's peak resident set size over setup and the timed calls "
           "(getrusage): the interpreter, torch and the inputs included, under malloc's defaults", title="peak RSS",
           shown_unit="MiB"),
    Metric("rss_call_rise_bytes", "B", "highest RSS sampled during the memory call - RSS at its start "
           "(memory-profiler, every 10 ms, glibc's mmap threshold fixed so that freed blocks are returned)",
           title="RSS rise", shown_unit="MiB"),
    Metric("rss_trace", "", "the RSS samples of the memory call, [seconds, bytes]", kind="trace"),
    Metric("rss_note", "", "what the RSS figures include and how they were sampled", kind="text"),
    Metric("flops_analytic", "FLOP", "the algorithm's matmul FLOPs by the formulas of harness.measure.flops",
           title="FLOPs analytic", shown_unit="GFLOP"),
    Metric("flops_counted", "FLOP", "matmul FLOPs FlopCounterMode counts in an untimed call of the eager path "
           "(null where it counts none)", title="FLOPs counted", shown_unit="GFLOP", benchmark=True),
    Metric("achieved_flops_per_s", "FLOP/s", "flops_analytic (else flops_counted) / time_median_s",
           title="achieved", shown_unit="GFLOP/s", terminal=True),
    Metric("rel_error", "1", "||out - reference|| / ||reference|| against the exact dense attention on the "
           "same inputs (an all-zero output scores 1)", title="rel err", fmt=".3g", terminal=True, tolerance=0.10,
           quantity="rel. error"),
    Metric("attn_mass_recall", "1", "mean share of the exact attention mass on the keys LSH's windows contain",
           title="recall", fmt=".3f", terminal=True),
    Metric("phase_times", "s", "phases pass (`phases`, untimed, after every other pass): one call under "
           "torch.profiler with the backends' named phases on (record_function ranges: lsh.hash, lsh.sort, "
           "lsh.gather, lsh.attend, lsh.unsort, lsh.combine, lsh.backward.*); per phase the summed exclusive "
           "time of its ranges, `other` for the rest of the call (a backend without phases: all of it)",
           kind="mapping", title="phase times", shown_unit="ms"),
    Metric("phase_shares", "1", "phase_times / phase_total_s: what share of the profiled call each phase took",
           kind="mapping", title="phase shares", shown_unit="%", fmt=".1f"),
    Metric("phase_total_s", "s", "the phases pass's profiled call, start to end (torch.profiler's own cost "
           "per op is in it: compare shares, not times, with time_median_s)", title="profiled call",
           shown_unit="ms"),
    Metric("peak_live_top", "B", "`peak_live`: the live set at the CPU memory peak (the tensor tracker of the "
           "memory pass), grouped by the op that made each storage and where (module | backward of an "
           "autograd node | phase), largest first, with what lived before the call: the first "
           "groups as {op, where, bytes, count} (all of them, summing to mem_peak_bytes, in peak_live_file)",
           kind="records", title="live at peak"),
    Metric("peak_live_file", "", "`peak_live`: the whole live-set breakdown (JSON), or on CUDA the allocator's "
           "memory snapshot of the memory call (a pickle pytorch.org/memory_viz opens), relative to the run "
           "directory", kind="text", title="live set file"),
    Metric("trace_file", "", "`profile`: a Chrome-format trace of one untimed profiled call (Perfetto, "
           "chrome://tracing), relative to the run directory", kind="text", title="trace"),
    Metric("op_table_file", "", "`profile`: the op table of that call (top ops by self time: calls, input "
           "shapes, FLOPs where torch knows them; JSON, and ops.txt beside it), relative to the run directory",
           kind="text", title="op table"),
    Metric("worker_setup_s", "s", "worker process start to inputs built (before the first call)",
           title="worker setup", shown_unit="s"),
    Metric("started_at", "", "when the case's worker was started (UTC, ISO 8601, the launching node's clock): with "
           "wall_s, when the case ran, e.g. which cases of a Ray run ran at the same time", kind="text",
           title="started"),
    Metric("wall_s", "s", "the whole case as the runner saw it: start-up, every pass, exit", title="wall",
           shown_unit="s"),
    Metric("work_s", "s", "the measured work inside the worker: the timing pass (first, warm-up and timed calls), "
           "or a task case's training / evaluation", title="work", shown_unit="s"),
    Metric("overhead_s", "s", "wall_s - work_s: the harness's time around the measured work (process start, setup, "
           "the untimed passes, exit); the whole wall_s of a case that did no work", title="harness overhead",
           shown_unit="s"),
    Metric("task_accuracy", "1", "task cases: the share of scored targets the trained model predicts (argmax) on "
           "held-out sequences, evaluated with the case's attention", title="task accuracy", shown_unit="%",
           fmt=".2f", terminal=True),
    Metric("chance_accuracy", "1", "evaluation cases: the accuracy of a uniform guess among the values a scored "
           "target may take (the task's chance level)", title="chance", shown_unit="%", fmt=".2f"),
    Metric("train_steps", "1", "task cases: optimizer steps the model was trained for", kind="count", title="steps"),
    Metric("train_loss", "1", "training cases: cross-entropy (nats) of the last logged training batch",
           title="train loss", fmt=".3f"),
    Metric("train_accuracy", "1", "training cases: accuracy on the last logged training batch (fresh data each "
           "step: a held-out figure for the weights before the step)", title="train accuracy", shown_unit="%",
           fmt=".2f"),
    Metric("train_s", "s", "training cases: wall time of the steps this run trained (not of steps a resumed "
           "run took from its checkpoint)", title="training", shown_unit="s"),
    Metric("train_step_s", "s", "training cases: train_s / the steps it covers", title="per step", shown_unit="s"),
    Metric("resumed_from_step", "1", "training cases: the checkpoint's step a resumed training continued from",
           kind="count", title="resumed at"),
    Metric("eval_s", "s", "evaluation cases: wall time of the evaluation", title="evaluation", shown_unit="s"),
    Metric("train_curve", "", "training cases: [step, loss, accuracy] of the logged steps (also in "
           "tasks/<case id>/curve.json of the run directory)", kind="trace"),
    Metric("checkpoint", "", "training cases: the checkpoint the evaluations load", kind="text"),
    # The language-modelling task's (harness.tasks.lm; its names in harness.tasks.lm_metrics).

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
    Metric("interpreted", "", "ran under an interpreter (the Triton interpreter on the CPU): its time is not "
           "the kernel's", kind="flag", run_setting=True),
    Metric("peer", "", "package and version behind a peer backend", kind="text", run_setting=True),
    Metric("stage", "", "the worker's last stage (where a failure happened)", kind="text"),
    Metric("node", "", "the host the case ran on (harness.env.node_facts)", kind="text"),
    Metric("node_gpu", "", "the GPU a CUDA case ran on, by NVML's name (null for a CPU case)", kind="text"),
)
for _metric in _BUILT_IN:
    register_metric(_metric)
