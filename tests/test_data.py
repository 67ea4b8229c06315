"""The synthetic shapes set, COCO reader/exporter round trip, augmentations, collation, sampler."""
import json

import numpy as np
import pytest
import torch

from fastseg.data import (CocoDetection, Compose, RandomCrop, RandomHorizontalFlip, Resize, ResumableSampler,
                          ShapesDataset, build_dataset, collate, export_coco, make_loader, masks_to_boxes, pad_images)


def _check_sample(img, t, h, w):
    assert img.dtype == torch.float32 and img.shape == (3, h, w)
    assert 0 <= img.min() and img.max() <= 1
    k = t["boxes"].shape[0]
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (k, 4)
    assert t["labels"].dtype == torch.int64 and t["labels"].shape == (k,)
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (k, h, w)
    assert t["semantic"].dtype == torch.int64 and t["semantic"].shape == (h, w)
    if k:
        assert ((t["labels"] >= 1) & (t["labels"] <= 3)).all()
        # boxes are the tight boxes of the masks
        torch.testing.assert_close(masks_to_boxes(t["masks"]), t["boxes"])


def test_shapes_deterministic_and_well_formed():
    a, b = ShapesDataset(6, 64, seed=3), ShapesDataset(6, 64, seed=3)
    for i in range(6):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib)
        for k in ("boxes", "labels", "masks", "semantic"):
            assert torch.equal(ta[k], tb[k])
        _check_sample(ia, ta, 64, 64)
    assert not torch.equal(ShapesDataset(1, 64, seed=4)[0][0], a[0][0])
    assert not torch.equal(a[0][0], a[1][0])


def test_shapes_semantic_masks_consistent_and_any_size():
    ds = ShapesDataset(8, (48, 80), seed=1, max_objects=5)
    n_obj, classes = 0, set()
    for i in range(len(ds)):
        img, t = ds[i]
        _check_sample(img, t, 48, 80)
        sem = t["semantic"]
        for m, lab in zip(t["masks"].bool(), t["labels"]):
            assert (sem[m] == lab).all()  # the visible part of an instance carries its class
        covered = t["masks"].bool().any(0) if len(t["labels"]) else torch.zeros_like(sem, dtype=torch.bool)
        assert (sem[~covered] == 0).all()
        # visible masks of different instances never overlap
        if len(t["labels"]):
            assert t["masks"].sum(0).max() <= 1
        n_obj += len(t["labels"])
        classes |= set(t["labels"].tolist())
    assert n_obj >= 8 and classes == {1, 2, 3}


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match="img_size"):
        ShapesDataset(1, 4)[0]
    with pytest.raises(IndexError):
        ShapesDataset(2, 32)[2]


def test_flip_resize_crop_keep_boxes_masks_consistent():
    ds = ShapesDataset(6, 64, seed=2)
    g = torch.Generator().manual_seed(0)
    flip = RandomHorizontalFlip(1.0)
    img, t = ds[0]
    fi, ft = flip(img, t, g)
    assert torch.equal(fi, img.flip(-1))
    torch.testing.assert_close(masks_to_boxes(ft["masks"]), ft["boxes"])
    assert torch.equal(ft["semantic"], t["semantic"].flip(-1))
    ri, rt = Resize((32, 96))(img, t, g)
    assert ri.shape == (3, 32, 96) and rt["masks"].shape[-2:] == (32, 96) and rt["semantic"].shape == (32, 96)
    torch.testing.assert_close(rt["boxes"], t["boxes"] * torch.tensor([1.5, 0.5, 1.5, 0.5]))
    crop = RandomCrop((0.4, 0.6))
    for i in range(6):
        img, t = ds[i]
        ci, ct = crop(img, t, torch.Generator().manual_seed(i))
        h, w = ci.shape[-2:]
        assert ct["masks"].shape[-2:] == (h, w) and ct["semantic"].shape == (h, w)
        assert ct["boxes"].shape[0] == ct["labels"].shape[0] == ct["masks"].shape[0]
        if ct["boxes"].shape[0]:
            assert (ct["boxes"][:, 0::2] <= w).all() and (ct["boxes"][:, 1::2] <= h).all() and (ct["boxes"] >= 0).all()
            torch.testing.assert_close(masks_to_boxes(ct["masks"]), ct["boxes"])
            assert (ct["masks"].flatten(1).sum(1) > 0).all()
    # an object mostly outside the window is dropped, one mostly inside kept: the image encodes pixel
    # coordinates so each crop's offset can be read back from it
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    img = torch.stack([xx / 64, yy / 64, torch.zeros_like(xx)])
    t = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1]),
         "masks": torch.zeros(1, 40, 40, dtype=torch.uint8)}
    t["masks"][0, :5, :5] = 1
    seen = set()
    for seed in range(40):
        ci, ct = RandomCrop((0.5, 0.5))(img, t, torch.Generator().manual_seed(seed))
        x0, y0 = round(float(ci[0, 0, 0]) * 64), round(float(ci[1, 0, 0]) * 64)
        left = max(0, 5 - x0) * max(0, 5 - y0)  # pixels of the 5x5 object inside the window
        kept = left > 0 and left >= 0.3 * 25  # RandomCrop's default min_area_frac
        assert ct["boxes"].shape[0] == ct["labels"].shape[0] == ct["masks"].shape[0] == int(kept)
        seen.add(kept)
    assert seen == {True, False}


