"""max_unpool2d: every backend against torch.nn.functional.max_unpool2d (values, memory format, gradient),
fastseg.nn.MaxUnpool2d against torch.nn.MaxUnpool2d, bad input."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastseg
import fastseg.nn
from conftest import DEVICES, require_backend


def pooled(n, c, h, w, kernel, stride, padding, channels_last=False, dtype=torch.float32, device="cpu", seed=0):
    """Values and switches of a max pooling of a random map, as DeconvNet records them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    values, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    return values.to(device, dtype), indices.to(device)


def run(backend_name, *args, **kwargs):
    with fastseg.use_backend(backend_name):
        return fastseg.ops.max_unpool2d(*args, **kwargs)


@st.composite
def configs(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(all(n + 2 * p >= k for n, p, k in zip((h, w), padding, kernel)))
    return dict(n=draw(st.integers(0, 2)), c=draw(st.integers(1, 4)), h=h, w=w, kernel=kernel, stride=stride,
                padding=padding, channels_last=draw(st.booleans()))


@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
def test_random_configs(backend_name):
    require_backend(backend_name, "cpu")

    @settings(max_examples=25 if backend_name == "triton" else 100, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(cfg=configs(), grow=st.tuples(st.integers(0, 2), st.integers(0, 2)))
    def body(cfg, grow):
        x, idx = pooled(**cfg)
        k, s, p = cfg["kernel"], cfg["stride"], cfg["padding"]
        default = [(n - 1) * st_ + kk - 2 * pp for n, st_, kk, pp in zip(x.shape[2:], s, k, p)]
        size = [d + min(gr, st_ - 1) for d, gr, st_ in zip(default, grow, s)]  # the sizes PyTorch accepts
        assume(idx.numel() == 0 or idx.max() < size[0] * size[1])  # else PyTorch refuses it too (tested below)
        out = run(backend_name, x, idx, k, s, p, output_size=size)
        ref = F.max_unpool2d(x, idx, k, s, p, output_size=size)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        # PyTorch's memory format (a dimension of size 1 may have any stride: [1, 2, 1, 1] is both formats)
        assert [st_ for st_, n in zip(out.stride(), out.shape) if n > 1] == \
            [st_ for st_, n in zip(ref.stride(), ref.shape) if n > 1]
        assert torch.equal(out, ref)

    body()


@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtypes_and_poisoned_memory(backend_name, dtype, channels_last):
    """Every element written (NaN-poisoned allocations), for each dtype PyTorch unpools."""
    require_backend(backend_name, "cpu")
    x, idx = pooled(2, 5, 9, 12, 2, 2, 0, channels_last, torch.float64)
    x = (x * 100).to(dtype)
    expected = F.max_unpool2d(x, idx, 2)  # (PyTorch's kernel refuses deterministic mode)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        out = run(backend_name, x, idx, 2)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(out, expected)


def test_native_duplicate_indices_keep_pytorchs_last_write():
    """Two values with one index in a plane: the later (in h, w order) wins on the CPU, as in PyTorch."""
    x = torch.arange(1.0, 13.0).reshape(1, 2, 2, 3)
    idx = torch.tensor([[[[0, 5, 0], [7, 5, 2]], [[1, 1, 1], [3, 4, 3]]]])
    out = run("native", x, idx, 2, output_size=(4, 6))
    assert torch.equal(out, F.max_unpool2d(x, idx, 2, output_size=(4, 6)))
    assert out[0, 0].flatten()[0] == 3 and out[0, 1].flatten()[1] == 9


@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
def test_unbatched_and_empty(backend_name):
    require_backend(backend_name, "cpu")
    x, idx = pooled(1, 3, 6, 4, 2, 2, 0)
    assert torch.equal(run(backend_name, x[0], idx[0], 2), F.max_unpool2d(x[0], idx[0], 2))
    x, idx = pooled(0, 3, 6, 4, 2, 2, 0)
    out = run(backend_name, x, idx, 2)
    assert out.shape == (0, 3, 6, 4)


@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_empty_output_plane(backend_name, create_graph):
    """An output plane with no rows is written nothing and checks no index, as PyTorch's forward; the
    gradient is zero (PyTorch's backward raises an out-of-bounds gather there)."""
    require_backend(backend_name, "cpu")
    x = torch.randn(2, 3, 1, 3, requires_grad=True)
    idx = torch.randint(0, 10, x.shape)
    out = run(backend_name, x, idx, (2, 3), None, (1, 0))
    ref = F.max_unpool2d(x, idx, (2, 3), None, (1, 0))
    assert out.shape == ref.shape == (2, 3, 0, 9) and out.stride() == ref.stride()
    empty_batch = run(backend_name, x[:0], idx[:0], (2, 3), None, (1, 0))
    assert empty_batch.stride() == F.max_unpool2d(x[:0], idx[:0], (2, 3), None, (1, 0)).stride()
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=create_graph)
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradient(backend_name, channels_last):
    """The gradient is the output gradient at each value's index (PyTorch's); fp64 gradcheck."""
    require_backend(backend_name, "cpu")
    dtype = torch.float32 if backend_name == "triton" else torch.float64
    x, idx = pooled(2, 3, 7, 8, 3, 2, 1, channels_last, dtype)
    xg = x.clone().requires_grad_()
    out = run(backend_name, xg, idx, 3, 2, 1, output_size=(7, 8))
    grad = torch.randn(out.shape, dtype=dtype)
    (got,) = torch.autograd.grad(out, xg, grad)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(F.max_unpool2d(xr, idx, 3, 2, 1, output_size=(7, 8)), xr, grad)
    assert torch.equal(got, want)
    if dtype == torch.float64:  # non-overlapping windows: overlapping ones repeat an index, whose value is
        # written once but whose gradient (a gather, PyTorch's formula) reaches every copy
        x, idx = pooled(2, 3, 6, 8, 2, 2, 0, channels_last, dtype)
        torch.autograd.gradcheck(lambda t: run(backend_name, t, idx, 2), (x.requires_grad_(),))
        # create_graph=True: the gradient is itself differentiable (double backward)
        torch.autograd.gradgradcheck(lambda t: run(backend_name, t, idx, 2), (x,))


BAD = [
    (dict(x=[1.0]), "input must be a torch.Tensor, got list"),
    (dict(idx=None), "indices must be a torch.Tensor, got NoneType"),
    (dict(x=torch.randn(2, 3)), "input must be a 3-D"),
    (dict(idx=torch.zeros(1, 2, 3, 3, dtype=torch.int64)), r"indices must have the shape of input \[1, 2, 3, 4\]"),
    (dict(idx=torch.zeros(1, 2, 3, 4, dtype=torch.int32)), "indices must be int64, got torch.int32"),
    (dict(kernel=0), "kernel_size must be >= 1, got 0"),
    (dict(stride=(1, 2, 3)), r"stride must be an int or a pair of ints, got \(1, 2, 3\)"),
    (dict(padding=-1), "padding must be >= 0, got -1"),
    (dict(output_size=(9, 8)), r"output_size \[9, 8\] must lie strictly between 4 and 8 in dimension 0"),
    (dict(output_size=(1, 2, 3)), r"output_size must be \(H_out, W_out\)"),
    (dict(x=torch.randn(0, 2, 3, 4), idx=torch.zeros(0, 2, 3, 4, dtype=torch.int64), output_size=(-1, 8)),
     r"output_size must be >= 0, got \(-1, 8\)"),
    (dict(x=torch.ones(1, 2, 3, 4, dtype=torch.int64)), "input must be a floating-point tensor, got torch.int64"),
    (dict(idx=torch.full((1, 2, 3, 4), 48, dtype=torch.int64)), r"indices must lie in \[0, H_out \* W_out\)"),
    (dict(idx=torch.full((1, 2, 3, 4), -1, dtype=torch.int64)), r"indices must lie in \[0, H_out \* W_out\)"),
]


@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
@pytest.mark.parametrize("bad,match", BAD)
def test_bad_input(backend_name, bad, match):
    require_backend(backend_name, "cpu")
    x, idx = pooled(1, 2, 6, 8, 2, 2, 0)
    args = dict(x=x, idx=idx, kernel=2, stride=None, padding=0, output_size=None)
    args.update(bad)
    with pytest.raises(RuntimeError, match=match) as err:  # what PyTorch raises (ValueError for output_size)
        run(backend_name, args["x"], args["idx"], args["kernel"], args["stride"], args["padding"], args["output_size"])
    if "indices must lie" not in match:  # the native kernel's own index check raises a plain RuntimeError
        assert isinstance(err.value, fastseg.ops.ArgumentError) and isinstance(err.value, ValueError)


def test_native_op_checks_directly():
    x, idx = pooled(1, 2, 6, 8, 2, 2, 0)
    with pytest.raises(RuntimeError, match="indices must be int64"):
        torch.ops.fastseg.max_unpool2d(x, idx.int(), [6, 8])
    with pytest.raises(RuntimeError, match=r"indices must lie in \[0, H_out \* W_out\) of the 2 x 2"):
        torch.ops.fastseg.max_unpool2d(x, idx, [2, 2])
    with pytest.raises(RuntimeError, match=r"indices must lie in \[0, H_out \* W_out\) of the 2 x 2"):
        torch.ops.fastseg.max_unpool2d_backward(torch.ones(1, 2, 2, 2), idx)
    with pytest.raises(RuntimeError, match="grad_output must be \\[N, C, H_out, W_out\\]"):
        torch.ops.fastseg.max_unpool2d_backward(torch.ones(1, 3, 6, 8), idx)


def test_module_is_a_drop_in():
    x, idx = pooled(2, 3, 8, 6, 2, 2, 0)
    ours, theirs = fastseg.nn.MaxUnpool2d(2), torch.nn.MaxUnpool2d(2)
    assert repr(ours).replace("MaxUnpool2d", "") == repr(theirs).replace("MaxUnpool2d", "")
    assert torch.equal(ours(x, idx, output_size=[9, 7]), theirs(x, idx, output_size=[9, 7]))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, but still used
def test_module_scripts_like_torchs():
    """torch.jit.script takes MaxUnpool2d as it takes torch's: the native op, same output sizes."""
    require_backend("native", "cpu")
    x, idx = pooled(2, 3, 7, 6, (3, 2), (2, 1), (1, 0))
    ours, theirs = fastseg.nn.MaxUnpool2d((3, 2), (2, 1), (1, 0)), torch.nn.MaxUnpool2d((3, 2), (2, 1), (1, 0))
    scripted = torch.jit.script(ours)
    for args in ((x, idx, [7, 6]), (x[0], idx[0], [7, 6]), (x, idx)):
        assert torch.equal(scripted(*args), theirs(*args))
    with pytest.raises(torch.jit.Error, match="invalid output_size"):  # F.max_unpool2d's check, as for torch's
        scripted(x, idx, [20, 20])


@pytest.mark.parametrize("backend_name", ["native", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_policy_is_torchs(backend_name, dtype):
    """CPU autocast runs F.max_unpool2d in fp32 (its fp32 list): so does ours, gradient included."""
    require_backend(backend_name, "cpu")
    x, idx = pooled(2, 3, 8, 6, 2, 2, 0)
    x = x.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype), fastseg.use_backend(backend_name):
        got, want = fastseg.ops.max_unpool2d(x, idx, 2), F.max_unpool2d(x, idx, 2)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(got, want)
    (gx,) = torch.autograd.grad(got.sum(), x)
    assert gx.dtype == dtype and torch.equal(gx, torch.autograd.grad(want.sum(), x)[0])


def test_opcheck_native():
    x, idx = pooled(2, 3, 6, 5, 2, 2, 0)
    torch.library.opcheck(torch.ops.fastseg.max_unpool2d.default, (x.requires_grad_(), idx, [6, 5]))
    xc, ic = pooled(2, 3, 6, 5, 2, 2, 0, channels_last=True)
    torch.library.opcheck(torch.ops.fastseg.max_unpool2d.default, (xc, ic, [6, 5]))


def test_opcheck_triton():
    require_backend("triton", "cpu")
    from fastseg.kernels import max_unpool2d as k  # noqa: F401  (registers fastseg_triton::*)

    x, idx = pooled(2, 3, 6, 5, 2, 2, 0)
    torch.library.opcheck(torch.ops.fastseg_triton.max_unpool2d.default, (x.requires_grad_(), idx, [6, 5]))


@pytest.mark.parametrize("backend_name", ["native", "triton"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_device(backend_name, device, channels_last):
    require_backend(backend_name, device)
    for dtype in (torch.float32, torch.bfloat16):
        x, idx = pooled(2, 16, 30, 26, 2, 2, 0, channels_last, dtype, device)
        xg = x.clone().requires_grad_()
        out = run(backend_name, xg, idx, 2)
        assert torch.equal(out, F.max_unpool2d(x, idx, 2))
        (g,) = torch.autograd.grad(out, xg, torch.ones_like(out))
        assert torch.equal(g, torch.ones_like(x))
        with pytest.raises((ValueError, RuntimeError), match="indices must lie in"):
            run(backend_name, x, torch.full_like(idx, 10**6), 2)


def test_torch_compile():
    torch._dynamo.reset()
    x, idx = pooled(2, 3, 6, 8, 2, 2, 0)

    @torch.compile
    def f(x, idx):
        return fastseg.ops.max_unpool2d(x, idx, 2) * 2

    xg = x.clone().requires_grad_()
    out = f(xg, idx)
    assert torch.equal(out, F.max_unpool2d(x, idx, 2) * 2)
    (g,) = torch.autograd.grad(out.sum(), xg)
    assert torch.equal(g, torch.full_like(x, 2.0))
