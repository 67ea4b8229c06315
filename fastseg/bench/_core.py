"""Cases, timing and the environment record of the benchmark suite."""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import itertools
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

import fastseg
from fastseg import backend


@dataclasses.dataclass
class Case:
    op: str
    shape: str
    size: int  # problem size (boxes, elements...), the x axis of the scaling view
    dtype: torch.dtype
    device: str
    make: Callable[[int], tuple]  # seed -> inputs
    fastseg: Callable
    peer: Callable
    peer_name: str
    check: Callable[[Any, Any, tuple], None]  # raises if fastseg's result is not the peer's
    impls: dict  # the op's implementations by backend (backend.OPS[op])


def suites() -> dict:
    """Op family -> ``cases(device, quick) -> list[Case]``: one public module per family in
    fastseg.bench (``nms.py``...); modules starting with ``_`` are the machinery."""
    import fastseg.bench as package

    return {m.name: importlib.import_module(f"{package.__name__}.{m.name}").cases
            for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def repetitions(quick: bool) -> tuple[float, int, int]:
    """Seconds per implementation, and the least and most repetitions (or blocks) of it."""
    return (0.3, 3, 30) if quick else (1.5, 9, 100)


def time_pair(case: Case, fn_a: Callable, fn_b: Callable, quick: bool) -> tuple[list[float], list[float]]:
    """Alternate runs of fn_a and fn_b, each repetition on the next of three input sets (so that a
    memory-bound kernel is not flattered by a warm cache), synchronising the GPU inside the timed
    region. Each side has its own copies of the three sets: sharing them, fn_b read every input right
    after fn_a had brought it into the cache (8 MB inputs measured 3-5% faster for whichever side ran
    second: notes/conv_transpose2d.md, section 28). Returns both lists of seconds."""
    inputs_a = [case.make(seed) for seed in range(3)]
    inputs_b = [case.make(seed) for seed in range(3)]
    fn_a(*inputs_a[0]), fn_b(*inputs_b[0])  # warm-up: first-call costs (allocation, autotuning, imports)
    sync(case.device)
    budget, min_reps, max_reps = repetitions(quick)
    times_a, times_b = [], []
    start = time.perf_counter()
    while True:
        for fn, times, inputs in ((fn_a, times_a, inputs_a), (fn_b, times_b, inputs_b)):
            args = inputs[len(times) % len(inputs)]
            sync(case.device)
            t0 = time.perf_counter()
            fn(*args)
            sync(case.device)
            times.append(time.perf_counter() - t0)
        n = len(times_a)
        if n >= max_reps or (n >= min_reps and time.perf_counter() - start > 2 * budget):
            return times_a, times_b


def time_isolated(case: Case, fn_a: Callable, fn_b: Callable, quick: bool) -> tuple[list[float], list[float]]:
    """Each implementation in its own loop: blocks of consecutive calls (~20 ms a block), as
    torch.utils.benchmark's ``blocked_autorange`` times an op, on the same rotating input sets as
    `time_pair`. Alternating calls let each side's frees decide the other's page faults (a 16.8 MB output
    faults in fresh or not depending on what the other side just gave back to glibc); here each side sees
    only its own. Returns the seconds per call of each block, for both."""
    inputs = [case.make(seed) for seed in range(3)]
    budget, min_blocks, max_blocks = repetitions(quick)
    result = []
    for fn in (fn_a, fn_b):
        args = itertools.cycle(inputs)

        def call(fn=fn, args=args):
            fn(*next(args))
            sync(case.device)

        call()  # warm-up: first-call costs (allocation, autotuning, imports)
        t0 = time.perf_counter()
        call()
        number = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-7)))
        times, start = [], time.perf_counter()
        while len(times) < min_blocks or (len(times) < max_blocks and time.perf_counter() - start < budget):
            t0 = time.perf_counter()
            for _ in range(number):
                call()
            times.append((time.perf_counter() - t0) / number)
        result.append(times)
    return result[0], result[1]


def rel_mad(times: list[float]) -> float:
    """Median absolute deviation over the median: the run's own noise."""
    m = statistics.median(times)
    return statistics.median(abs(t - m) for t in times) / m if m > 0 else 0.0


def run_case(case: Case, backend_name: str, quick: bool, isolated: bool = False) -> dict:
    """Check fastseg (forced to `backend_name`) against the peer, then time both: alternately
    (`time_pair`), or each in its own loop (`time_isolated`)."""
    def fast(*args):
        with fastseg.use_backend(backend_name):
            return case.fastseg(*args)

    args = case.make(0)
    case.check(fast(*args), case.peer(*args), args)  # correctness first
    t_fast, t_peer = (time_isolated if isolated else time_pair)(case, fast, case.peer, quick)
    fast_ms, peer_ms = statistics.median(t_fast) * 1e3, statistics.median(t_peer) * 1e3
    return {
        "op": case.op, "shape": case.shape, "size": case.size, "dtype": str(case.dtype).replace("torch.", ""),
        "device": case.device, "backend": backend_name,
        "auto": backend.auto_choice(case.op, case.device, case.impls),
        "fastseg_ms": fast_ms, "peer": case.peer_name, "peer_ms": peer_ms, "speedup": peer_ms / fast_ms,
        "timing": "isolated" if isolated else "alternating",
        "repeats": len(t_fast), "fastseg_rel_mad": rel_mad(t_fast), "peer_rel_mad": rel_mad(t_peer),
        "fastseg_ms_all": [t * 1e3 for t in t_fast], "peer_ms_all": [t * 1e3 for t in t_peer],
    }


def environment() -> dict:
    """Where and with what the results were measured."""
    def version(module):
        try:
            return importlib.import_module(module).__version__
        except Exception:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None, "python": sys.version.split()[0], "torch": torch.__version__,
        "torchvision": version("torchvision"), "triton": version("triton"), "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "fastseg": fastseg.__version__,
    }
