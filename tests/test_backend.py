"""Backend selection, info(), and import without the extension."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastseg
from fastseg import backend
from fastseg.ops.nms import NMS_IMPLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=300)


def test_use_backend_forces_and_restores(monkeypatch):
    monkeypatch.delenv("FASTSEG_BACKEND", raising=False)
    assert fastseg.current_backend() == "auto"
    with fastseg.use_backend("torch"):
        assert fastseg.current_backend() == "torch"
        assert backend.select("nms", torch.device("cpu"), NMS_IMPLS)[0] == "torch"
        with fastseg.use_backend("native"):
            assert backend.select("nms", torch.device("cpu"), NMS_IMPLS)[0] == "native"
        assert fastseg.current_backend() == "torch"
    assert fastseg.current_backend() == "auto"


def test_forced_backend_is_the_one_that_runs(monkeypatch):
    calls = []
    impls = {name: (lambda name: lambda *a: calls.append(name))(name) for name in ("native", "triton", "torch")}
    for name in ("native", "torch"):
        with fastseg.use_backend(name):
            backend.select("nms", torch.device("cpu"), impls)[1]()
    assert calls == ["native", "torch"]


def test_env_variable_forces_backend(monkeypatch):
    monkeypatch.setenv("FASTSEG_BACKEND", "torch")
    assert backend.select("nms", torch.device("cpu"), NMS_IMPLS)[0] == "torch"
    with fastseg.use_backend("native"):  # the context manager wins over the environment
        assert backend.select("nms", torch.device("cpu"), NMS_IMPLS)[0] == "native"
    monkeypatch.setenv("FASTSEG_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="FASTSEG_BACKEND: unknown backend 'cuda-magic'"):
        fastseg.current_backend()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with fastseg.use_backend("fast"):
            pass


def test_auto_picks_native_on_cpu():
    assert backend.auto_choice("nms", "cpu", NMS_IMPLS) == "native"


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    boxes, scores = torch.rand(3, 4), torch.rand(3)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastseg.use_backend("triton"), pytest.raises(fastseg.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        fastseg.ops.nms(boxes, scores, 0.5)
    monkeypatch.setattr(fastseg._extension, "_C", None)
    monkeypatch.setattr(fastseg._extension, "error", "ImportError: simulated")
    with fastseg.use_backend("native"), pytest.raises(fastseg.BackendUnavailableError, match="simulated"):
        fastseg.ops.nms(boxes, scores, 0.5)
    # auto falls back to the reference and still answers
    assert fastseg.ops.nms(boxes, scores, 0.5).numel() >= 1


def test_native_on_a_device_it_cannot_run():
    reason = backend.unavailable_reason("native", torch.device("meta"))
    assert reason is not None and "meta" in reason
    if not torch.cuda.is_available() and not fastseg._extension.with_cuda():
        assert "without its CUDA kernels" in backend.unavailable_reason("native", torch.device("cuda"))


def test_import_without_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings\n"
        "sys.modules['fastseg._C'] = None  # makes `from fastseg import _C` raise ImportError\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastseg, fastseg.ops\n"
        "    import importlib; importlib.reload(fastseg.ops)\n"
        "import torch\n"
        "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]])\n"
        "print(len([x for x in w if 'fastseg._C' in str(x.message)]), fastseg.ops.nms(b, torch.tensor([.1, .9]), .5).tolist(),\n"
        "      fastseg.info()['extension']['loaded'])\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "[1]", "False"]


def test_info_describes_the_install():
    d = fastseg.info()
    assert d["extension"]["loaded"] is True
    # Every registered op has its CPU kernel (other op families add theirs to the dict).
    assert d["extension"]["cpu_kernels"]["nms"] and d["extension"]["cpu_kernels"]["batched_nms"]
    assert all(d["extension"]["cpu_kernels"].values()), d["extension"]["cpu_kernels"]
    assert d["triton"]["version"]
    assert d["backends"]["cpu"]["native"] == "available"
    assert d["auto"]["cpu"]["nms"] == "native" and d["auto"]["cpu"]["batched_nms"] == "native"
    json.dumps(d)  # plain data


def test_python_m_fastseg_info():
    out = run_python("import runpy, sys; sys.argv = ['fastseg', 'info']; runpy.run_module('fastseg', run_name='__main__')")
    assert out.returncode == 0, out.stderr
    assert "extension:" in out.stdout and "cpu_kernels:" in out.stdout and "triton:" in out.stdout


def test_import_fastseg_exposes_ops_and_nn():
    # torch-style: `import fastseg` alone gives fastseg.ops.X and fastseg.nn.X (a drop-in for torch.nn.X).
    out = run_python("import fastseg; print(fastseg.nn.ConvTranspose2d.__name__, fastseg.nn.init.bilinear_.__name__,"
                     " fastseg.nn.MaxUnpool2d.__name__, fastseg.ops.conv_transpose2d.__name__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ConvTranspose2d", "bilinear_", "MaxUnpool2d", "conv_transpose2d"]
