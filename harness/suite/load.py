"""Suite files (TOML) -> validated, expanded cases with stable ids.

A suite file holds these tables (every key is optional except at least one backend to run):

    [suite]      how to run: SETTINGS lists the keys and their defaults
    [defaults]   one value per case parameter (harness.suite.case.PARAMETERS: keys and built-in defaults)
    [sweep]      case parameter -> list of values; the cases are the cartesian product. Model keys
                 are swept as `model.<key> = [...]` (TOML dotted keys), e.g. model.layers = [2, 4]
    [[include]]  extra cases: a table of parameters laid over [defaults] (lists are swept too;
                 model.<key> too)
    [[exclude]]  drop every case matching all the keys of one table; a value may be a scalar,
                 a list (any of) or a table {min = .., max = ..} (inclusive bounds)
    [model]      the language model of workload = "model" cases: impls.model.ModelConfig fields
                 (not the LSH ones nor causal, which are case parameters) and `reversible`

Every problem is one UserError line naming the file, the key and the value.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .case import DTYPES, INPUTS, MODES, PARAMETERS, WORKLOADS, Case, case_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

SETTINGS: dict[str, Any] = {
    "name": None,  # the file's stem
    "description": "",
    "fixed_tokens": None,  # batch = fixed_tokens / seq_len (the paper's fixed-token-budget figure)
    "fidelity": True,  # rel_error / attn_mass_recall against the reference, for LSH and peer backends
    "fidelity_max_seq_len": 8192,  # the dense reference is only built up to this length
    "count_flops": True,  # FlopCounterMode pass (untimed)
    "skip_larger_after_failure": False,  # after oom/timeout, skip longer sequences of the same series
    "interpret": True,  # on the CPU, backends with an interpreter (triton) run under it
    "threads": None,  # torch.set_num_threads in the worker; None leaves torch's default
    "plugins": [],  # modules next to the suite file that register extra backends or metrics
    "compare_against": [],  # backends the --summary ratios are taken against (default: dense and peers)
    "measure_peak": True,  # measure the machine's matmul FLOP/s once per (device, dtype) into run.json
}

TOP_LEVEL_KEYS = ("suite", "defaults", "sweep", "include", "exclude", "model", "task")
# [model] keys that the case sets: LSH settings and causality are case axes, swept like any other.
MODEL_KEYS_FROM_CASE = ("n_hashes", "chunk_len", "n_buckets", "causal", "dedup")
MODEL_PREFIX = "model."


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    cases: list[Case]
    settings: dict = field(default_factory=dict)


def load_suite(path: str | Path, backends: list[str] | None = None, max_seq_len: int | None = None) -> Suite:
    """Read, validate and expand a suite file. backends / max_seq_len filter the cases (CLI flags)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read suite file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if "end of document" in message and "line" not in message:
            message += f" (line {len(text.splitlines())}, the last)"
        raise UserError(f"{path}: TOML syntax error: {message}") from None
    return expand_suite(data, path, backends=backends, max_seq_len=max_seq_len)


