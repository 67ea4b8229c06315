"""What the kernels do differently under Triton's CPU interpreter, compiled away everywhere else.

``INTERPRETED`` is fixed when this module is imported, as Triton fixes interpreter or compiler when it is
imported (``TRITON_INTERPRET=1`` must be set before). The GPU compiler sees ``INTERPRETED == False`` and
drops these branches; the interpreter takes them, so the CPU tests see the values a GPU computes.
"""
import triton
import triton.language as tl

from fastseg.backend import triton_interpreting

INTERPRETED = tl.constexpr(triton_interpreting())


@triton.jit
def cast(x, T: tl.constexpr):
    """fp32 ``x`` converted to ``T``. The interpreter truncates fp32 -> bf16 (1 + 2^-8 + 2^-10 -> 1.0)
    where compiled Triton and PyTorch round to nearest even, so there bf16 is rounded by hand first
    (NaN left alone; a value above bf16's largest rounds to inf, as the hardware's conversion does)."""
    if INTERPRETED and T == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(T)