def test_augmentation_is_a_function_of_the_seed():
    tf = Compose([RandomHorizontalFlip(0.5), RandomCrop((0.5, 1.0)), Resize(48)])
    ds = ShapesDataset(4, 64, seed=0, transforms=tf)
    a, b = ds[(1, 1234)], ds[(1, 1234)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert a[0].shape == (3, 48, 48)
    outs = {tuple(ds[(1, s)][0].flatten()[:50].tolist()) for s in range(8)}
    assert len(outs) > 1


def test_collate_variable_box_counts_and_padding():
    ds = ShapesDataset(4, 32, seed=0, max_objects=4)
    images, targets = collate([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 32, 32) and len(targets) == 4
    a, b = torch.rand(3, 20, 30), torch.rand(3, 25, 10)
    p = pad_images([a, b], size_divisible=8)
    assert p.shape == (2, 3, 32, 32)
    assert torch.equal(p[0, :, :20, :30], a) and (p[0, :, 20:] == 0).all() and torch.equal(p[1, :, :25, :10], b)


def test_resumable_sampler_and_sharding():
    ds = ShapesDataset(10, 16)
    s = ResumableSampler(ds, shuffle=True, seed=5, drop_last=True)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 10 and sorted(i for i, _ in full) == list(range(10))
    s.set_start(4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(3)
    s.set_start(0)
    assert [i for i, _ in s] != [i for i, _ in full]
    shards = [list(ResumableSampler(ds, num_replicas=2, rank=r, seed=5, drop_last=True)) for r in range(2)]
    assert not set(i for i, _ in shards[0]) & set(i for i, _ in shards[1])
    assert {a for _, a in shards[0]}.isdisjoint({a for _, a in shards[1]})


def test_make_loader_batches():
    ds = ShapesDataset(10, 32)
    loader = make_loader(ds, 4, shuffle=True, num_workers=0, drop_last=True)
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 32, 32)
    ev = make_loader(ds, 4, shuffle=False, drop_last=False)
    ids = [t["image_id"] for _, ts in ev for t in ts]
    assert ids == list(range(10))


def test_coco_export_round_trip(tmp_path):
    ds = ShapesDataset(4, (40, 56), seed=7)
    path = export_coco(ds, tmp_path / "coco")
    data = json.loads(path.read_text())
    assert len(data["images"]) == 4 and [c["id"] for c in data["categories"]] == [1, 2, 3]
    back = CocoDetection(path)
    assert len(back) == 4 and back.num_classes == 3
    for i in range(4):
        (ia, ta), (ib, tb) = ds[i], back[i]
        # PNG is lossless and the synthetic images are 8-bit to begin with
        torch.testing.assert_close(ia, ib, atol=1e-6, rtol=0)
        torch.testing.assert_close(ta["boxes"], tb["boxes"])
        assert torch.equal(ta["labels"], tb["labels"]) and torch.equal(ta["masks"], tb["masks"])
        assert torch.equal(ta["semantic"], tb["semantic"])
    # images resolve against --images when given
    moved = tmp_path / "elsewhere"
    (tmp_path / "coco" / "images").rename(tmp_path / "elsewhere_images")
    moved.mkdir()
    (moved / "images").symlink_to(tmp_path / "elsewhere_images")
    again = CocoDetection(path, images_dir=moved)
    torch.testing.assert_close(again[1][0], ds[1][0], atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError):
        CocoDetection(tmp_path / "missing.json")


def test_coco_polygons_crowd_and_category_ids(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    ann = {"images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30}],
           "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}],
           "annotations": [
               {"id": 1, "image_id": 7, "category_id": 9, "bbox": [2, 3, 10, 8], "iscrowd": 0, "area": 80,
                "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
               {"id": 2, "image_id": 7, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1, "area": 25,
                "segmentation": {"size": [20, 30], "counts": [0, 5, 15, 5, 15, 5, 15, 5, 15, 5, 365]}},
           ]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = CocoDetection(tmp_path / "ann.json")
    img, t = ds[0]
    assert img.shape == (3, 20, 30) and t["image_id"] == 7
    assert t["labels"].tolist() == [2]  # category 9 -> label 2; the crowd annotation is left out
    assert ds.label_to_cat_id == {1: 5, 2: 9}
    m = t["masks"][0]
    assert m.shape == (20, 30) and 60 <= int(m.sum()) <= 110 and m[7, 7] == 1 and m[0, 0] == 0
    torch.testing.assert_close(t["boxes"], torch.tensor([[2.0, 3.0, 12.0, 11.0]]))


def test_build_dataset_specs(tmp_path):
    assert len(build_dataset("shapes:5", img_size=32)) == 5
    path = export_coco(ShapesDataset(2, 32), tmp_path)
    assert len(build_dataset(f"coco:{path}", img_size=32)) == 2
    with pytest.raises(ValueError, match="data must be"):
        build_dataset("voc:x")