def expand_suite(data: dict, path: Path, backends: list[str] | None = None,
                 max_seq_len: int | None = None) -> Suite:
    where = str(path)
    _check_keys(data, TOP_LEVEL_KEYS, where, "top level")
    settings = _suite_settings(_table(data, "suite", where), path)
    defaults = dict(PARAMETERS)
    defaults_table = _table(data, "defaults", where)
    _check_keys(defaults_table, PARAMETERS, where, "[defaults]")
    defaults.update(defaults_table)
    model = _table(data, "model", where)
    _check_model_keys(model, where, "[model]")
    task_table = _table(data, "task", where)
    sweep = _flat_model_keys(_table(data, "sweep", where), where, "[sweep]")
    _check_keys(sweep, _SWEEPABLE, where, "[sweep]", hint=_MODEL_HINT)
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: [sweep] {key} must be a non-empty list, got {values!r}")
    includes = [_flat_model_keys(t, where, f"[[include]] #{i + 1}")
                for i, t in enumerate(_array_of_tables(data, "include", where))]
    excludes = [_flat_model_keys(t, where, f"[[exclude]] #{i + 1}")
                for i, t in enumerate(_array_of_tables(data, "exclude", where))]
    for i, table in enumerate(includes):
        _check_keys(table, _SWEEPABLE, where, f"[[include]] #{i + 1}", hint=_MODEL_HINT)
    for i, table in enumerate(excludes):
        _check_exclude(table, where, f"[[exclude]] #{i + 1}")
    if settings["fixed_tokens"] is not None and ("batch" in sweep or "batch" in defaults_table):
        raise UserError(f"{where}: [suite] fixed_tokens sets batch = fixed_tokens / seq_len; "
                        f"remove batch from [defaults] / [sweep]")

    _register_plugins(settings, where)
    import impls

    known = impls.list_backends()
    if defaults["backend"] is None:
        defaults["backend"] = impls.list_backends("lsh")[0]
    for name in settings["compare_against"]:
        if name not in known:
            raise UserError(f"{where}: [suite] compare_against: unknown backend {name!r}"
                            f"{_did_you_mean(name, known)}")
    raw = list(_product(defaults, sweep))
    for table in includes:
        raw.extend(_product({**defaults, **{k: v for k, v in table.items() if not isinstance(v, list)}},
                            {k: v for k, v in table.items() if isinstance(v, list)}))

    if task_table and not any(p.get("task") for p in raw):
        raise UserError(f"{where}: [task] sizes a task, but no case sets task = \"...\"")
    cases: dict[str, Case] = {}
    for params in raw:
        if any(_matches(params, rule) for rule in excludes):
            continue
        made = (_task_cases(params, settings, task_table, known, where) if params.get("task") is not None
                else [_make_case(params, settings, model, known, where)])
        for case in made:
            if backends and case.backend not in backends and not case.task:
                continue
            if max_seq_len is not None and case.seq_len > max_seq_len:
                continue
            cases.setdefault(case.case_id, case)
    if backends:
        for name in backends:
            if name not in known:
                raise UserError(f"--backend {name!r}: unknown backend{_did_you_mean(name, known)}; "
                                f"known: {', '.join(known)}")
    if not cases:
        filters = []
        if backends:
            filters.append(f"--backend {' '.join(backends)}")
        if max_seq_len is not None:
            filters.append(f"--max-seq-len {max_seq_len}")
        extra = f" after {' and '.join(filters)}" if filters else ""
        raise UserError(f"{where}: the sweep is empty (no cases{extra})")
    return Suite(name=settings["name"], path=path, description=settings["description"],
                 cases=list(cases.values()), settings=settings)


def _suite_settings(table: dict, path: Path) -> dict:
    where = str(path)
    _check_keys(table, SETTINGS, where, "[suite]")
    settings = {**SETTINGS, **table}
    settings["name"] = settings["name"] or path.stem
    _expect(isinstance(settings["name"], str) and settings["name"], where, "[suite] name", settings["name"],
            "a non-empty string")
    _expect(isinstance(settings["description"], str), where, "[suite] description",
            settings["description"], "a string")
    for key in ("fidelity", "count_flops", "skip_larger_after_failure", "interpret", "measure_peak"):
        _expect(isinstance(settings[key], bool), where, f"[suite] {key}", settings[key], "true or false")
    for key in ("fixed_tokens", "threads"):
        if settings[key] is not None:
            _expect(_is_int(settings[key]) and settings[key] >= 1, where, f"[suite] {key}", settings[key],
                    "a positive integer")
    _expect(_is_int(settings["fidelity_max_seq_len"]) and settings["fidelity_max_seq_len"] >= 0, where,
            "[suite] fidelity_max_seq_len", settings["fidelity_max_seq_len"], "an integer >= 0")
    plugins = settings["plugins"]
    _expect(isinstance(plugins, list) and all(isinstance(p, str) and p.isidentifier() for p in plugins),
            where, "[suite] plugins", plugins, "a list of module names")
    compare_against = settings["compare_against"]
    _expect(isinstance(compare_against, list) and all(isinstance(n, str) for n in compare_against), where,
            "[suite] compare_against", compare_against, "a list of backend names")
    settings["plugins"] = tuple(plugins)
    settings["compare_against"] = tuple(compare_against)
    settings["plugin_dir"] = str(path.resolve().parent) if plugins else None
    return settings


