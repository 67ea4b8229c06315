"""Argument checks shared by several ops (each error names the op and the argument)."""
from __future__ import annotations

import math
import numbers

from torch import Tensor


def number(op: str, name: str, value) -> float:
    """`value` as a float: a real number, or a one-element CPU tensor; bool and NaN are refused."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.device.type == "cpu":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{op}: {name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{op}: {name} must be a number, got nan")
    return value
