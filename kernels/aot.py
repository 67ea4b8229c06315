"""Compile the Triton kernels for a GPU on a machine without one.

The interpreter (``TRITON_INTERPRET=1``) runs the kernels' arithmetic on the CPU but never Triton's GPU
compiler, where a ``tl.dot`` shape or dtype, a layout conversion or a constexpr branch can still fail.
``record()`` notes each kernel launch the interpreter runs (kernel, argument types, constexpr values and
launch options); ``compile_launches`` compiles each distinct one with the GPU compiler down to a cubin
for a chosen architecture. That needs ptxas, which ships with Triton, and no GPU, but a process where
Triton was imported without the interpreter: run it as

    python -m fastseg.kernels.aot launches.json --arch 90

(tests/test_triton_aot.py records the launches of every Triton op and does so for Hopper.)
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import sys
import time

import torch

# launch keywords that are compiler options, not kernel arguments
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion")
_POINTEE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
            torch.int8: "i8", torch.uint8: "u8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
            torch.bool: "i1"}


def _arg_type(name: str, value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _POINTEE[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"aot: argument {name} of type {type(value).__name__} has no Triton type here")


def _encode(value):
    """A constexpr value as JSON: triton dtypes by name."""
    import triton.language as tl

    return {"tl.dtype": value.name} if isinstance(value, tl.dtype) else value


def _decode(value):
    import triton.language as tl

    return tl.dtype(value["tl.dtype"]) if isinstance(value, dict) else value


def describe(fn, args, kwargs) -> dict:
    """One launch of the Python kernel function `fn`: its module and name, the Triton type of each
    runtime argument, the value of each constexpr, and the compiler options passed at launch."""
    from triton.runtime.jit import _normalize_ty

    sig = inspect.signature(fn)
    bound = sig.bind(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
    bound.apply_defaults()
    signature, constexprs = {}, {}
    for name, value in bound.arguments.items():
        if _normalize_ty(sig.parameters[name].annotation) == "constexpr" or value is None:
            signature[name] = "constexpr"
            constexprs[name] = _encode(value)
        else:
            signature[name] = _arg_type(name, value)
    return {"module": fn.__module__, "kernel": fn.__name__, "signature": signature, "constexprs": constexprs,
            "options": {k: kwargs[k] for k in _OPTIONS if k in kwargs}}


@contextlib.contextmanager
def record():
    """Collect the distinct kernel launches run by the interpreter inside the block (a list, filled as
    they run)."""
    from triton.runtime.interpreter import InterpretedFunction

    launches, seen = [], set()
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        launch = describe(self.fn, args, kwargs)
        key = json.dumps(launch, sort_keys=True)
        if key not in seen:
            seen.add(key)
            launches.append(launch)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = original


def compile_launches(launches: list[dict], arch: int) -> list[str]:
    """Compile each launch for ``sm_<arch>``; the failures, one line each (empty: all compiled)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    target = GPUTarget("cuda", arch, 32)
    failures = []
    for launch in launches:
        fn = getattr(importlib.import_module(launch["module"]), launch["kernel"])
        name = f"{launch['module']}.{launch['kernel']}"
        if not isinstance(fn, JITFunction):
            raise RuntimeError(f"aot: {name} is not a JIT function here: run without TRITON_INTERPRET=1")
        constexprs = {k: _decode(v) for k, v in launch["constexprs"].items()}
        try:
            triton.compile(ASTSource(fn, launch["signature"], constexprs), target=target,
                           options=launch["options"])
        except Exception as exc:  # noqa: BLE001 - every compiler error is a finding, reported by kernel
            detail = str(exc).strip().splitlines()
            failures.append(f"{name} {constexprs}: {type(exc).__name__}: {detail[-1] if detail else ''}")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastseg.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("launches", help="JSON list written from record()")
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 90)")
    args = parser.parse_args(argv)
    with open(args.launches) as f:
        launches = json.load(f)
    failed = False
    for arch in args.arch or [90]:
        start = time.perf_counter()
        failures = compile_launches(launches, arch)
        kernels = len({(x["module"], x["kernel"]) for x in launches})
        print(f"sm_{arch}: {len(launches) - len(failures)} of {len(launches)} launches of {kernels} kernels "
              f"compiled in {time.perf_counter() - start:.0f} s")
        for line in failures:
            print("  FAILED", line)
        failed |= bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