def _make_case(params: dict, settings: dict, model: dict, known: list[str], where: str) -> Case:
    import impls

    p = dict(params)
    name = p["backend"]
    _expect(isinstance(name, str), where, "backend", name, "a backend name")
    if name not in known:
        raise UserError(f"{where}: unknown backend {name!r}{_did_you_mean(name, known)}; "
                        f"known: {', '.join(known)}")
    info = impls.backend_info(name)
    kind = info.kind
    _expect(p["workload"] in WORKLOADS, where, "workload", p["workload"], " | ".join(WORKLOADS))
    _expect(p["mode"] in MODES, where, "mode", p["mode"], " | ".join(MODES))
    if p["mode"] == "train_step":
        # An optimizer step needs parameters: train_step is a step of the model (the default
        # workload "attention" is read as "model" here, so older suites keep their meaning).
        _expect(p["workload"] in ("model", "attention"), where, "workload", p["workload"],
                "\"model\" with mode = \"train_step\"")
        p["workload"] = "model"
    _expect(p["dtype"] in DTYPES, where, "dtype", p["dtype"], " | ".join(DTYPES))
    _expect(isinstance(p["device"], str) and (p["device"] == "cpu" or p["device"].startswith("cuda")),
            where, "device", p["device"], "'cpu', 'cuda' or 'cuda:N'")
    for key in ("seq_len", "heads", "d_head", "n_hashes", "repeats"):
        _expect(_is_int(p[key]) and p[key] >= 1, where, key, p[key], "a positive integer")
    for key in ("warmup", "seed"):
        _expect(_is_int(p[key]) and p[key] >= 0, where, key, p[key], "an integer >= 0")
    for key in ("causal", "dedup", "replay_buckets"):
        _expect(isinstance(p[key], bool), where, key, p[key], "true or false")
    _expect(p["inputs"] in INPUTS, where, "inputs", p["inputs"], " | ".join(INPUTS))
    for key in ("train_n_hashes", "eval_n_hashes"):
        if p[key] is not None:
            raise UserError(f"{where}: {key} applies to task cases (set task = \"duplication\"), got {key}={p[key]!r}")
    if p["inputs"] != "randn" and p["workload"] != "attention":
        raise UserError(f"{where}: inputs = {p['inputs']!r} applies to workload = \"attention\", "
                        f"got workload={p['workload']!r}")
    _expect(isinstance(p["timeout_s"], (int, float)) and not isinstance(p["timeout_s"], bool)
            and p["timeout_s"] > 0, where, "timeout_s", p["timeout_s"], "a positive number of seconds")
    for key in ("n_buckets", "chunk_len"):
        _expect(p[key] == "auto" or (_is_int(p[key]) and p[key] >= 1), where, key, p[key],
                "a positive integer or \"auto\"")
    if p["n_buckets"] == "auto" and p["chunk_len"] == "auto":
        raise UserError(f"{where}: n_buckets and chunk_len cannot both be \"auto\" "
                        f"(seq_len={p['seq_len']})")
    if p["replay_buckets"] and (not info.offers("replay_buckets") or p["workload"] != "attention"):
        raise UserError(f"{where}: replay_buckets = true needs an LSH backend that replays buckets (capability "
                        f"replay_buckets) and workload = \"attention\", got backend={name!r} ({kind}), "
                        f"workload={p['workload']!r}")
    if settings["fixed_tokens"] is not None:
        if settings["fixed_tokens"] % p["seq_len"]:
            raise UserError(f"{where}: [suite] fixed_tokens={settings['fixed_tokens']} is not a multiple "
                            f"of seq_len={p['seq_len']}")
        p["batch"] = settings["fixed_tokens"] // p["seq_len"]
    _expect(_is_int(p["batch"]) and p["batch"] >= 1, where, "batch", p["batch"], "a positive integer")
    mem_limit = _mem_limit_bytes(p["mem_limit"], where)

    from_seq_len = ["batch"] if settings["fixed_tokens"] is not None else []
    # LSH settings mean nothing for a dense baseline: None there, so that a sweep over n_hashes does
    # not run the same dense case once per value.
    if kind == "dense":
        n_buckets = n_hashes = chunk_len = dedup = replay = None
    else:
        n_buckets, chunk_len = _resolve_buckets(p, where)
        n_hashes, dedup, replay = p["n_hashes"], p["dedup"], p["replay_buckets"]
        from_seq_len += [key for key in ("n_buckets", "chunk_len") if p[key] == "auto"]
    heads, d_head = p["heads"], p["d_head"]
    case_model = None
    if p["workload"] == "model":
        case_model = _case_model(model, p, where)
        if "max_seq_len" not in model and f"{MODEL_PREFIX}max_seq_len" not in p:
            from_seq_len.append(f"{MODEL_PREFIX}max_seq_len")
        heads, d_head = case_model["heads"], case_model["d_model"] // case_model["heads"]
        _check_model_config(case_model, p, n_buckets, chunk_len, n_hashes, dedup, where)
        if kind == "peer" and info.model is None:
            raise UserError(f"{where}: backend {name!r} offers no language model (workload = \"model\")")
    elif any(key.startswith(MODEL_PREFIX) for key in p):
        raise UserError(f"{where}: model.* keys apply to workload = \"model\" cases, got workload={p['workload']!r}")
    if p["workload"] == "layer" and p["mode"] not in ("forward", "forward_backward"):
        raise UserError(f"{where}: workload = \"layer\" times forward or forward_backward, got mode={p['mode']!r}")
    fidelity = (settings["fidelity"] and p["workload"] == "attention" and kind != "dense"
                and p["seq_len"] <= settings["fidelity_max_seq_len"])
    case_params = {
        "suite": settings["name"], "backend": name, "backend_kind": kind, "workload": p["workload"],
        "mode": p["mode"], "seq_len": p["seq_len"], "batch": p["batch"], "heads": heads, "d_head": d_head,
        "n_buckets": n_buckets, "n_hashes": n_hashes, "chunk_len": chunk_len, "causal": p["causal"],
        "dedup": dedup, "replay_buckets": replay, "dtype": p["dtype"], "device": p["device"], "seed": p["seed"],
        "repeats": p["repeats"], "warmup": p["warmup"], "timeout_s": float(p["timeout_s"]),
        "mem_limit_bytes": mem_limit, "fidelity": fidelity, "count_flops": settings["count_flops"],
        "interpret": settings["interpret"], "threads": settings["threads"],
        "plugins": settings["plugins"], "plugin_dir": settings["plugin_dir"],
        "model": case_model, "from_seq_len": tuple(from_seq_len), "inputs": p["inputs"],
    }
    return Case(case_id=case_id(case_params), **case_params)


