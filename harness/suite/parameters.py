"""The table of case parameters: every parameter of a case, declared once.

A Parameter says what a case key holds (type, default, the values it may take, whether a row may hold
null), its role, and how tables show it. The suite loader's checks (with did-you-mean), the [defaults] a
suite starts from, the order of a row's parameter keys, the results reader's check of every row, the
report's columns and the keys its groupings use, and the case id derive from this table.

Roles (what the report and the comparisons do with a parameter):
    identity  which case it is: its id, backend and suite
    grouping  rows that share these share a plot (a scaling group, a grid)
    series    along a scaling series: the length, and the batch that may follow it
    lsh-only  an LSH setting: null in a dense row; a flag of them names the series (flag_label)
    task      a task case's training and evaluation
    run       how the case is run: hashed into its id, never compared

A plugin adds a parameter as it adds a metric, from a suite's plugin module:

    from harness.suite.parameters import Parameter, register_parameter

    register_parameter(Parameter("temperature", 1.0, "number", "softmax temperature of the toy backend",
                                 role="grouping", minimum=0.0, column="parameter"))

Its value reaches the worker as case.extra["temperature"], and rows, `show` and the report as a key.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from ..inputs import INPUTS

ROLES = ("identity", "grouping", "series", "lsh-only", "task", "run")
TYPES = ("int", "number", "bool", "text", "size", "table")
COLUMNS = (None, "parameter", "context")

# Values the worker knows how to run. The attention inputs come from their registry (plugins add to it).
WORKLOADS = ("attention", "layer", "model")
MODES = ("forward", "forward_backward", "train_step")
DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class Parameter:
    """name: the suite key and the row key. default: its value where a suite sets none. type: int |
    number | bool | text | size (bytes as "512 MiB") | table. how: what it sets, one sentence.
    role: see the module docstring. choices: the values a suite may give (text). minimum: the least
    number a suite or a row may give. auto: "auto" is a value too (derived from seq_len). valid / wanted:
    a further check of a suite's value and how its error says what is wanted. applies / applies_to:
    which cases a value other than the default makes sense for (applies(case) on the case's fields,
    backend_kind and workload resolved), and how the error says so.
    in_suite: a suite file sets it ([defaults], [sweep], [[include]]). in_row: a key of results rows.
    nullable: a row may hold null for it (unknown, or meaningless for the case, as LSH settings of a
    dense row). column / title / fmt: the report's cases table ("parameter" or "context" column; "int":
    shown with thousands separators). flag_label: for a flag, what a series name and a one-line
    description add where it is true. hashed_default: whether the default value is hashed into the
    case id of a built-in parameter; False for those added after ids were published, so that the cases
    that leave them at their default keep their ids. A plugin's parameter is hashed only when set to
    something else than its default, whatever this says. in_failures: a column of the report's failures
    table, which tells a failed case at a glance."""

    name: str
    default: Any
    type: str
    how: str
    role: str
    choices: Collection = ()  # a registry (a dict) where plugins add values
    minimum: float | None = None
    auto: bool = False
    valid: Callable[[Any], bool] | None = None
    wanted: str = ""
    applies: Callable[[dict], bool] | None = None
    applies_to: str = ""
    in_suite: bool = True
    in_row: bool = True
    nullable: bool = True
    column: str | None = None
    title: str = ""
    fmt: str | None = None
    flag_label: str = ""
    hashed_default: bool = True
    in_failures: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"parameter name must be an identifier, got name={self.name!r}")
        for attribute, allowed in (("type", TYPES), ("role", ROLES), ("column", COLUMNS)):
            if getattr(self, attribute) not in allowed:
                raise ValueError(f"parameter {self.name!r}: {attribute} must be one of {allowed}, "
                                 f"got {attribute}={getattr(self, attribute)!r}")

    @property
    def numeric(self) -> bool:
        return self.type in ("int", "number")

    def describe_wanted(self) -> str:
        """What a suite's value must be, as an error message says it."""
        if self.wanted:
            return self.wanted
        if self.choices:
            return " | ".join(str(c) for c in self.choices)
        if self.type == "bool":
            return "true or false"
        if self.type == "int":
            texts: dict[float | None, str] = {1: "a positive integer", 0: "an integer >= 0", None: "an integer"}
            text = texts.get(self.minimum, f"an integer >= {self.minimum}")
            return text + (" or \"auto\"" if self.auto else "")
        if self.type == "number":
            return "a number" if self.minimum is None else f"a number >= {self.minimum}"
        return {"text": "a string", "table": "a table"}.get(self.type, self.type)

    def suite_error(self, value: Any) -> str | None:
        """Why a suite's value does not fit (None when it does): "<name> must be <wanted>, got ..."."""
        if self.auto and value == "auto":
            return None
        if value is None and self.default is None:
            return None
        fits = (_of_type(value, self.type) and (not self.choices or value in self.choices)
                and (self.minimum is None or not self.numeric or value >= self.minimum)
                and (self.valid is None or self.valid(value)))
        return None if fits else f"{self.name} must be {self.describe_wanted()}, got {self.name}={value!r}"

    def row_error(self, value: Any) -> str | None:
        """Why a row's value does not fit (None when it does): the type, null where the table allows it,
        and the minimum. A row's text values are not held to the suite's choices: task rows and plugins
        add workloads and modes of their own."""
        if value is None:
            return None if self.nullable else "must not be null"
        if not _of_type(value, "number" if self.type == "int" else self.type):
            return f"is not {_TYPE_NAMES[self.type]}"
        if self.type == "int" and isinstance(value, float) and not value.is_integer():
            return "is not an integer"
        if self.numeric and self.minimum is not None and value < self.minimum:
            return f"is below {self.minimum:g}"
        return None


