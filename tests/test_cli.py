"""The train / eval / predict / models commands, end to end on tiny data."""
import json

import pytest

from fastseg.cli import main
from fastseg.data import ShapesDataset, export_coco


def test_models_lists_architectures(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("boxreg", "boxreg_n", "yolov1", "ssd", "retinanet"):
        assert name in out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "boxreg", "--data", "shapes:8", "--val-data", "shapes:4", "--iters", "2", "--batch-size", "2",
               "--img-size", "48", "--device", "cpu", "--out", str(out), "--workers", "0", "--no-progress",
               "--warmup", "1"])
    assert rc == 0
    return out


def test_train_writes_checkpoint_metrics_and_eval(trained):
    assert (trained / "last.pt").exists()
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in lines) and any("eval" in r for r in lines)
    ev = json.loads((trained / "eval.json").read_text())
    assert set(ev["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}


def test_eval_prints_and_saves_the_twelve_numbers(trained, tmp_path, capsys):
    path = tmp_path / "res.json"
    assert main(["eval", str(trained / "last.pt"), "--data", "shapes:4", "--json", str(path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bbox: AP " in out and "AR100" in out
    res = json.loads(path.read_text())
    assert len(res["bbox"]) == 12 and all(-1 <= v <= 1 for v in res["bbox"].values())


def test_predict_draws_an_image(trained, tmp_path):
    from PIL import Image

    img = ShapesDataset(1, 80, seed=9)[0][0]
    src = tmp_path / "in.png"
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(src)
    dst = tmp_path / "out" / "pred.png"
    assert main(["predict", str(trained / "last.pt"), str(src), "--out", str(dst), "--score", "0", "--device", "cpu"]) == 0
    with Image.open(dst) as im:
        assert im.size == (80, 80)
        drawn = __import__("numpy").asarray(im.convert("RGB"))
    assert (drawn != (img.permute(1, 2, 0).numpy() * 255).astype("uint8")).any()  # a box was drawn


def test_train_retinanet_on_coco_json(tmp_path):
    ann = export_coco(ShapesDataset(4, 64, seed=1), tmp_path / "coco")
    out = tmp_path / "run"
    rc = main(["train", "retinanet", "--data", f"coco:{ann}", "--val-data", f"coco:{ann}", "--iters", "1",
               "--batch-size", "2", "--img-size", "64", "--device", "cpu", "--out", str(out), "--workers", "0",
               "--no-progress"])
    assert rc == 0 and (out / "last.pt").exists() and (out / "eval.json").exists()


def test_train_bad_data_spec():
    with pytest.raises(ValueError, match="data must be"):
        main(["train", "retinanet", "--data", "imagenet", "--iters", "1", "--device", "cpu"])