# --- task cases ---------------------------------------------------------------------------------------

def _task_cases(params: dict, settings: dict, table: dict, known: list[str], where: str) -> list[Case]:
    """A trained model and one evaluation of it: the training case (made once per training setting,
    however many evaluations name it) and the evaluation, which depends on it."""
    import impls

    from ..tasks import TASKS

    p = dict(params)
    name = p["task"]
    _expect(name in TASKS, where, "task", name, " | ".join(f'"{t}"' for t in TASKS))
    task = TASKS[name]
    try:
        config = task.resolve_table(table)
    except ValueError as exc:
        raise UserError(f"{where}: [task]: {exc}") from None
    _expect(p["backend"] in known and impls.backend_info(p["backend"]).kind == "lsh", where, "backend",
            p["backend"], "an LSH backend (it runs the hash rounds; full attention is the reference backend)")
    for key in ("train_n_hashes", "eval_n_hashes"):
        _expect(p[key] is None or (_is_int(p[key]) and p[key] >= 0), where, key, p[key],
                "an integer >= 0 (0 = full attention)")
    _expect(p["train_n_hashes"] is not None, where, "train_n_hashes", None, "set for a task case (0 = full attention)")
    _expect(_is_int(p["chunk_len"]) and p["chunk_len"] >= 1, where, "chunk_len", p["chunk_len"],
            "a positive integer for a task")
    _expect(_is_int(p["seed"]) and 0 <= p["seed"] < 2 ** 31, where, "seed", p["seed"], "an integer in [0, 2**31)")
    # The task trains and evaluates in float32 (its module's choice): another dtype would be a row that
    # says what did not happen.
    _expect(p["dtype"] == "float32", where, "dtype", p["dtype"], "\"float32\" for a task")
    _expect(isinstance(p["device"], str) and (p["device"] == "cpu" or p["device"].startswith("cuda")),
            where, "device", p["device"], "'cpu', 'cuda' or 'cuda:N'")
    _expect(isinstance(p["timeout_s"], (int, float)) and not isinstance(p["timeout_s"], bool)
            and p["timeout_s"] > 0, where, "timeout_s", p["timeout_s"], "a positive number of seconds")
    seq_len = task.task_of(config).seq_len
    if seq_len % p["chunk_len"]:
        raise UserError(f"{where}: chunk_len={p['chunk_len']} does not tile the task's seq_len={seq_len}")
    n_buckets = 2 * seq_len // p["chunk_len"] if p["n_buckets"] == "auto" else p["n_buckets"]
    _expect(_is_int(n_buckets) and n_buckets >= 2 and n_buckets % 2 == 0, where, "n_buckets", n_buckets,
            "an even integer >= 2 or \"auto\"")

    def one(mode: str, n_hashes: int, depends_on: str | None) -> Case:
        backend = p["backend"] if n_hashes else impls.reference_backend()
        fields = {
            "suite": settings["name"], "backend": backend, "backend_kind": impls.backend_info(backend).kind,
            "workload": "task", "mode": mode, "seq_len": seq_len, "batch": config["batch"],
            "heads": config["heads"], "d_head": config["d_model"] // config["heads"],
            "n_buckets": n_buckets if n_hashes else None, "n_hashes": n_hashes or None,
            "chunk_len": p["chunk_len"] if n_hashes else None, "causal": True, "dedup": False if n_hashes else None,
            "replay_buckets": None, "dtype": p["dtype"], "device": p["device"], "seed": p["seed"], "repeats": 1,
            "warmup": 0, "timeout_s": float(p["timeout_s"]), "mem_limit_bytes": _mem_limit_bytes(p["mem_limit"], where),
            "fidelity": False, "count_flops": False, "interpret": settings["interpret"], "threads": settings["threads"],
            "plugins": settings["plugins"], "plugin_dir": settings["plugin_dir"], "inputs": None, "task": name,
            "train_n_hashes": p["train_n_hashes"], "eval_n_hashes": None if mode == "train" else p["eval_n_hashes"],
            "task_config": config, "depends_on": depends_on,
        }
        return Case(case_id=case_id(fields), **fields)

    training = one("train", p["train_n_hashes"], None)
    if p["eval_n_hashes"] is None:
        return [training]
    return [training, one("evaluate", p["eval_n_hashes"], training.case_id)]


