"""Backend selection: which implementation of an op runs.

Backends: ``native`` (the C++ extension: CPU kernels on CPU tensors, CUDA kernels on CUDA tensors),
``triton`` (Triton kernels: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``), ``torch``
(the pure-PyTorch reference) and ``auto`` (the fastest one that can run the input, by device).

``with fastseg.use_backend("triton"): ...`` forces one in a block (thread- and task-local);
the ``FASTSEG_BACKEND`` environment variable forces one everywhere. A forced backend that cannot run
the input raises a :class:`BackendUnavailableError` that says why; it never silently falls back.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
from typing import Callable, Iterator, Mapping

import torch

from fastseg import _extension

BACKENDS = ("auto", "native", "triton", "torch")

# `auto` first takes the backend measured fastest for the op and device type, recorded in
# auto_backends.json by `fastseg bench --backends all --update-auto`; where there is no measurement
# (or that backend cannot run here) it tries these in order: the native kernels, then Triton on CUDA
# (the Triton interpreter is for tests only), then the reference.
AUTO_ORDER = {"cpu": ("native", "torch"), "cuda": ("native", "triton", "torch")}
AUTO_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_backends.json")

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastseg_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run the given input."""


# Every public op and its implementations by backend name, filled by the fastseg.ops modules.
OPS: dict[str, Mapping[str, Callable]] = {}


def register(op: str, impls: Mapping[str, Callable]) -> Mapping[str, Callable]:
    """Declare op `op` (its name in every layer) and its implementations; returns `impls`."""
    if "torch" not in impls:
        raise ValueError(f"register({op!r}): every op needs its 'torch' reference implementation")
    OPS[op] = impls
    return impls


def _check_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the backend of every fastseg op called inside the ``with`` block."""
    token = _forced.set(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        _forced.reset(token)


def current_backend() -> str:
    """The backend asked for here: ``use_backend``'s, else ``FASTSEG_BACKEND``'s, else ``auto``."""
    forced = _forced.get()
    if forced is not None:
        return forced
    return _check_name(os.environ.get("FASTSEG_BACKEND", "auto") or "auto", "FASTSEG_BACKEND")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run tensors on `device`, or None if it can."""
    if backend == "torch":
        return None
    if backend == "native":
        if not _extension.loaded():
            return f"the C++ extension fastseg._C is not available: {_extension.error}"
        if device.type == "cpu":
            return None
        if device.type == "cuda":
            if not _extension.with_cuda():
                return "fastseg._C was built without its CUDA kernels (no nvcc or CPU-only torch at build time)"
            return None
        return f"it has no kernels for {device.type} tensors"
    if backend == "triton":
        err = _triton_import_error()
        if err:
            return err
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            if triton_interpreting():
                return None
            return "Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before importing triton"
        return f"it has no kernels for {device.type} tensors"
    raise ValueError(f"unknown backend {backend!r}")


def select(op: str, device: torch.device, impls: Mapping[str, Callable]) -> tuple[str, Callable]:
    """The (backend, implementation) that runs `op` on `device`."""
    asked = current_backend()
    if asked != "auto":
        reason = unavailable_reason(asked, device) if asked in impls else "it does not implement this op"
        if reason is not None:
            raise BackendUnavailableError(f"fastseg: backend {asked!r} cannot run {op} on {device}: {reason}")
        return asked, impls[asked]
    measured = auto_table().get(device.type, {}).get(op)
    for candidate in ((measured,) if measured else ()) + AUTO_ORDER.get(device.type, ("torch",)):
        if candidate in impls and unavailable_reason(candidate, device) is None:
            return candidate, impls[candidate]
    return "torch", impls["torch"]


def auto_choice(op: str, device: torch.device | str, impls: Mapping[str, Callable]) -> str:
    """The backend ``auto`` picks for `op` on `device` (ignoring any forced backend)."""
    token = _forced.set("auto")
    try:
        return select(op, torch.device(device), impls)[0]
    finally:
        _forced.reset(token)


def load_auto_table(path: str | None = None) -> dict:
    """{device type: {op: fastest measured backend}} from auto_backends.json (read once, at import:
    select() must stay traceable by torch.compile, which cannot trace a file read)."""
    global _AUTO_TABLE
    try:
        with open(path or AUTO_TABLE_PATH) as f:
            _AUTO_TABLE = json.load(f)
    except (OSError, ValueError):
        _AUTO_TABLE = {}
    return _AUTO_TABLE


def auto_table() -> dict:
    return _AUTO_TABLE


def update_auto_table(records: list[dict]) -> dict:
    """Record, per (device type, op), the backend with the lowest geometric-mean time over the sizes
    that every measured backend ran; returns {(device type, op): backend}."""
    groups: dict = {}
    for r in records:
        if r["backend"] != "auto":
            groups.setdefault((torch.device(r["device"]).type, r["op"]), []).append(r)
    table = json.loads(json.dumps(auto_table()))  # a copy
    choices = {}
    for (device_type, op), rs in groups.items():
        by_backend: dict = {}
        for r in rs:
            by_backend.setdefault(r["backend"], {})[(r["shape"], r["dtype"])] = r["fastseg_ms"]
        common = set.intersection(*(set(t) for t in by_backend.values()))
        if not common:
            continue
        score = {b: sum(math.log(t[k]) for k in common) for b, t in by_backend.items()}
        choices[(device_type, op)] = table.setdefault(device_type, {})[op] = min(score, key=score.get)
    with open(AUTO_TABLE_PATH, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    load_auto_table()
    return choices


_AUTO_TABLE: dict = {}
load_auto_table()