_TYPE_NAMES = {"int": "an integer or null", "number": "a number or null", "bool": "true, false or null",
               "text": "a string or null", "size": "a size", "table": "an object or null"}


def _of_type(value: Any, type_: str) -> bool:
    if type_ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_ == "bool":
        return isinstance(value, bool)
    if type_ == "text":
        return isinstance(value, str)
    if type_ == "table":
        return isinstance(value, dict)
    return True  # size: parsed by the loader (harness.units.parse_size)


def _is_device(value: Any) -> bool:
    return isinstance(value, str) and (value == "cpu" or value.startswith("cuda"))


def _offers(backend: str, capability: str) -> bool:
    import impls

    return impls.backend_info(backend).offers(capability)


def _is_task(case: dict) -> bool:
    return case.get("task") is not None


_A_TASK = "a task case (task = \"...\")"


def dense_backends() -> list[str]:
    """The registered full-attention backends (impls registry, plugins' included)."""
    import impls

    return impls.list_backends("dense")


def _is_dense_backend(value: Any) -> bool:
    return isinstance(value, str) and value in dense_backends()

PARAMETERS_TABLE: dict[str, Parameter] = {}
# The built-in parameters' names: a plugin may not redeclare them.
BUILT_IN: frozenset[str] = frozenset()


def register_parameter(parameter: Parameter) -> Parameter:
    """Declare a case parameter (from a suite plugin module): suites may set it, it is checked, hashed into
    case ids when set to something else than its default, carried to the worker as case.extra[name], and a
    key of rows, `show` and the report. Declaring the same parameter again replaces it (a re-imported
    plugin); a built-in one cannot be replaced."""
    if parameter.name in BUILT_IN and PARAMETERS_TABLE.get(parameter.name) is not parameter:
        raise ValueError(f"parameter {parameter.name!r} is built in; choose another name")
    PARAMETERS_TABLE[parameter.name] = parameter
    return parameter


def parameters(predicate: Callable[[Parameter], bool] = lambda p: True) -> list[Parameter]:
    """The declared parameters, in table order (a row's order), that satisfy predicate."""
    return [p for p in PARAMETERS_TABLE.values() if predicate(p)]


