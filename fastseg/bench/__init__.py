"""The benchmark suite behind ``fastseg bench`` (and ``make bench``). One module per op family in this
package (``fastseg/bench/nms.py``...), each with ``cases(device, quick) -> list[Case]``.

Every case times a fastseg backend and its peer (torchvision) side by side in one process: the two are
run alternately, each repetition on the next of several input sets (so caches do not flatter either),
GPU work is synchronised inside the timed region, and the median is reported. Before timing, every
case asserts that fastseg's result equals the peer's.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import torch

import fastseg
from fastseg import backend


@dataclasses.dataclass
class Case:
    op: str
    shape: str
    size: int  # problem size (boxes), for the scaling view
    dtype: torch.dtype
    device: str
    make: Callable[[int], tuple]  # seed -> inputs
    fastseg: Callable
    peer: Callable
    peer_name: str
    check: Callable[[Any, Any, tuple], None]
    impls: dict


def suites() -> dict:
    """Op family -> cases(device, quick) -> list[Case], one module per family in this package."""
    return {m.name: importlib.import_module(f"{__name__}.{m.name}").cases for m in pkgutil.iter_modules(__path__)}



def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(case: Case, fn_a: Callable, fn_b: Callable, quick: bool) -> tuple[list[float], list[float]]:
    """Alternate runs of fn_a and fn_b over rotating inputs; returns both lists of seconds."""
    inputs = [case.make(seed) for seed in range(3)]
    for args in inputs[:1]:  # warm-up (and first-call costs: allocation, autotuning, imports)
        fn_a(*args), fn_b(*args)
    _sync(case.device)
    budget = 0.4 if quick else 2.0  # seconds per implementation
    times_a, times_b = [], []
    start = time.perf_counter()
    while True:
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            args = inputs[len(times) % len(inputs)]
            _sync(case.device)
            t0 = time.perf_counter()
            fn(*args)
            _sync(case.device)
            times.append(time.perf_counter() - t0)
        n = len(times_a)
        if n >= 50 or (n >= 5 and time.perf_counter() - start > 2 * budget):
            break
    return times_a, times_b


def run_case(case: Case, backend_name: str, quick: bool) -> dict:
    def fast(*args):
        with fastseg.use_backend(backend_name):
            return case.fastseg(*args)

    args = case.make(0)
    case.check(fast(*args), case.peer(*args), args)  # correctness first
    t_fast, t_peer = time_pair(case, fast, case.peer, quick)
    fast_ms, peer_ms = statistics.median(t_fast) * 1e3, statistics.median(t_peer) * 1e3
    return {
        "op": case.op, "shape": case.shape, "size": case.size, "dtype": str(case.dtype).replace("torch.", ""),
        "device": case.device, "backend": backend_name,
        "auto": backend.auto_choice(case.op, case.device, case.impls),
        "fastseg_ms": fast_ms, "peer": case.peer_name, "peer_ms": peer_ms, "speedup": peer_ms / fast_ms,
        "repeats": len(t_fast),
        "fastseg_ms_all": [t * 1e3 for t in t_fast], "peer_ms_all": [t * 1e3 for t in t_peer],
    }


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import torchvision
        tv = torchvision.__version__
    except ImportError:
        tv = None
    try:
        import triton
        tr = triton.__version__
    except ImportError:
        tr = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None, "python": sys.version.split()[0], "torch": torch.__version__,
        "torchvision": tv, "triton": tr, "cpu": cpu, "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "fastseg": fastseg.__version__,
    }


def format_table(records: Sequence[dict]) -> str:
    header = ["op", "shape", "dtype", "device", "backend", "fastseg ms", "peer", "peer ms", "speed-up", "auto"]
    rows = [[r["op"], r["shape"], r["dtype"], r["device"], r["backend"], f"{r['fastseg_ms']:.3f}",
             r["peer"], f"{r['peer_ms']:.3f}", f"{r['speedup']:.1f}x", r["auto"]] for r in records]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def add_arguments(p: argparse.ArgumentParser):
    families = ", ".join(suites())
    p.add_argument("--ops", default=None, help=f"comma-separated op families (default: all of {families})")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    p.add_argument("--devices", default=None, help="comma-separated devices (default: cpu, and cuda if present)")
    p.add_argument("--backends", default=None,
                   help="comma-separated fastseg backends to time (default: auto; 'all' = every available one)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results and the environment as JSON")


def run(args) -> int:
    available = suites()
    ops = [o for o in args.ops.split(",") if o] if args.ops else list(available)
    unknown = [o for o in ops if o not in available]
    if unknown:
        print(f"fastseg bench: unknown op family {', '.join(unknown)}; choose from {', '.join(available)}", file=sys.stderr)
        return 2
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = [c for op in ops for d in devices for c in available[op](d, args.quick)]
    records = []
    for i, case in enumerate(cases):
        names = (args.backends or "auto").split(",")
        if names == ["all"]:
            names = [b for b in case.impls if backend.unavailable_reason(b, torch.device(case.device)) is None]
            if case.device == "cpu":  # interpreted Triton and the Python-loop reference: minutes, not ms
                names = [b for b in names if b == "native"] or names
        for name in names:
            print(f"[{i + 1}/{len(cases)}] {case.op} {case.shape} {case.dtype} {case.device} {name}",
                  file=sys.stderr, flush=True)
            records.append(run_case(case, name, args.quick))
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "results": records}, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
