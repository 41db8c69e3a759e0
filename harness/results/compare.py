"""The one rule that compares a figure with its baseline, for figures where larger is worse (time,
memory, error). The gate and the report both use it, with each metric's tolerance from the table.

    regression:   measured > baseline * (1 + tolerance)  and  measured - baseline > noise
    improvement:  measured < baseline * (1 - tolerance)  and  baseline - measured > noise
    change:       (measured - baseline) / baseline

noise: how far apart two measurements of the same thing can be (for time, the two runs' IQRs
together); 0 for exact figures (CPU tensor bytes).
"""
from __future__ import annotations

import math


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def verdict(baseline, measured, tolerance: float, noise: float = 0.0) -> str | None:
    """"regression", "improvement", or None (within tolerance or noise, or a figure missing)."""
    if not (_known(baseline) and _known(measured)):
        return None
    noise = noise if _known(noise) else 0.0
    if measured > baseline * (1 + tolerance) and measured - baseline > noise:
        return "regression"
    if measured < baseline * (1 - tolerance) and baseline - measured > noise:
        return "improvement"
    return None


def change(baseline, measured) -> float | None:
    """(measured - baseline) / baseline; None where either is missing or the baseline is 0."""
    if not (_known(baseline) and _known(measured)) or baseline == 0:
        return None
    return (measured - baseline) / baseline
