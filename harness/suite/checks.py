"""The loader's checks: every problem is one UserError line naming the file, the key and the value."""
from __future__ import annotations

import difflib
from typing import Any, TypeGuard

from ..errors import UserError

MODEL_PREFIX = "model."


def section_table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a table ([{key}]), got {value!r}")
    return value


def array_of_tables(data: dict, key: str, where: str) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UserError(f"{where}: {key} must be an array of tables ([[{key}]]), got {value!r}")
    return value


def check_keys(table: dict, allowed, where: str, section: str, hint: str = "", hinted=()) -> None:
    """Every key of table is allowed (model.<key> too where a hint is given); an unknown one is named,
    with the closest allowed key, or the hint where the key is one of `hinted`."""
    for key in table:
        if key in allowed or (hint and key.startswith(MODEL_PREFIX)):
            continue
        extra = did_you_mean(key, allowed)
        if not extra and hint and key in hinted:
            extra = f" ({hint})"
        raise UserError(f"{where}: unknown key {key!r} in {section}{extra}")


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def expect(ok: bool, where: str, key: str, value: Any, wanted: str) -> None:
    if not ok:
        raise UserError(f"{where}: {key} must be {wanted}, got {key}={value!r}")


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flat_dotted_keys(table: dict, key: str, where: str, section: str) -> tuple[dict, dict | None]:
    """{key: {"a": 1}} (TOML `key.a = 1`) -> ({"key.a": 1}, {"a": 1}): the table with key's sub-table
    flattened into dotted keys, and the sub-table (None where there is none) for its own checks."""
    flat = {k: v for k, v in table.items() if k != key}
    nested = table.get(key)
    if nested is None:
        return flat, None
    if not isinstance(nested, dict):
        raise UserError(f"{where}: {section} {key} must be {key}.<key> = values, got {key}={nested!r}")
    flat.update({f"{key}.{k}": v for k, v in nested.items()})
    return flat, nested
