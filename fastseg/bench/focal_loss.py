"""Focal-loss cases of the benchmark suite: forward + backward, fastseg vs torchvision.

Each timed call is a whole training step of the loss: forward, then backward to the logits' gradient.
``python -m fastseg.bench.focal_loss --memory`` also measures the peak extra memory of one forward +
backward of each (see ``peak_extra_memory``).
"""
import argparse
import os
import subprocess
import sys

import torch

import fastseg
from fastseg.bench import Case
from fastseg.ops.sigmoid_focal_loss import SIGMOID_FOCAL_LOSS_IMPLS, SIGMOID_FOCAL_LOSS_WITH_LABELS_IMPLS

ROWS, CLASSES = 200_000, 80  # RetinaNet-like: ~200k anchors x 80 COCO classes


def make_inputs(seed, rows=ROWS, classes=CLASSES, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=g) * 3).to(device, dtype)
    labels = torch.randint(0, classes + 1, (rows,), generator=g)  # classes = background
    labels[torch.rand(rows, generator=g) < 0.9] = classes  # most anchors are background
    labels[torch.rand(rows, generator=g) < 0.05] = -1  # some ignored
    targets = torch.zeros(rows, classes + 1)
    targets[torch.arange(rows), labels.clamp(min=0)] = 1
    targets = targets[:, :classes].contiguous().to(device, dtype)
    return logits, targets, labels.to(device)


def _backward(loss, then_sum=False):
    """The incoming gradient of a step: a materialised tensor of ones (the caller weights each element),
    or, with ``then_sum``, ``loss.sum().backward()`` (the caller reduces: the gradient is one broadcast
    value)."""
    if then_sum:
        loss.sum().backward()
    else:
        loss.backward(torch.ones_like(loss))


def fastseg_step(logits, targets, reduction, then_sum=False):
    x = logits.detach().requires_grad_()
    _backward(fastseg.ops.sigmoid_focal_loss(x, targets, 0.25, 2.0, reduction), then_sum)
    return x.grad


def torchvision_step(logits, targets, reduction, then_sum=False):
    import torchvision

    x = logits.detach().requires_grad_()
    _backward(torchvision.ops.sigmoid_focal_loss(x, targets, 0.25, 2.0, reduction), then_sum)
    return x.grad


def fastseg_labels_step(logits, labels, normalizer):
    x = logits.detach().requires_grad_()
    fastseg.ops.sigmoid_focal_loss_with_labels(x, labels, 0.25, 2.0, normalizer, -1, "sum").backward()
    return x.grad


def torchvision_labels_step(logits, labels, normalizer):
    """What a RetinaNet head does with torchvision: one-hot targets, mask, loss, divide."""
    import torchvision

    x = logits.detach().requires_grad_()
    valid = labels >= 0
    targets = torch.zeros_like(x)
    pos = valid & (labels < x.shape[1])
    targets[pos, labels[pos]] = 1
    loss = torchvision.ops.sigmoid_focal_loss(x[valid], targets[valid], 0.25, 2.0, "sum") / normalizer
    loss.backward()
    return x.grad


def _close_grads(out, expected, inputs):
    tol = 2e-2 if out.dtype in (torch.float16, torch.bfloat16) else 1e-4
    scale = float(expected.abs().max()) or 1.0
    err = float((out.float() - expected.float()).abs().max())
    if not err <= tol * scale:
        raise AssertionError(f"fastseg and torchvision gradients differ by {err} (max |grad| {scale})")


def cases(device: str, quick: bool) -> list[Case]:
    rows = ROWS // 4 if quick else ROWS
    out = []
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    for dtype in dtypes:
        for reduction, then_sum in [("sum", False), ("none", False), ("none", True)]:
            # the scaling view (time against the number of rows): reduction "sum", full suite only
            for r in ([rows] if quick or reduction != "sum" else [ROWS // 16, ROWS // 4, ROWS]):
                how = ", then .sum()" if then_sum else ""
                out.append(Case(
                    "sigmoid_focal_loss", f"[{r}, {CLASSES}] fwd+bwd, {reduction}{how}", r * CLASSES, dtype,
                    device, lambda seed, dtype=dtype, reduction=reduction, r=r, then_sum=then_sum: (
                        *make_inputs(seed, r, device=device, dtype=dtype)[:2], reduction, then_sum),
                    fastseg_step, torchvision_step, "torchvision", _close_grads, SIGMOID_FOCAL_LOSS_IMPLS))

        def make_labels(seed, dtype=dtype):
            logits, _, labels = make_inputs(seed, rows, device=device, dtype=dtype)
            return logits, labels, (labels >= 0).logical_and(labels < CLASSES).sum().clamp(min=1).to(dtype)

        out.append(Case(
            "sigmoid_focal_loss_with_labels", f"[{rows}, {CLASSES}] fwd+bwd, sum / num_pos", rows * CLASSES, dtype,
            device, make_labels, fastseg_labels_step, torchvision_labels_step, "torchvision one-hot",
            _close_grads, SIGMOID_FOCAL_LOSS_WITH_LABELS_IMPLS))
    return out


# ---- peak extra memory ---------------------------------------------------------------------------------

_CHILD = r"""
import sys, torch
sys.path.insert(0, {root!r})
from fastseg.bench import focal_loss as fl
logits, targets, _ = fl.make_inputs(0)
logits.requires_grad_(False)
def rss_kb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field))
step = fl.fastseg_step if {which!r} == "fastseg" else fl.torchvision_step
small = fl.make_inputs(1, rows=64)
step(small[0], small[1], {reduction!r}, {then_sum!r})  # first-call costs (imports, caches) are not the op's
base = rss_kb("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM, the peak resident set, to the current RSS
grad = step(logits, targets, {reduction!r}, {then_sum!r})
print((rss_kb("VmHWM:") - base) * 1024)
"""


def peak_extra_memory(which: str, reduction: str, then_sum: bool = False) -> int:
    """Peak extra resident memory (bytes) of one forward + backward on [200k, 80] fp32, the gradient
    included, in a fresh process warmed up on a small input: RSS high-water mark (reset through /proc/self/clear_refs after the
    inputs exist) minus the RSS before the call. Allocator-agnostic: it counts pages touched, whoever
    allocated them (torch's CPU allocator is plain malloc, which tracemalloc does not see)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = _CHILD.format(root=root, which=which, reduction=reduction, then_sum=then_sum)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--memory", action="store_true", help="measure the peak extra memory of fwd+bwd")
    args = p.parse_args(argv)
    if args.memory:
        for reduction, then_sum in [("sum", False), ("none", False), ("none", True)]:
            tv = peak_extra_memory("torchvision", reduction, then_sum)
            fs = peak_extra_memory("fastseg", reduction, then_sum)
            how = "loss.sum().backward()" if then_sum else "loss.backward(ones)"
            print(f"[{ROWS}, {CLASSES}] fp32 fwd+bwd {reduction}, {how}: torchvision {tv / 2**20:.0f} MiB, "
                  f"fastseg {fs / 2**20:.0f} MiB ({fs / tv:.3f} of torchvision's)")


if __name__ == "__main__":
    main()
