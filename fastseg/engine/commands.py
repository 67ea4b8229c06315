"""The ``fastseg train / eval / predict / models`` commands."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch


def default_model_kwargs(name: str, img_size: int, device: str) -> dict:
    """Sizes that train well on the embedded shapes set. On the CPU the heads are slimmer than the
    papers' (the paper sizes are the model classes' own defaults), so a run fits in minutes."""
    cpu = not str(device).startswith("cuda")
    kw = {"depth": 18 if cpu else 50}
    if name == "retinanet":
        # anchors scaled to the image: the paper's 32..512 are for ~800 px images
        base = max(8, img_size // 8)
        kw.update(anchor_sizes=tuple(base * 2 ** i for i in range(5)))
        if cpu:
            kw.update(fpn_channels=64, head_convs=2)
    elif name == "ssd" and img_size <= 256:
        # small images hold relatively larger objects than the paper's 300 px; smaller default boxes
        # still cover the synthetic shapes (12-45 % of the side)
        kw.update(min_scale=0.1, max_scale=0.7)
    return kw


def _device(arg):
    if arg:
        return arg
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_train_arguments(p: argparse.ArgumentParser):
    p.add_argument("model", help="architecture (see `fastseg models`)")
    p.add_argument("--data", default="shapes", help="shapes | shapes:N | coco:ANNOTATIONS.json (default: shapes)")
    p.add_argument("--images", default=None, help="folder the json's image paths resolve against (default: the json's folder)")
    p.add_argument("--val-data", default=None, help="validation data, same forms as --data "
                   "(default for shapes: 200 held-out shapes images)")
    p.add_argument("--val-images", default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--iters", type=int, default=None, help="optimizer steps (default: 800)")
    p.add_argument("--time-limit", type=float, default=None, help="stop training after this many minutes (checkpointed)")
    # defaults = the recipe measured on the 2-core CPU (benchmarks/notes/training.md)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--out", default=None, help="output folder for checkpoints and metrics (default: runs/MODEL)")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (AdamW) or 0.01 (SGD)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    p.add_argument("--milestones", default="", help="steps where the step schedule divides the LR by 10, e.g. 800,1100")
    p.add_argument("--clip-grad", type=float, default=10.0)
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (e.g. 0.999; 0 = off)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=int, default=None, help="ResNet depth (default: 18 on CPU, 50 on GPU)")
    p.add_argument("--weights", default=None, help="local file with backbone weights (never downloaded)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from ('auto': OUT/last.pt if present)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _eval_fn(batch_size, device):
    from fastseg.engine.evaluate import evaluate

    return lambda model, ds: evaluate(model, ds, device=device, batch_size=batch_size)


def _build_val(spec, images, img_size, seed):
    from fastseg.data import build_dataset

    if spec is None:
        return None
    return build_dataset(spec, img_size=img_size, seed=seed, images_dir=images, train=False)


def cmd_train(args) -> int:
    from fastseg.data import build_dataset
    from fastseg.engine.trainer import NonFiniteLossError, TrainConfig, Trainer
    from fastseg.models import build

    device = _device(args.device)
    train_set = build_dataset(args.data, img_size=args.img_size, seed=args.seed, images_dir=args.images, train=True)
    val_spec = args.val_data
    val_seed = args.seed
    if val_spec is None and args.data.startswith("shapes"):
        # held-out images: another seed of the generator, never seen in training
        val_spec, val_seed = "shapes:200", args.seed + 10_000
    val_images = args.val_images or (args.images if val_spec and val_spec.startswith("coco:") else None)
    val_set = _build_val(val_spec, val_images, args.img_size, val_seed)
    num_classes = train_set.num_classes
    kw = default_model_kwargs(args.model, args.img_size, device)
    if args.depth:
        kw["depth"] = args.depth
    if args.weights:
        kw["weights"] = args.weights
    torch.manual_seed(args.seed)
    model = build(args.model, num_classes, **kw)
    iters, epochs = args.iters, args.epochs
    if iters is None and epochs is None:
        iters = 800
    out = args.out or f"runs/{args.model}"
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adamw" else 0.01)
    cfg = TrainConfig(iters=iters, epochs=epochs, batch_size=args.batch_size, lr=lr, weight_decay=args.weight_decay,
                      optimizer=args.optimizer, schedule=args.schedule, warmup_iters=args.warmup,
                      milestones=tuple(int(m) for m in args.milestones.split(",") if m.strip()), amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile, clip_grad=args.clip_grad or None,
                      ema_decay=args.ema, num_workers=args.workers, seed=args.seed, device=device, out_dir=out,
                      ckpt_every=args.ckpt_every, log_every=args.log_every, eval_every=args.eval_every,
                      time_limit=args.time_limit * 60 if args.time_limit else None, progress=not args.no_progress)
    meta = {"model": args.model, "model_kwargs": kw, "num_classes": num_classes, "img_size": args.img_size,
            "classes": list(getattr(train_set, "classes", [])), "val_data": val_spec, "val_seed": val_seed,
            "val_images": val_images,
            "data": args.data}
    trainer = Trainer(model, train_set, cfg, val_set=val_set, meta=meta,
                      evaluate_fn=_eval_fn(args.batch_size, device))
    resume = args.resume
    if resume == "auto":
        resume = str(Path(out) / "last.pt") if (Path(out) / "last.pt").exists() else None
    if resume:
        trainer.load(resume)
        print(f"resumed from {resume} at step {trainer.step}", file=sys.stderr)
    if trainer.rank == 0:
        print(f"training {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) on "
              f"{trainer.device} for {trainer.total_steps} steps of {args.batch_size} images x {trainer.world} "
              f"processes; output in {out}", file=sys.stderr)
    try:
        res = trainer.fit()
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.rank == 0:
        print(f"trained {res['step']} steps in {res['train_time_s']:.0f} s; checkpoint {Path(out) / 'last.pt'}")
        if res["eval"] is not None:
            _print_results(res["eval"])
            with open(Path(out) / "eval.json", "w") as f:
                json.dump(res["eval"], f, indent=2)
    return 0


def load_model(checkpoint, device="cpu"):
    """Rebuild the model stored in a training checkpoint (EMA weights when the run kept an EMA)."""
    from fastseg.engine.checkpoint import load
    from fastseg.models import build

    state = load(checkpoint, map_location="cpu")
    meta = state.get("meta") or {}
    if "model" not in meta:
        raise ValueError(f"{checkpoint} is not a fastseg training checkpoint (no model name in it)")
    model = build(meta["model"], meta["num_classes"], **meta.get("model_kwargs", {}))
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def _print_results(res: dict):
    for task, stats in res.items():
        if task == "semantic":
            print(f"semantic mIoU {stats['mIoU']:.4f}")
            continue
        print(f"{task}: " + "  ".join(f"{k} {v:.4f}" for k, v in stats.items()))


def cmd_eval(args) -> int:
    from fastseg.data import build_dataset
    from fastseg.engine.evaluate import evaluate

    device = _device(args.device)
    model, meta = load_model(args.checkpoint, device)
    img_size = args.img_size or meta.get("img_size", 128)
    spec, seed, images = args.data, meta.get("val_seed", 0), args.images
    if spec is None:  # the run's own validation set
        spec = meta.get("val_data") or "shapes:200"
        images = images or meta.get("val_images")
    elif spec.startswith("shapes") and args.seed is not None:
        seed = args.seed
    ds = build_dataset(spec, img_size=img_size, seed=seed, images_dir=images, train=False)
    t = time.time()
    res = evaluate(model, ds, device=device, batch_size=args.batch_size, num_classes=meta.get("num_classes"))
    print(f"evaluated {len(ds)} images of {spec} in {time.time() - t:.1f} s")
    _print_results(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60)]


def draw_detections(image: torch.Tensor, det: dict, classes=None, score_thresh: float = 0.3):
    """PIL image of ``image`` [3,H,W] in [0,1] with boxes, class names + scores, and masks blended in."""
    import numpy as np
    from PIL import Image, ImageDraw

    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy().astype(np.float32)
    keep = det["scores"] >= score_thresh
    boxes, scores, labels = det["boxes"][keep].cpu(), det["scores"][keep].cpu(), det["labels"][keep].cpu()
    if "masks" in det:
        masks = det["masks"][keep].cpu()
        for m, lab in zip(masks, labels):
            m = (m[0] if m.dim() == 3 else m) >= 0.5
            col = np.array(_COLOURS[int(lab) % len(_COLOURS)], dtype=np.float32)
            arr[m.numpy()] = 0.5 * arr[m.numpy()] + 0.5 * col
    im = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(im)
    for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        col = _COLOURS[int(lab) % len(_COLOURS)]
        d.rectangle(b, outline=col, width=2)
        name = classes[lab] if classes and lab < len(classes) else str(lab)
        d.text((b[0] + 2, b[1] + 1), f"{name} {s:.2f}", fill=col)
    return im


def cmd_predict(args) -> int:
    import numpy as np
    from PIL import Image

    device = _device(args.device)
    model, meta = load_model(args.checkpoint, device)
    with Image.open(args.image) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    img = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    h, w = img.shape[-2:]
    size = args.img_size or meta.get("img_size")
    x = img
    if size and (h, w) != (size, size):
        # the model was trained at `size`: predict there, scale boxes (and masks) back
        x = torch.nn.functional.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        det = {k: v.cpu() for k, v in model(x[None].to(device))[0].items()}
    if x is not img:
        sx, sy = w / size, h / size
        det["boxes"] = det["boxes"] * torch.tensor([sx, sy, sx, sy])
        if "masks" in det:
            m = det["masks"].float()
            m = m[:, None] if m.dim() == 3 else m
            det["masks"] = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    out = draw_detections(img, det, meta.get("classes"), args.score)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out)
    n = int((det["scores"] >= args.score).sum())
    print(f"{n} detections with score >= {args.score} drawn to {args.out}")
    return 0


def cmd_models(args) -> int:
    from fastseg.models import available, describe

    for name in available():
        print(f"{name:12s} {describe(name)}")
    return 0


def add_subcommands(sub):
    p = sub.add_parser("train", help="train a model (default data: the embedded synthetic shapes set)")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="COCO box/mask mAP (and mIoU) of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="shapes | shapes:N | coco:ANNOTATIONS.json (default: the run's validation set)")
    p.add_argument("--images", default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of the shapes set (default: the run's validation seed)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the results to this json file")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("predict", help="draw a checkpoint's detections on an image")
    p.add_argument("checkpoint")
    p.add_argument("image")
    p.add_argument("--out", default="out.png")
    p.add_argument("--score", type=float, default=0.3, help="minimum score drawn")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("models", help="list the bundled architectures")
    p.set_defaults(func=cmd_models)
