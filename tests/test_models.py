"""Every architecture builds, trains (forward + backward, finite losses and gradients) and predicts
well-formed detections; model-specific checks of the papers' losses and matching."""
import pytest
import torch

from fastseg.data import ShapesDataset, collate
from fastseg.models import available, build, get_class
from fastseg.models import _ops

SMALL = {"retinanet": dict(fpn_channels=32, head_convs=1, anchor_sizes=(8, 16, 32, 64, 128)),
         "yolov1": dict(hidden=64), "ssd": dict(extra_channels=(64, 64, 32))}


@pytest.fixture(scope="module")
def batch():
    ds = ShapesDataset(3, 64, seed=5)
    images, targets = collate([ds[i] for i in range(3)])
    # the last image has no object at all: every loss must cope
    targets[2] = {**targets[2], "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "masks": targets[2]["masks"][:0]}
    return images, targets


def test_registry():
    assert available() == ["boxreg", "boxreg_n", "yolov1", "ssd", "retinanet"]
    with pytest.raises(ValueError, match="unknown model 'mask_rcnn'.*retinanet"):
        build("mask_rcnn", 3)
    with pytest.raises(ValueError, match="num_classes"):
        build("retinanet", 0)


def _check_detections(out, n, h, w, num_classes, max_det=100):
    assert isinstance(out, list) and len(out) == n
    for d in out:
        k = d["boxes"].shape[0]
        assert d["boxes"].shape == (k, 4) and d["boxes"].dtype == torch.float32
        assert d["scores"].shape == (k,) and d["scores"].dtype == torch.float32
        assert d["labels"].shape == (k,) and d["labels"].dtype == torch.int64
        assert k <= max_det
        if k:
            assert ((d["labels"] >= 1) & (d["labels"] <= num_classes)).all()
            assert (d["boxes"][:, 0] <= d["boxes"][:, 2]).all() and (d["boxes"][:, 1] <= d["boxes"][:, 3]).all()
            assert (d["boxes"] >= 0).all() and (d["boxes"][:, 0::2] <= w).all() and (d["boxes"][:, 1::2] <= h).all()
            assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
            assert (d["scores"][:-1] >= d["scores"][1:]).all()  # best first, as torchvision returns them


@pytest.mark.parametrize("name", available())
def test_model_trains_and_predicts(name, batch):
    torch.manual_seed(0)
    images, targets = batch
    model = build(name, 3, **SMALL.get(name, {}))
    model.train()
    losses = model(images, targets)
    assert isinstance(losses, dict) and losses
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    _check_detections(out, 3, 64, 64, 3)
    # a list of differently sized images works too, and boxes stay inside each image
    with torch.no_grad():
        out = model([images[0], images[1, :, :48, :40]])
    _check_detections(out[1:], 1, 48, 40, 3)
    with pytest.raises(ValueError, match="targets"):
        model.train()(images)


def test_models_use_fastseg_ops():
    import fastseg.ops
    from fastseg.models import retinanet

    assert _ops.batched_nms is fastseg.ops.batched_nms
    for n in ("sigmoid_focal_loss", "AnchorGenerator", "BoxCoder", "box_iou"):
        # the hot paths of the models are fastseg's own ops, not torchvision's
        assert getattr(retinanet, n) is getattr(_ops, n) is getattr(fastseg.ops, n)


def test_retinanet_structure_and_matching():
    m = build("retinanet", 3, fpn_channels=32, head_convs=1, anchor_sizes=(8, 16, 32, 64, 128))
    x = torch.rand(1, 3, 128, 128)
    feats = m._features(x)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2, 1]  # P3..P7
    assert m.cls_head.out.out_channels == 9 * 3  # 9 anchors per location
    prior = torch.sigmoid(m.cls_head.out.bias)
    torch.testing.assert_close(prior, torch.full_like(prior, 0.01))
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 12.0], [50, 50, 60, 60], [0, 0, 30, 30]])
    gt = torch.tensor([[0, 0, 10, 10.0], [49, 49, 80, 80]])
    idx, fg, valid = m.match(gt, anchors)
    # IoU 1 and 0.83 -> foreground; [50,50,60,60] has IoU 0.10 with gt 1 but is its best: low-quality match
    assert fg.tolist() == [True, True, True, False]
    assert idx[:3].tolist() == [0, 0, 1]
    assert valid.tolist() == [True, True, True, True]  # 0.11 < 0.4: background, not ignored


def test_ssd_hard_negative_mining_is_three_to_one():
    torch.manual_seed(0)
    m = build("ssd", 3, **SMALL["ssd"])
    d = 50
    dboxes = torch.rand(d, 2) * 40
    dboxes = torch.cat([dboxes, dboxes + 10], 1)
    gt = dboxes[:2].clone()
    cls = torch.randn(1, d, 4, requires_grad=True)
    box = torch.zeros(1, d, 4, requires_grad=True)
    losses = m.loss(cls, box, dboxes, [{"boxes": gt, "labels": torch.tensor([1, 2])}])
    losses["classification"].backward()
    idx, pos = m.match(gt, dboxes)
    n_pos = int(pos.sum())
    # default boxes with a gradient = positives + 3x as many negatives
    touched = (cls.grad[0].abs().sum(-1) > 0)
    assert int(touched.sum()) == 4 * n_pos
    assert touched[pos].all()


def test_yolo_loss_weights_and_responsible_predictor():
    m = build("yolov1", 2, grid=2, boxes_per_cell=2, hidden=8)
    assert m.lambda_coord == 5.0 and m.lambda_noobj == 0.5
    # hand-made predictions: object in cell (0, 0); predictor 1 overlaps it best
    box = torch.zeros(1, 2, 2, 2, 5)
    box[0, 0, 0, 0] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.3])
    box[0, 0, 0, 1] = torch.tensor([0.5, 0.5, 0.25, 0.25, 0.6])
    cls = torch.full((1, 2, 2, 2), 0.5)
    tgt = [{"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "labels": torch.tensor([2])}]  # 64x64 image
    losses = m.loss(box, cls, tgt, (64, 64))
    # predictor 1 matches exactly: no coordinate error; its confidence target is IoU 1
    assert losses["coord"] == pytest.approx(0.0, abs=1e-6)
    assert losses["obj_conf"] == pytest.approx((0.6 - 1.0) ** 2)
    assert losses["noobj_conf"] == pytest.approx(0.5 * 0.3 ** 2)
    assert losses["classification"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        get_class("yolov1")(num_classes=0)


def test_boxreg_predicts_one_box_and_n_variant_fixed_slots(batch):
    images, _ = batch
    m = build("boxreg", 3).eval()
    assert all(o["boxes"].shape == (1, 4) for o in m(images))
    mn = build("boxreg_n", 3, num_slots=3, score_thresh=0.0).eval()
    assert all(o["boxes"].shape[0] == 3 for o in mn(images))


def test_backbone_loads_local_weights_only(tmp_path):
    import torchvision

    src = torchvision.models.resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    m = build("retinanet", 3, weights=str(tmp_path / "r18.pth"), **SMALL["retinanet"])
    torch.testing.assert_close(m.backbone.stem[0].weight, src.conv1.weight)
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="matches"):
        build("boxreg", 3, weights=str(tmp_path / "bad.pth"))
