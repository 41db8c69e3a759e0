"""The [suite] table of a suite file: how its cases run (SETTINGS: the keys and their defaults)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .checks import check_keys, expect, is_int

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
    "plugins": [],  # modules next to the suite file that register extra backends, metrics or parameters
    "compare_against": [],  # backends the --summary ratios are taken against (default: dense and peers)
    "measure_peak": True,  # measure the machine's matmul FLOP/s once per (device, dtype) into run.json
    # Profiles (untimed passes after the timed calls; off: the worker runs none of them):
    "phases": False,  # phase_times / phase_shares: one call under torch.profiler, the backends' phases on
    "peak_live": False,  # the memory pass records the live set at the peak (peak_live_top, peak_live_file)
    "profile": False,  # a Chrome trace and an op table per case under <run dir>/profiles/<case id>/
}
# The settings that ask for a profile (run's --phases, --peak-live, --profile set them too).
PROFILE_SETTINGS = ("phases", "peak_live", "profile")


def suite_settings(table: dict, path: Path) -> dict:
    where = str(path)
    check_keys(table, SETTINGS, where, "[suite]")
    settings = {**SETTINGS, **table}
    settings["name"] = settings["name"] or path.stem
    expect(isinstance(settings["name"], str) and settings["name"] != "", where, "[suite] name", settings["name"],
            "a non-empty string")
    expect(isinstance(settings["description"], str), where, "[suite] description",
            settings["description"], "a string")
    for key in ("fidelity", "count_flops", "skip_larger_after_failure", "interpret", "measure_peak",
                *PROFILE_SETTINGS):
        expect(isinstance(settings[key], bool), where, f"[suite] {key}", settings[key], "true or false")
    for key in ("fixed_tokens", "threads"):
        if settings[key] is not None:
            expect(is_int(settings[key]) and settings[key] >= 1, where, f"[suite] {key}", settings[key],
                    "a positive integer")
    expect(is_int(settings["fidelity_max_seq_len"]) and settings["fidelity_max_seq_len"] >= 0, where,
            "[suite] fidelity_max_seq_len", settings["fidelity_max_seq_len"], "an integer >= 0")
    plugins = settings["plugins"]
    expect(isinstance(plugins, list) and all(isinstance(p, str) and p.isidentifier() for p in plugins),
            where, "[suite] plugins", plugins, "a list of module names")
    compare_against = settings["compare_against"]
    expect(isinstance(compare_against, list) and all(isinstance(n, str) for n in compare_against), where,
            "[suite] compare_against", compare_against, "a list of backend names")
    settings["plugins"] = tuple(plugins)
    settings["compare_against"] = tuple(compare_against)
    settings["plugin_dir"] = str(path.resolve().parent) if plugins else None
    return settings
