"""JSON-safe copies of computed results (summaries, metrics) for files written with ``allow_nan=False``."""

from __future__ import annotations

import math

import numpy as np


def json_safe(value: object) -> object:
    """A copy with numpy scalars as Python numbers, NaN/inf as None, tuples as lists and keys as strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value
