"""Argument checks shared by several ops (each error names the op and the argument)."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


class ArgumentError(ValueError, RuntimeError):
    """A bad argument to a fastseg op. A ValueError, and a RuntimeError too because that is what PyTorch's
    own checks raise: code written against ``torch.nn.functional`` catches it unchanged."""


def number(op: str, name: str, value) -> float:
    """`value` as a float: a real number, or a one-element CPU tensor; bool and NaN are refused."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.device.type == "cpu":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{op}: {name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ArgumentError(f"{op}: {name} must be a number, got nan")
    return value


def int_pair(op: str, name: str, value, minimum: int) -> list[int]:
    """`value` (an int, or a sequence of one or two ints) as two ints, each >= `minimum`."""
    if type(value) is int and value >= minimum:  # the common case, without the general checks' cost
        return [value, value]
    vals = list(value) if isinstance(value, (tuple, list, torch.Size)) else [value]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in vals):
        raise ArgumentError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    vals = [int(v) for v in vals]
    if any(v < minimum for v in vals):
        raise ArgumentError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return vals
