"""Suite files (TOML) -> validated, expanded cases with stable ids.

A suite file holds these tables (every key is optional except at least one backend to run):

    [suite]      name, description, fixed_tokens, fidelity, fidelity_max_seq_len, count_flops,
                 skip_larger_after_failure, triton_interpret, threads, plugins
    [defaults]   one value per case parameter (CASE_DEFAULTS lists them and their built-in defaults)
    [sweep]      case parameter -> list of values; the cases are the cartesian product
    [[include]]  extra cases: a table of parameters laid over [defaults] (lists are swept too)
    [[exclude]]  drop every case matching all the keys of one table; a value may be a scalar,
                 a list (any of) or a table {min = .., max = ..} (inclusive bounds)
    [model]      ModelConfig fields for mode = "train_step" (impls.model)

Every problem is reported as one SuiteError line naming the file, the key and the value.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

MODES = ("forward", "forward_backward", "train_step")
DTYPES = ("float32", "float64", "float16", "bfloat16")

# Case parameters and their built-in defaults. "auto": n_buckets = 2 * seq_len / chunk_len, or
# chunk_len = 2 * seq_len / n_buckets (LSHConfig's rule); at most one of the two may be "auto".
CASE_DEFAULTS: dict[str, Any] = {
    "backend": "eager",
    "mode": "forward",
    "seq_len": 1024,
    "batch": 1,
    "heads": 4,
    "d_head": 64,
    "n_buckets": "auto",
    "n_hashes": 4,
    "chunk_len": 64,
    "causal": False,
    "dedup": False,
    "dtype": "float32",
    "device": "cpu",
    "seed": 0,
    "repeats": 5,
    "warmup": 2,
    "timeout_s": 300.0,
    "mem_limit": "none",
}

SUITE_DEFAULTS: dict[str, Any] = {
    "name": None,  # the file's stem
    "description": "",
    "fixed_tokens": None,  # batch = fixed_tokens / seq_len (the paper's fixed-token-budget figure)
    "fidelity": True,  # rel_error / attn_mass_recall against dense, for LSH and peer backends
    "fidelity_max_seq_len": 8192,  # the dense reference is only built up to this length
    "count_flops": True,  # FlopCounterMode pass (untimed)
    "skip_larger_after_failure": False,  # after oom/timeout, skip longer sequences of the same series
    "triton_interpret": True,  # TRITON_INTERPRET=1 for the triton backend on the CPU
    "threads": None,  # torch.set_num_threads in the worker; None leaves torch's default
    "plugins": [],  # modules next to the suite file that register extra backends
}

TOP_LEVEL_KEYS = ("suite", "defaults", "sweep", "include", "exclude", "model")

# Parameters that mean nothing for a dense baseline: set to None there so that a sweep over
# n_hashes does not run the same dense case once per value.
LSH_ONLY_KEYS = ("n_buckets", "n_hashes", "chunk_len", "dedup")


class SuiteError(ValueError):
    """A suite file or a case parameter is wrong; the message is one line for the user."""


@dataclass(frozen=True)
class Case:
    """One measurement: a backend at one configuration, plus how to run it."""

    case_id: str
    suite: str
    backend: str
    backend_kind: str  # "lsh" | "dense" | "peer"
    mode: str
    seq_len: int
    batch: int
    heads: int
    d_head: int
    n_buckets: int | None
    n_hashes: int | None
    chunk_len: int | None
    causal: bool
    dedup: bool | None
    dtype: str
    device: str
    seed: int
    repeats: int
    warmup: int
    timeout_s: float
    # Memory the case may add after setup: on the CPU, address space over the worker's size
    # (RLIMIT_AS); on CUDA, allocator memory over what is allocated (per-process memory fraction).
    mem_limit_bytes: int | None
    fidelity: bool
    count_flops: bool
    triton_interpret: bool
    threads: int | None
    plugins: tuple[str, ...] = ()
    plugin_dir: str | None = None
    model: dict | None = None
    # Parameters whose value the suite derived from seq_len ("auto" n_buckets / chunk_len, batch
    # under fixed_tokens): they change along a series, so series_key leaves them out. Not hashed
    # into case_id (the resolved values are).
    from_seq_len: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        data["plugins"] = tuple(data.get("plugins") or ())
        data["from_seq_len"] = tuple(data.get("from_seq_len") or ())
        return cls(**data)

    def series_key(self) -> str:
        """Identifies the case with its sequence length left out, and with it what follows from the
        length: batch, "auto" n_buckets / chunk_len (from_seq_len) and fidelity (off above
        fidelity_max_seq_len). The cases of one series differ only in length; see
        skip_larger_after_failure."""
        left_out = {"case_id", "seq_len", "batch", "fidelity", "from_seq_len", *self.from_seq_len}
        params = {k: v for k, v in asdict(self).items() if k not in left_out}
        return json.dumps(params, sort_keys=True, default=list)


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
        raise SuiteError(f"{path}: cannot read suite file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if "end of document" in message and "line" not in message:
            message += f" (line {len(text.splitlines())}, the last)"
        raise SuiteError(f"{path}: TOML syntax error: {message}") from None
    return expand_suite(data, path, backends=backends, max_seq_len=max_seq_len)


def expand_suite(data: dict, path: Path, backends: list[str] | None = None,
                 max_seq_len: int | None = None) -> Suite:
    where = str(path)
    _check_keys(data, TOP_LEVEL_KEYS, where, "top level")
    settings = _suite_settings(_table(data, "suite", where), path)
    defaults = dict(CASE_DEFAULTS)
    defaults_table = _table(data, "defaults", where)
    _check_keys(defaults_table, CASE_DEFAULTS, where, "[defaults]")
    defaults.update(defaults_table)
    sweep = _table(data, "sweep", where)
    _check_keys(sweep, CASE_DEFAULTS, where, "[sweep]")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{where}: [sweep] {key} must be a non-empty list, got {values!r}")
    includes = _array_of_tables(data, "include", where)
    excludes = _array_of_tables(data, "exclude", where)
    for i, table in enumerate(includes):
        _check_keys(table, CASE_DEFAULTS, where, f"[[include]] #{i + 1}")
    for i, table in enumerate(excludes):
        _check_exclude(table, where, f"[[exclude]] #{i + 1}")
    model = _table(data, "model", where) or None
    if settings["fixed_tokens"] is not None and ("batch" in sweep or "batch" in defaults_table):
        raise SuiteError(f"{where}: [suite] fixed_tokens sets batch = fixed_tokens / seq_len; "
                         f"remove batch from [defaults] / [sweep]")

    _register_plugins(settings, where)
    known = _known_backends()
    raw = list(_product(defaults, sweep))
    for table in includes:
        raw.extend(_product({**defaults, **{k: v for k, v in table.items() if not isinstance(v, list)}},
                            {k: v for k, v in table.items() if isinstance(v, list)}))

    cases: dict[str, Case] = {}
    for params in raw:
        if any(_matches(params, rule, where) for rule in excludes):
            continue
        case = _make_case(params, settings, model, known, where)
        if backends and case.backend not in backends:
            continue
        if max_seq_len is not None and case.seq_len > max_seq_len:
            continue
        cases.setdefault(case.case_id, case)
    if backends:
        for name in backends:
            if name not in known:
                raise SuiteError(f"--backend {name!r}: unknown backend{_did_you_mean(name, known)}; "
                                 f"known: {', '.join(known)}")
    if not cases:
        filters = []
        if backends:
            filters.append(f"--backend {' '.join(backends)}")
        if max_seq_len is not None:
            filters.append(f"--max-seq-len {max_seq_len}")
        extra = f" after {' and '.join(filters)}" if filters else ""
        raise SuiteError(f"{where}: the sweep is empty (no cases{extra})")
    return Suite(name=settings["name"], path=path, description=settings["description"],
                 cases=list(cases.values()), settings=settings)


def _suite_settings(table: dict, path: Path) -> dict:
    where = str(path)
    _check_keys(table, SUITE_DEFAULTS, where, "[suite]")
    settings = {**SUITE_DEFAULTS, **table}
    settings["name"] = settings["name"] or path.stem
    _expect(isinstance(settings["name"], str) and settings["name"], where, "[suite] name", settings["name"],
            "a non-empty string")
    _expect(isinstance(settings["description"], str), where, "[suite] description",
            settings["description"], "a string")
    for key in ("fidelity", "count_flops", "skip_larger_after_failure", "triton_interpret"):
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
    settings["plugins"] = tuple(plugins)
    settings["plugin_dir"] = str(path.resolve().parent) if plugins else None
    return settings


def _make_case(params: dict, settings: dict, model: dict | None, known: list[str], where: str) -> Case:
    p = dict(params)
    name = p["backend"]
    _expect(isinstance(name, str), where, "backend", name, "a backend name")
    if name not in known:
        raise SuiteError(f"{where}: unknown backend {name!r}{_did_you_mean(name, known)}; "
                         f"known: {', '.join(known)}")
    kind = _backend_kind(name)
    _expect(p["mode"] in MODES, where, "mode", p["mode"], " | ".join(MODES))
    _expect(p["dtype"] in DTYPES, where, "dtype", p["dtype"], " | ".join(DTYPES))
    _expect(isinstance(p["device"], str) and (p["device"] == "cpu" or p["device"].startswith("cuda")),
            where, "device", p["device"], "'cpu', 'cuda' or 'cuda:N'")
    for key in ("seq_len", "heads", "d_head", "n_hashes", "repeats"):
        _expect(_is_int(p[key]) and p[key] >= 1, where, key, p[key], "a positive integer")
    for key in ("warmup", "seed"):
        _expect(_is_int(p[key]) and p[key] >= 0, where, key, p[key], "an integer >= 0")
    for key in ("causal", "dedup"):
        _expect(isinstance(p[key], bool), where, key, p[key], "true or false")
    _expect(isinstance(p["timeout_s"], (int, float)) and not isinstance(p["timeout_s"], bool)
            and p["timeout_s"] > 0, where, "timeout_s", p["timeout_s"], "a positive number of seconds")
    for key in ("n_buckets", "chunk_len"):
        _expect(p[key] == "auto" or (_is_int(p[key]) and p[key] >= 1), where, key, p[key],
                "a positive integer or \"auto\"")
    if p["n_buckets"] == "auto" and p["chunk_len"] == "auto":
        raise SuiteError(f"{where}: n_buckets and chunk_len cannot both be \"auto\" "
                         f"(seq_len={p['seq_len']})")
    if settings["fixed_tokens"] is not None:
        if settings["fixed_tokens"] % p["seq_len"]:
            raise SuiteError(f"{where}: [suite] fixed_tokens={settings['fixed_tokens']} is not a multiple "
                             f"of seq_len={p['seq_len']}")
        p["batch"] = settings["fixed_tokens"] // p["seq_len"]
    _expect(_is_int(p["batch"]) and p["batch"] >= 1, where, "batch", p["batch"], "a positive integer")
    mem_limit = _mem_limit_bytes(p["mem_limit"], where)

    from_seq_len = ["batch"] if settings["fixed_tokens"] is not None else []
    if kind == "dense":
        n_buckets = n_hashes = chunk_len = dedup = None
    else:
        n_buckets, chunk_len = _resolve_buckets(p, where)
        n_hashes, dedup = p["n_hashes"], p["dedup"]
        from_seq_len += [key for key in ("n_buckets", "chunk_len") if p[key] == "auto"]
    heads, d_head = p["heads"], p["d_head"]
    if p["mode"] == "train_step":
        if model is None:
            raise SuiteError(f"{where}: mode = \"train_step\" needs a [model] table")
        heads, d_head = _model_shape(model, where)
    fidelity = (settings["fidelity"] and p["mode"] != "train_step" and kind != "dense"
                and p["seq_len"] <= settings["fidelity_max_seq_len"])
    case_params = {
        "suite": settings["name"], "backend": name, "backend_kind": kind, "mode": p["mode"],
        "seq_len": p["seq_len"], "batch": p["batch"], "heads": heads, "d_head": d_head,
        "n_buckets": n_buckets, "n_hashes": n_hashes, "chunk_len": chunk_len, "causal": p["causal"],
        "dedup": dedup, "dtype": p["dtype"], "device": p["device"], "seed": p["seed"],
        "repeats": p["repeats"], "warmup": p["warmup"], "timeout_s": float(p["timeout_s"]),
        "mem_limit_bytes": mem_limit, "fidelity": fidelity, "count_flops": settings["count_flops"],
        "triton_interpret": settings["triton_interpret"], "threads": settings["threads"],
        "plugins": settings["plugins"], "plugin_dir": settings["plugin_dir"],
        "model": copy.deepcopy(model) if p["mode"] == "train_step" else None,
        "from_seq_len": tuple(from_seq_len),
    }
    return Case(case_id=case_id(case_params), **case_params)


def case_id(params: dict) -> str:
    """A readable, stable id: the main parameters, then a hash of everything that defines the case.

    The same parameters give the same id in every run, which is what --resume relies on; where the
    suite file lies (plugin_dir) is left out so that ids do not depend on the checkout's path, and
    so is from_seq_len, which says how values were chosen, not what they are.
    """
    p = params
    hashed = {k: v for k, v in p.items() if k not in ("plugin_dir", "from_seq_len")}
    lsh = "" if p["n_hashes"] is None else f"-nb{p['n_buckets']}-r{p['n_hashes']}-c{p['chunk_len']}"
    readable = (f"{p['backend']}-{p['mode']}-n{p['seq_len']}-b{p['batch']}-h{p['heads']}-d{p['d_head']}"
                f"{lsh}{'-causal' if p['causal'] else ''}-{p['dtype']}-{p['device']}")
    digest = hashlib.sha1(json.dumps(hashed, sort_keys=True, default=list).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def _resolve_buckets(p: dict, where: str) -> tuple[int, int]:
    seq_len = p["seq_len"]
    if p["n_buckets"] == "auto":
        chunk_len = p["chunk_len"]
        if seq_len % chunk_len:
            raise SuiteError(f"{where}: seq_len={seq_len} is not a multiple of chunk_len={chunk_len}")
        return max(2, 2 * seq_len // chunk_len), chunk_len
    n_buckets = p["n_buckets"]
    if n_buckets % 2:
        raise SuiteError(f"{where}: n_buckets must be even, got n_buckets={n_buckets}")
    chunk_len = p["chunk_len"]
    if chunk_len == "auto":
        if (2 * seq_len) % n_buckets:
            raise SuiteError(f"{where}: chunk_len=\"auto\" needs 2*seq_len divisible by n_buckets, "
                             f"got seq_len={seq_len}, n_buckets={n_buckets}")
        chunk_len = max(1, 2 * seq_len // n_buckets)
    if seq_len % chunk_len:
        raise SuiteError(f"{where}: seq_len={seq_len} is not a multiple of chunk_len={chunk_len}")
    return n_buckets, chunk_len


def _model_shape(model: dict, where: str) -> tuple[int, int]:
    _check_model_keys(model, where)
    d_model, heads = model.get("d_model"), model.get("heads")
    if not (_is_int(d_model) and _is_int(heads) and heads >= 1 and d_model % heads == 0):
        raise SuiteError(f"{where}: [model] needs integers d_model and heads with d_model % heads == 0, "
                         f"got d_model={d_model!r}, heads={heads!r}")
    return heads, d_model // heads


# [model] keys that the case sets: LSH settings and causality are case axes, swept like any other.
MODEL_KEYS_FROM_CASE = ("n_hashes", "chunk_len", "n_buckets", "causal")


def _check_model_keys(model: dict, where: str) -> None:
    import dataclasses

    try:
        from impls.model import ModelConfig
    except ImportError:  # the model module is optional for suites without train_step
        return
    allowed = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in MODEL_KEYS_FROM_CASE]
    for key in model:
        if key in MODEL_KEYS_FROM_CASE:
            raise SuiteError(f"{where}: [model] {key} is a case parameter: set it in [defaults] or [sweep]")
    _check_keys(model, allowed, where, "[model]")
    try:
        ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
    except ValueError as exc:
        raise SuiteError(f"{where}: [model]: {exc}") from None


def _mem_limit_bytes(value: Any, where: str) -> int | None:
    if value in ("none", None):
        return None
    from .memory import parse_size

    try:
        return parse_size(value)
    except ValueError:
        raise SuiteError(f"{where}: mem_limit must be a size such as \"512 MiB\" or \"none\", "
                         f"got mem_limit={value!r}") from None


def _product(base: dict, sweep: dict):
    keys = list(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        yield {**base, **dict(zip(keys, values))}


def _check_exclude(table: dict, where: str, section: str) -> None:
    """Keys are case parameters; a {min, max} range has only those keys, and numbers for bounds."""
    _check_keys(table, CASE_DEFAULTS, where, section)
    for key, wanted in table.items():
        if not isinstance(wanted, dict):
            continue
        _check_keys(wanted, ("min", "max"), where, f"{section} {key}")
        for bound, limit in wanted.items():
            if not _is_number(limit):
                raise SuiteError(f"{where}: {section} {key}.{bound} must be a number, "
                                 f"got {key} = {{{bound} = {limit!r}}}")


def _matches(params: dict, rule: dict, where: str) -> bool:
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


def _register_plugins(settings: dict, where: str) -> None:
    """Import the suite's plugin modules here too, so that their backends are known to validation.

    A plugin that fails to import, whatever it raises, is a SuiteError naming it and the error.
    """
    if not settings["plugins"]:
        return
    import importlib

    if settings["plugin_dir"] not in sys.path:
        sys.path.insert(0, settings["plugin_dir"])
    for module in settings["plugins"]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SuiteError(f"{where}: [suite] plugins: cannot import {module!r} from "
                             f"{settings['plugin_dir']}: {_one_line(exc)}") from None
        except (Exception, SystemExit) as exc:  # a plugin's own bug: name it, no traceback
            raise SuiteError(f"{where}: [suite] plugins: importing {module!r} from {settings['plugin_dir']} "
                             f"failed: {type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def _known_backends() -> list[str]:
    """Names of every registered backend (peers included)."""
    from .worker import backend_names

    return backend_names()


def _backend_kind(name: str) -> str:
    from .worker import backend_kind

    return backend_kind(name)


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: {key} must be a table ([{key}]), got {value!r}")
    return value


def _array_of_tables(data: dict, key: str, where: str) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise SuiteError(f"{where}: {key} must be an array of tables ([[{key}]]), got {value!r}")
    return value


def _check_keys(table: dict, allowed, where: str, section: str) -> None:
    for key in table:
        if key not in allowed:
            raise SuiteError(f"{where}: unknown key {key!r} in {section}{_did_you_mean(key, allowed)}")


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _expect(ok: bool, where: str, key: str, value: Any, wanted: str) -> None:
    if not ok:
        raise SuiteError(f"{where}: {key} must be {wanted}, got {key}={value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
