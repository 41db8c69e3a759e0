"""A suite file's tables (a dict, as harness.suite.read gives it) -> its cases: [defaults] laid under the
product of [sweep], [[include]] tables added, [[exclude]] rules applied, each case built by
harness.suite.build. The tables:

    [suite]      how to run: harness.suite.settings.SETTINGS lists the keys and their defaults
    [defaults]   one value per case parameter (harness.suite.parameters: keys and built-in defaults)
    [sweep]      case parameter -> list of values; the cases are the cartesian product. Model keys
                 are swept as `model.<key> = [...]` (TOML dotted keys), e.g. model.layers = [2, 4]
    [[include]]  extra cases: a table of parameters laid over [defaults] (lists are swept too;
                 model.<key> too)
    [[exclude]]  drop every case matching all the keys of one table; a value may be a scalar,
                 a list (any of) or a table {min = .., max = ..} (inclusive bounds)
    [model]      the language model of workload = "model" cases (harness.suite.model_table)
    [task]       sizes a task (task cases); [sweep] and [[include]] may set its keys per case as
                 `task_table.<key> = ...` (a task's training settings side by side in one suite)

Every problem is one UserError line naming the file, the key and the value.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..plugins import register_plugins
from .build import _task_cases, make_case
from .case import Case
from .checks import array_of_tables, check_keys, did_you_mean, flat_dotted_keys, is_number, section_table
from .model_table import MODEL_HINT, check_model_keys, flat_model_keys, model_keys
from .parameters import defaults as parameter_defaults
from .parameters import names
from .settings import suite_settings

TOP_LEVEL_KEYS = ("suite", "defaults", "sweep", "include", "exclude", "model", "task")


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    cases: list[Case]
    settings: dict = field(default_factory=dict)


def expand_suite(data: dict, path: Path, backends: list[str] | None = None,
                 max_seq_len: int | None = None) -> Suite:
    """Validate and expand a suite file's tables. backends / max_seq_len filter the cases (CLI flags)."""
    where = str(path)
    check_keys(data, TOP_LEVEL_KEYS, where, "top level")
    settings = suite_settings(section_table(data, "suite", where), path)
    # Plugins first: they may declare the parameters the other tables set.
    register_plugins(settings["plugins"], settings["plugin_dir"], where)
    sweepable = names(lambda p: p.in_suite)  # model.<key> entries are checked by flat_model_keys
    defaults = parameter_defaults()
    defaults_table = section_table(data, "defaults", where)
    check_keys(defaults_table, sweepable, where, "[defaults]")
    defaults.update(defaults_table)
    model = section_table(data, "model", where)
    check_model_keys(model, where, "[model]")
    task_table = section_table(data, "task", where)
    sweep = _flat_task_keys(flat_model_keys(section_table(data, "sweep", where), where, "[sweep]"), where, "[sweep]")
    check_keys(_untasked(sweep), sweepable, where, "[sweep]", hint=MODEL_HINT, hinted=model_keys())
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: [sweep] {key} must be a non-empty list, got {values!r}")
    includes = [_flat_task_keys(flat_model_keys(t, where, f"[[include]] #{i + 1}"), where, f"[[include]] #{i + 1}")
                for i, t in enumerate(array_of_tables(data, "include", where))]
    excludes = [flat_model_keys(t, where, f"[[exclude]] #{i + 1}")
                for i, t in enumerate(array_of_tables(data, "exclude", where))]
    for i, table in enumerate(includes):
        check_keys(_untasked(table), sweepable, where, f"[[include]] #{i + 1}", hint=MODEL_HINT, hinted=model_keys())
    for i, table in enumerate(excludes):
        _check_exclude(table, sweepable, where, f"[[exclude]] #{i + 1}")
    if settings["fixed_tokens"] is not None and ("batch" in sweep or "batch" in defaults_table):
        raise UserError(f"{where}: [suite] fixed_tokens sets batch = fixed_tokens / seq_len; "
                        f"remove batch from [defaults] / [sweep]")

    import impls

    known = impls.list_backends()
    if defaults["backend"] is None:
        defaults["backend"] = impls.list_backends("lsh")[0]
    for name in settings["compare_against"]:
        if name not in known:
            raise UserError(f"{where}: [suite] compare_against: unknown backend {name!r}"
                            f"{did_you_mean(name, known)}")
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
        if params.get("task") is None and any(k.startswith(TASK_TABLE_PREFIX) for k in params):
            raise UserError(f"{where}: task_table.<key> is set for a case that is not a task case (no task = \"...\")")
        made = (_task_cases(params, settings, task_table_of(task_table, params), known, where)
                if params.get("task") is not None else [make_case(params, settings, model, known, where)])
        for case in made:
            if backends and case.backend not in backends and not case.task:
                continue
            if max_seq_len is not None and case.seq_len > max_seq_len:
                continue
            cases.setdefault(case.case_id, case)
    if backends:
        for name in backends:
            if name not in known:
                raise UserError(f"--backend {name!r}: unknown backend{did_you_mean(name, known)}; "
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


# `task_table.<key> = values` in [sweep] or [[include]]: those cases' [task] table has <key> set so (a
# task's training settings compared in one suite, e.g. an ablation); checked by the task like the table.
TASK_TABLE_PREFIX = "task_table."  # flat_dotted_keys writes the same prefix


def _flat_task_keys(table: dict, where: str, section: str) -> dict:
    """{"task_table": {"share_qk": false}} -> {"task_table.share_qk": false}."""
    return flat_dotted_keys(table, "task_table", where, section)[0]


def _untasked(table: dict) -> dict:
    return {k: v for k, v in table.items() if not k.startswith(TASK_TABLE_PREFIX)}


def task_table_of(table: dict, params: dict) -> dict:
    """The [task] table of one case: the suite's, with the case's task_table.<key> values over it."""
    overrides = {k[len(TASK_TABLE_PREFIX):]: v for k, v in params.items() if k.startswith(TASK_TABLE_PREFIX)}
    return {**table, **overrides} if overrides else table


def _product(base: dict, sweep: dict):
    keys = list(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        yield {**base, **dict(zip(keys, values))}


def _check_exclude(table: dict, sweepable, where: str, section: str) -> None:
    """Keys are case parameters; a {min, max} range has only those keys, and numbers for bounds."""
    check_keys(table, sweepable, where, section, hint=MODEL_HINT, hinted=model_keys())
    for key, wanted in table.items():
        if not isinstance(wanted, dict):
            continue
        check_keys(wanted, ("min", "max"), where, f"{section} {key}")
        for bound, limit in wanted.items():
            if not is_number(limit):
                raise UserError(f"{where}: {section} {key}.{bound} must be a number, "
                                f"got {key} = {{{bound} = {limit!r}}}")


def _matches(params: dict, rule: dict) -> bool:
    for key, wanted in rule.items():
        value = params.get(key)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif isinstance(wanted, dict):  # bounds checked by _check_exclude
            if not is_number(value):
                return False
            if "min" in wanted and value < wanted["min"]:
                return False
            if "max" in wanted and value > wanted["max"]:
                return False
        elif value != wanted:
            return False
    return True
