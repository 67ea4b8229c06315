"""Every Triton kernel compiles for Hopper (sm_90) with the GPU compiler, here, without a GPU.

The other tests run the kernels in the interpreter, which checks their arithmetic but never the GPU
compiler. This one runs each Triton op on small inputs in every dtype it takes (forward and backward),
records the launches (fastseg/kernels/aot.py), and compiles each distinct one to a cubin for sm_90 in a
process without the interpreter.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastseg
from conftest import require_backend


def run_every_triton_op():
    """Each Triton op once per dtype and per constexpr variant that its launches take."""
    ops = fastseg.ops
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(40, 4, generator=g) * 30
    boxes[:, 2:] += boxes[:, :2] + 1
    scores, idxs = torch.rand(40, generator=g), torch.randint(0, 3, (40,), generator=g)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        b, s = boxes.to(dtype), scores.to(dtype)
        for box_op in (ops.box_iou, ops.generalized_box_iou, ops.distance_box_iou, ops.complete_box_iou):
            box_op(b, b[:7])
        ops.box_area(b), ops.box_convert(b, "xyxy", "cxcywh"), ops.clip_boxes_to_image(b, (20, 25))
        ops.remove_small_boxes(b, 2.0)
        ops.box_decode(ops.box_encode(b, b.flip(0), (10.0, 10.0, 5.0, 5.0)), b.flip(0), (10.0, 10.0, 5.0, 5.0),
                       4.135, image_size=(40, 50))
        ops.nms(b, s, 0.5), ops.batched_nms(b, s, idxs, 0.5)
        ops.soft_nms(b, s), ops.batched_soft_nms(b, s, idxs, method="linear")
        ops.grid_anchors([torch.tensor([[-8.0, -8, 8, 8], [-16, -8, 16, 8]], dtype=dtype)], [(3, 4)], [(8, 8)])

        x = torch.randn(2, 4, 9, 9, generator=g).to(dtype).requires_grad_()
        rois = torch.tensor([[0, 1.0, 1, 7, 6], [1, 0.5, 2, 8, 8]], dtype=dtype)
        for aligned, ratio, mode in ((False, -1, "avg"), (True, 2, "avg"), (True, 2, "max")):
            ops.roi_align(x, rois, 3, 1.0, ratio, aligned, pool_mode=mode).sum().backward()
        ops.roi_pool(x, rois, 3, 1.0).sum().backward()
        pooled, switches = torch.nn.functional.max_pool2d(x.detach().float(), 2, return_indices=True)
        ops.max_unpool2d(pooled.to(dtype), switches, 2, output_size=(9, 9))

        logits = torch.randn(6, 5, generator=g).to(dtype).requires_grad_()
        targets = (torch.rand(6, 5, generator=g) > 0.7).to(dtype)
        for reduction in ("none", "mean", "sum"):
            ops.sigmoid_focal_loss(logits, targets, reduction=reduction).sum().backward()
        ops.sigmoid_focal_loss_with_labels(logits, torch.randint(-1, 5, (6,), generator=g)).backward()

        w = (torch.randn(4, 3, 2, 2, generator=g) / 4).to(dtype).requires_grad_()
        w3 = (torch.randn(4, 3, 3, 3, generator=g) / 6).to(dtype).requires_grad_()
        bias = torch.randn(3, generator=g).to(dtype).requires_grad_()
        ops.conv_transpose2d(x, w, bias, stride=2).sum().backward()                        # U-Net k2 s2
        ops.conv_transpose2d(x, w3, None, 1, 1, activation="relu").sum().backward()        # DeconvNet k3 s1 p1
        ops.conv_transpose2d(x, w3, bias, (2, 1), 1, (1, 0), 1, (1, 2)).sum().backward()  # odd strides, dilation


def test_every_triton_kernel_compiles_for_hopper(tmp_path):
    """The interpreter's workarounds are constexpr branches on kernels/_interpreter.py's INTERPRETED,
    False in the compiling process: the launches recorded here compile as a GPU compiles them."""
    require_backend("triton", "cpu")
    from fastseg.kernels import aot

    with fastseg.use_backend("triton"), aot.record() as launches:
        run_every_triton_op()
    kernels = {(x["module"], x["kernel"]) for x in launches}
    modules = {m for m, _ in kernels}
    expected = {f"fastseg.kernels.{f[:-3]}" for f in os.listdir(os.path.dirname(aot.__file__))
                if f.endswith(".py") and f not in ("__init__.py", "aot.py", "_interpreter.py")}
    assert modules == expected, f"no launch recorded from {sorted(expected - modules)}"
    path = tmp_path / "launches.json"
    path.write_text(json.dumps(launches))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fastseg.kernels.aot", str(path), "--arch", "90"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(launches)} of {len(launches)} launches" in done.stdout, done.stdout


def test_record_describes_types_and_constexprs():
    """The recorder's view of one launch: pointer types from the tensors' dtypes, constexpr values kept
    (triton dtypes by name), compiler options apart."""
    pytest.importorskip("triton")
    import triton.language as tl

    from fastseg.kernels import aot

    def kernel(x_ptr, n, scale, flag, ACC: tl.constexpr, BLOCK: tl.constexpr, maybe=None):
        pass

    launch = aot.describe(kernel, (torch.zeros(2, dtype=torch.bfloat16), 5, 0.5, True),
                          dict(ACC=tl.float64, BLOCK=64, num_warps=8))
    assert launch["signature"] == {"x_ptr": "*bf16", "n": "i32", "scale": "fp32", "flag": "i1",
                                   "ACC": "constexpr", "BLOCK": "constexpr", "maybe": "constexpr"}
    assert launch["constexprs"] == {"ACC": {"tl.dtype": "fp64"}, "BLOCK": 64, "maybe": None}
    assert launch["options"] == {"num_warps": 8}
    assert aot._decode(launch["constexprs"]["ACC"]) == tl.float64
