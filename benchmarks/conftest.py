"""pytest-benchmark view of the suite in fastseg/bench: the same cases, one test per case and
implementation (each fastseg backend that can run here, and the peer), each asserting its result
against the peer's before it is timed. Run: `make bench-pytest` (or `pytest benchmarks`)."""
import itertools
import time

import pytest
import torch

import fastseg
from fastseg import backend
from fastseg.bench import suites
from fastseg.bench._core import sync


def params(family: str, quick: bool = True):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for device in devices:
        for case in suites()[family](device, quick):
            impls = [b for b in case.impls if backend.unavailable_reason(b, torch.device(device)) is None
                     and not (device == "cpu" and b == "triton")]  # the interpreter: tests, not timings
            dtype = str(case.dtype).replace("torch.", "")
            for impl in impls + ["peer"]:
                name = case.peer_name if impl == "peer" else f"fastseg-{impl}"
                out.append(pytest.param(case, impl, id=f"{case.op}-{case.size}-{dtype}-{device}-{name}"))
    return out


def bench_case(benchmark, case, impl):
    def fast(*args):
        with fastseg.use_backend("auto" if impl == "peer" else impl):
            return case.fastseg(*args)

    fn = case.peer if impl == "peer" else fast
    inputs = [case.make(seed) for seed in range(3)]
    start = time.perf_counter()
    out = fn(*inputs[0])
    sync(case.device)
    slow = time.perf_counter() - start > 0.5  # the reference at large sizes: fewer rounds
    case.check(fast(*inputs[0]) if impl == "peer" else out, case.peer(*inputs[0]), inputs[0])  # correct before timed
    rotation = itertools.cycle(inputs)  # rotate inputs so caches do not flatter memory-bound kernels

    def timed(*args):
        out = fn(*args)
        sync(case.device)
        return out

    benchmark.extra_info.update(op=case.op, shape=case.shape, device=case.device, peer=case.peer_name)
    benchmark.pedantic(timed, setup=lambda: (next(rotation), {}), rounds=3 if slow else 7, warmup_rounds=0 if slow else 1)
