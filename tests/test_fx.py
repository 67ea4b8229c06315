"""torch.fx.symbolic_trace of models built on fastseg: every op called on traced values is one node of the
graph (as torchvision's ops are), and the traced module gives the eager results."""
import pytest
import torch
import torch.fx
import torch.nn.functional as F

import fastseg
import fastseg.nn

BOXES = torch.tensor([[0., 0., 5., 5.], [1., 1., 6., 5.], [2., 0., 7., 7.], [4., 4., 7., 6.]])
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6])
IDXS = torch.tensor([0, 0, 1, 1])
X = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

# op name -> (tensor arguments: the traced inputs, the other arguments)
CALLS = {
    "nms": ((BOXES, SCORES), (0.5,)),
    "batched_nms": ((BOXES, SCORES, IDXS), (0.5,)),
    "soft_nms": ((BOXES, SCORES), ()),
    "batched_soft_nms": ((BOXES, SCORES, IDXS), ()),
    "roi_align": ((X, BOXES), (3, 0.5, 2)),
    "roi_pool": ((X, BOXES), (3, 0.5)),
    "grid_anchors": ((BOXES,), ([(3, 2)], [(8, 8)])),
    "box_decode": ((BOXES * 0.1, BOXES), ((10.0, 10.0, 5.0, 5.0), 4.0)),
    "box_encode": ((BOXES, BOXES + 1), ((1.0, 1.0, 1.0, 1.0),)),
    "box_iou": ((BOXES, BOXES), ()),
    "generalized_box_iou": ((BOXES, BOXES), ()),
    "distance_box_iou": ((BOXES, BOXES), ()),
    "complete_box_iou": ((BOXES, BOXES), ()),
    "box_area": ((BOXES,), ()),
    "clip_boxes_to_image": ((BOXES,), ((6, 6),)),
    "remove_small_boxes": ((BOXES,), (4.5,)),
    "box_convert": ((BOXES,), ("xyxy", "cxcywh")),
    "sigmoid_focal_loss": ((SCORES.view(2, 2), torch.tensor([[1., 0.], [0., 1.]])), ()),
    "sigmoid_focal_loss_with_labels": ((SCORES.view(2, 2), torch.tensor([1, 0])), ()),
    "conv_transpose2d": ((X, torch.randn(4, 3, 2, 2)), (None, 2)),
    "max_unpool2d": (F.max_pool2d(X, 2, return_indices=True), (2,)),
}


class Call(torch.nn.Module):
    def __init__(self, name, consts):
        super().__init__()
        self.name, self.consts = name, consts

    def forward(self, a, b=None, c=None):  # fixed arity: torch.fx cannot trace *args
        tensors = tuple(t for t in (a, b, c) if t is not None)
        if self.name in ("roi_align", "roi_pool"):  # boxes as a list of tensors, as torchvision takes them
            tensors = (tensors[0], [tensors[1]])
        if self.name == "grid_anchors":  # cell anchors: a list
            tensors = ([tensors[0]],)
        return getattr(fastseg.ops, self.name)(*tensors, *self.consts)


def same(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_op_is_one_node(name):
    tensors, consts = CALLS[name]
    module = Call(name, consts)
    traced = torch.fx.symbolic_trace(module, concrete_args={k: None for k in "bc"[len(tensors) - 1:]})
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert getattr(fastseg.ops, name) in targets, traced.code
    assert same(traced(*tensors), module(*tensors))


def test_every_public_op_is_covered():
    modules = ("RoIAlign", "RoIPool", "MultiScaleRoIAlign", "AnchorGenerator", "BoxCoder", "MaxUnpool2d",
               "anchors_for", "empty_cache", "ArgumentError")
    assert set(fastseg.ops.__all__) - set(modules) == set(CALLS)


class Decoder(torch.nn.Module):
    """DeconvNet / U-Net-like layers of fastseg.nn, and RoI heads: torch.fx traces into fastseg's modules
    (they are not torch.nn's leaves) and records their ops as nodes."""

    def __init__(self):
        super().__init__()
        self.unpool = fastseg.nn.MaxUnpool2d(2)
        self.up = fastseg.nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.align = fastseg.ops.RoIAlign(3, 0.5, 2)
        self.pool = fastseg.ops.RoIPool(3, 0.5)

    def forward(self, x, boxes):
        p, i = F.max_pool2d(x, 2, return_indices=True)
        return self.up(self.unpool(p, i)).relu(), self.align(x, [boxes]) + self.pool(x, [boxes])


def test_modules_trace():
    model = Decoder()
    traced = torch.fx.symbolic_trace(model)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    for op in ("max_unpool2d", "conv_transpose2d", "roi_align", "roi_pool"):
        assert getattr(fastseg.ops, op) in targets, traced.code
    assert same(traced(X, BOXES), model(X, BOXES))
    traced(X, BOXES)[0].sum().backward()  # the graph's calls stay differentiable
    assert model.up.weight.grad is not None


class Pooler(torch.nn.Module):
    def __init__(self, ops):
        super().__init__()
        self.pool = ops.MultiScaleRoIAlign(["p2", "p3"], 3, 2)

    def forward(self, p2, p3, boxes):
        return self.pool({"p2": p2, "p3": p3}, [boxes], [(64, 64)])


def test_multi_scale_roi_align_traces_like_torchvisions():
    torchvision = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(0)
    p2, p3 = torch.rand(1, 5, 32, 32, generator=g), torch.rand(1, 5, 16, 16, generator=g)
    boxes = torch.rand(6, 4, generator=g) * 30
    boxes[:, 2:] += boxes[:, :2]
    ours = Pooler(fastseg.ops)
    traced = torch.fx.symbolic_trace(ours)
    assert ours.pool.scales is None  # the trace leaves no Proxy in the module
    assert torch.equal(traced(p2, p3, boxes), ours(p2, p3, boxes))
    torch.testing.assert_close(traced(p2, p3, boxes), Pooler(torchvision.ops)(p2, p3, boxes))
    assert ours.pool.scales == [0.5, 0.25]