def names(predicate: Callable[[Parameter], bool] = lambda p: True) -> tuple[str, ...]:
    return tuple(p.name for p in parameters(predicate))


def defaults() -> dict[str, Any]:
    """What a suite's [defaults] starts from: every parameter a suite sets, with its built-in default."""
    return {p.name: p.default for p in parameters(lambda p: p.in_suite)}


def row_parameters() -> tuple[str, ...]:
    """What a results row says about its case, in order (README "Results format"), plugins' last."""
    return names(lambda p: p.in_row)


def plugin_parameters() -> list[Parameter]:
    """Parameters declared by plugins (carried in Case.extra)."""
    return parameters(lambda p: p.name not in BUILT_IN)


def grouping_keys() -> tuple[str, ...]:
    """Rows that differ only in these keys share a plot (tables such as model cannot be grouped on)."""
    return names(lambda p: p.role == "grouping" and p.type != "table" and p.in_row)


def variant_keys() -> tuple[str, ...]:
    """LSH flags that name a series ("dedup", "buckets replayed"): a row of each is a series of its own."""
    return names(lambda p: bool(p.flag_label) and p.in_row)


def series_keys() -> tuple[str, ...]:
    """The length axis of a scaling series and what follows it (batch under a fixed token budget)."""
    return names(lambda p: p.role == "series" and p.in_row)


def flag_labels(row: dict) -> list[str]:
    """The labels of the flags that are true in a row, in table order: what a series name adds."""
    return [p.flag_label for p in parameters(lambda p: bool(p.flag_label)) if row.get(p.name) is True]


# --- the built-in parameters, in row order ------------------------------------------------------------