def _resolve_buckets(p: dict, where: str) -> tuple[int, int]:
    seq_len = p["seq_len"]
    if p["n_buckets"] == "auto":
        chunk_len = p["chunk_len"]
        if seq_len % chunk_len:
            raise UserError(f"{where}: seq_len={seq_len} is not a multiple of chunk_len={chunk_len}")
        return max(2, 2 * seq_len // chunk_len), chunk_len
    n_buckets = p["n_buckets"]
    if n_buckets % 2:
        raise UserError(f"{where}: n_buckets must be even, got n_buckets={n_buckets}")
    chunk_len = p["chunk_len"]
    if chunk_len == "auto":
        if (2 * seq_len) % n_buckets:
            raise UserError(f"{where}: chunk_len=\"auto\" needs 2*seq_len divisible by n_buckets, "
                            f"got seq_len={seq_len}, n_buckets={n_buckets}")
        chunk_len = max(1, 2 * seq_len // n_buckets)
    if seq_len % chunk_len:
        raise UserError(f"{where}: seq_len={seq_len} is not a multiple of chunk_len={chunk_len}")
    return n_buckets, chunk_len


# --- the model of workload = "model" cases -----------------------------------------------------------

def _model_fields() -> list[str]:
    from impls.model import ModelConfig

    return [f.name for f in dataclasses.fields(ModelConfig) if f.name not in MODEL_KEYS_FROM_CASE]


_MODEL_EXTRA_KEYS = ("reversible",)  # passed to impls.model.build_model, not a ModelConfig field
_SWEEPABLE = PARAMETERS  # model.<key> entries are checked by _flat_model_keys
_MODEL_HINT = "model keys go into [model], or as model.<key> into [sweep] / [[include]]"


def _check_model_keys(table: dict, where: str, section: str) -> None:
    for key in table:
        if key in MODEL_KEYS_FROM_CASE:
            raise UserError(f"{where}: {section} {key} is a case parameter: set it in [defaults] or [sweep]")
    _check_keys(table, _model_fields() + list(_MODEL_EXTRA_KEYS), where, section)


def _flat_model_keys(table: dict, where: str, section: str) -> dict:
    """{"model": {"layers": [2, 4]}} (TOML `model.layers = [2, 4]`) -> {"model.layers": [2, 4]}."""
    flat = {k: v for k, v in table.items() if k != "model"}
    nested = table.get("model")
    if nested is None:
        return flat
    if not isinstance(nested, dict):
        raise UserError(f"{where}: {section} model must be model.<key> = values, got model={nested!r}")
    _check_model_keys(nested, where, f"{section} model.")
    flat.update({f"{MODEL_PREFIX}{k}": v for k, v in nested.items()})
    return flat


def _case_model(model: dict, p: dict, where: str) -> dict:
    if not model and not any(k.startswith(MODEL_PREFIX) for k in p):
        raise UserError(f"{where}: workload = \"model\" (or mode = \"train_step\") needs a [model] table")
    case_model = copy.deepcopy(model)
    case_model.update({k[len(MODEL_PREFIX):]: v for k, v in p.items() if k.startswith(MODEL_PREFIX)})
    if "reversible" in case_model and not isinstance(case_model["reversible"], bool):
        raise UserError(f"{where}: [model] reversible must be true or false, "
                        f"got reversible={case_model['reversible']!r}")
    d_model, heads = case_model.get("d_model"), case_model.get("heads")
    if not (_is_int(d_model) and _is_int(heads) and heads >= 1 and d_model >= 1 and d_model % heads == 0):
        raise UserError(f"{where}: [model] needs integers d_model and heads with d_model % heads == 0, "
                        f"got d_model={d_model!r}, heads={heads!r}")
    return case_model


def _check_model_config(case_model: dict, p: dict, n_buckets, chunk_len, n_hashes, dedup, where: str) -> None:
    """Build the ModelConfig the worker will build, so that a bad value is an error here."""
    from impls.model import ModelConfig

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in case_model.items() if k not in _MODEL_EXTRA_KEYS}
    fields.setdefault("max_seq_len", p["seq_len"])
    lsh = {} if n_hashes is None else {"n_hashes": n_hashes, "chunk_len": chunk_len, "n_buckets": n_buckets,
                                       "dedup": bool(dedup)}
    try:
        ModelConfig(**fields, **lsh, causal=p["causal"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: [model]: {exc}") from None


def _mem_limit_bytes(value: Any, where: str) -> int | None:
    if value in ("none", None):
        return None
    from ..measure.memory import parse_size

    try:
        return parse_size(value)
    except ValueError:
        raise UserError(f"{where}: mem_limit must be a size such as \"512 MiB\" or \"none\", "
                        f"got mem_limit={value!r}") from None


def _product(base: dict, sweep: dict):
    keys = list(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        yield {**base, **dict(zip(keys, values))}


def _check_exclude(table: dict, where: str, section: str) -> None:
    """Keys are case parameters; a {min, max} range has only those keys, and numbers for bounds."""
    _check_keys(table, _SWEEPABLE, where, section, hint=_MODEL_HINT)
    for key, wanted in table.items():
        if not isinstance(wanted, dict):
            continue
        _check_keys(wanted, ("min", "max"), where, f"{section} {key}")
        for bound, limit in wanted.items():
            if not _is_number(limit):
                raise UserError(f"{where}: {section} {key}.{bound} must be a number, "
                                f"got {key} = {{{bound} = {limit!r}}}")


def _matches(params: dict, rule: dict) -> bool:
    for key, wanted in rule.items():
        value = params.get(key)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif isinstance(wanted, dict):  # bounds checked by _check_exclude
            if not _is_number(value):
                return False
            if "min" in wanted and value < wanted["min"]:
                return False
            if "max" in wanted and value > wanted["max"]:
                return False
        elif value != wanted:
            return False
    return True


def import_plugins(plugins: tuple[str, ...], plugin_dir: str | None) -> None:
    """Import a suite's plugin modules (they register backends and metrics)."""
    if plugin_dir and plugin_dir not in sys.path:
        sys.path.insert(0, plugin_dir)
    for module in plugins:
        importlib.import_module(module)


def _register_plugins(settings: dict, where: str) -> None:
    """Import the suite's plugin modules here too, so that their backends are known to validation.

    A plugin that fails to import, whatever it raises, is a UserError naming it and the error.
    """
    for module in settings["plugins"]:
        try:
            import_plugins((module,), settings["plugin_dir"])
        except ImportError as exc:
            raise UserError(f"{where}: [suite] plugins: cannot import {module!r} from "
                            f"{settings['plugin_dir']}: {_one_line(exc)}") from None
        except (Exception, SystemExit) as exc:  # a plugin's own bug: name it, no traceback
            raise UserError(f"{where}: [suite] plugins: importing {module!r} from {settings['plugin_dir']} "
                            f"failed: {type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a table ([{key}]), got {value!r}")
    return value


def _array_of_tables(data: dict, key: str, where: str) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UserError(f"{where}: {key} must be an array of tables ([[{key}]]), got {value!r}")
    return value


def _check_keys(table: dict, allowed, where: str, section: str, hint: str = "") -> None:
    for key in table:
        if key in allowed or (hint and key.startswith(MODEL_PREFIX)):
            continue
        extra = _did_you_mean(key, allowed)
        if not extra and hint and key in _model_fields() + list(_MODEL_EXTRA_KEYS):
            extra = f" ({hint})"
        raise UserError(f"{where}: unknown key {key!r} in {section}{extra}")


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _expect(ok: bool, where: str, key: str, value: Any, wanted: str) -> None:
    if not ok:
        raise UserError(f"{where}: {key} must be {wanted}, got {key}={value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