_BUILT_IN = (
    Parameter("case_id", None, "text", "the case's stable id (harness.suite.case.case_id)", "identity",
              in_suite=False, nullable=False, column="context", title="case", in_failures=True),
    Parameter("suite", None, "text", "the suite's name", "grouping", in_suite=False, column="context",
              in_failures=True),
    Parameter("backend", None, "text", "the attention implementation (impls registry); None: the first LSH backend",
              "identity", wanted="a backend name", column="parameter", in_failures=True),
    Parameter("backend_kind", None, "text", "lsh | dense | peer (impls.backend_info)", "identity", in_suite=False,
              column="context", title="kind"),
    Parameter("workload", "attention", "text", "attention: attend(qk, v); layer: x -> projections -> attention -> "
              "output projection; model: the backend's language model, shaped by the [model] table", "grouping",
              choices=WORKLOADS, column="parameter"),
    Parameter("mode", "forward", "text", "what one timed call does", "grouping", choices=MODES, column="parameter",
              in_failures=True),
    Parameter("seq_len", 1024, "int", "tokens per sequence", "series", minimum=1, nullable=False, column="parameter",
              title="L (tokens)", fmt="int", in_failures=True),
    Parameter("batch", 1, "int", "sequences per call (batch = fixed_tokens / seq_len under a token budget)",
              "series", minimum=1, column="parameter", fmt="int", in_failures=True),
    Parameter("heads", 4, "int", "attention heads", "grouping", minimum=1, column="context", fmt="int"),
    Parameter("d_head", 64, "int", "dimension per head", "grouping", minimum=1, column="context", fmt="int"),
    # "auto": n_buckets = 2 * seq_len / chunk_len, or chunk_len = 2 * seq_len / n_buckets
    # (impls.config.resolve_buckets); at most one of the two may be "auto".
    Parameter("n_buckets", "auto", "int", "buckets per hash round (even)", "lsh-only", minimum=1, auto=True,
              column="parameter", fmt="int", in_failures=True),
    Parameter("n_hashes", 4, "int", "hash rounds", "lsh-only", minimum=1, column="parameter", fmt="int",
              in_failures=True),
    Parameter("chunk_len", 64, "int", "sorted positions per chunk", "lsh-only", minimum=1, auto=True,
              column="parameter", fmt="int"),
    Parameter("causal", False, "bool", "a query never attends to a later position", "grouping", column="parameter"),
    Parameter("dedup", False, "bool", "subtract log N_ij (the paper's Eq. 16)", "lsh-only", column="parameter",
              flag_label="dedup"),
    # Hash once before timing and pass the buckets to every call, so that the figures are of the
    # attention alone (hashing and its sort excluded).
    Parameter("replay_buckets", False, "bool", "LSH attention: buckets hashed once, before timing", "lsh-only",
              applies=lambda case: _offers(case["backend"], "replay_buckets") and case["workload"] == "attention",
              applies_to="an LSH backend that replays buckets (capability replay_buckets) and workload = \"attention\"",
              column="parameter", title="buckets replayed",
              flag_label="buckets replayed"),
    Parameter("inputs", "randn", "text", "attention workload: randn (standard normal qk and v) or clustered (keys "
              "and queries around a few centres: dense attention is peaked as in trained layers)", "grouping",
              choices=INPUTS, applies=lambda case: case["workload"] == "attention",
              applies_to="workload = \"attention\"", column="parameter", hashed_default=False),
    Parameter("dtype", "float32", "text", "the tensors' dtype", "grouping", choices=DTYPES, column="context"),
    Parameter("device", "cpu", "text", "where the case runs", "grouping", valid=_is_device,
              wanted="'cpu', 'cuda' or 'cuda:N'", column="context"),
    Parameter("seed", 0, "int", "seeds the inputs and the rotations", "run", minimum=0),
    Parameter("model", None, "table", "workload = \"model\": the [model] table resolved for the case", "grouping",
              in_suite=False, column="context"),
    # A task (a [task] table sizes it): the case trains a model with train_n_hashes rounds (0 = full
    # attention) and, for each eval_n_hashes, evaluates it with that many (0 = full attention).
    Parameter("task", None, "text", "the task the case trains or evaluates", "task", column="parameter",
              hashed_default=False),
    Parameter("train_n_hashes", None, "int", "hash rounds the task's model trains with (0 = full attention)",
              "task", minimum=0, applies=_is_task, applies_to=_A_TASK, column="parameter",
              title="trained with (rounds, 0 = full)", fmt="int",
              hashed_default=False),
    Parameter("eval_n_hashes", None, "int", "hash rounds the trained model is evaluated with (0 = full attention)",
              "task", minimum=0, applies=_is_task, applies_to=_A_TASK, column="parameter",
              title="evaluated with (rounds, 0 = full)", fmt="int",
              hashed_default=False),
    # Which full attention (a dense backend) a task case's n_hashes = 0 means, in training and in evaluation:
    # `dense` (the default, the registry's reference: unit keys, self masked, the paper's text) or `sdpa`
    # (q.q / sqrt(d), raw keys, self visible: the authors' copy-task config). Carried only by the cases
    # that use full attention (a training with train_n_hashes = 0, its evaluations, an evaluation with
    # eval_n_hashes = 0), so that an LSH training is one case whatever this says.
    Parameter("full_attention", "dense", "text", "the dense backend a task's full attention (0 hash rounds) runs "
              "through, in training and in evaluation", "task", valid=_is_dense_backend,
              wanted="a dense backend", applies=_is_task, applies_to=_A_TASK, column="parameter",
              title="full attention", hashed_default=False),
    Parameter("repeats", 5, "int", "timed calls", "run", minimum=1, in_row=False),
    Parameter("warmup", 2, "int", "untimed calls after the first", "run", minimum=0, in_row=False),
    Parameter("timeout_s", 300.0, "number", "seconds before the worker is killed", "run", in_row=False,
              valid=lambda v: v > 0, wanted="a positive number of seconds"),
    Parameter("mem_limit", "none", "size", "memory the case may add after setup (\"512 MiB\") or \"none\"", "run",
              in_row=False, wanted="a size such as \"512 MiB\" or \"none\""),
)
for _parameter in _BUILT_IN:
    register_parameter(_parameter)
BUILT_IN = frozenset(PARAMETERS_TABLE)
