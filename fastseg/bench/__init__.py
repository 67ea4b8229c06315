"""The benchmark suite behind ``fastseg bench`` (and ``make bench``).

One public module per op family in this package (``fastseg/bench/nms.py``...), each with
``cases(device, quick) -> list[Case]``; ``_core`` times, ``_report`` presents. Every case times a
fastseg backend and its peer (torchvision or plain PyTorch) side by side in one process: the two run
alternately (or, with ``--isolated``, each in its own loop), each repetition on the next of several
input sets, GPU work is synchronised inside the timed region, and medians are reported. Before timing,
every case asserts that fastseg's result equals the peer's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from fastseg import backend
from fastseg.bench._core import Case, environment, run_case, suites, time_pair  # noqa: F401
from fastseg.bench._report import compare, format_table, plot


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--ops", default=None, help="comma-separated op families (default: all): " + ", ".join(suites()))
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (under two minutes on 2 CPU cores)")
    p.add_argument("--devices", default=None, help="comma-separated devices (default: cpu, and cuda when present)")
    p.add_argument("--backends", default=None,
                   help="comma-separated fastseg backends to time (default: auto; 'all': every one that can run, "
                        "except the slow ones on the CPU: the Triton interpreter, and the reference in --quick)")
    p.add_argument("--isolated", action="store_true",
                   help="time each implementation in its own loop, in blocks of consecutive calls (as "
                        "torch.utils.benchmark does), instead of alternating their calls")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results and the environment as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG: speed-ups, and time against problem size")
    p.add_argument("--compare", default=None, metavar="OLD.json",
                   help="compare with an earlier --json run; exit status 1 if something regressed beyond noise")
    p.add_argument("--models", action="store_true",
                   help="instead of the ops: training-step throughput of the bundled models against torchvision's")
    p.add_argument("--update-auto", action="store_true",
                   help="record the fastest measured backend per op and device as auto's choice (needs --backends all)")


def backends_for(case: Case, asked: str | None, quick: bool) -> list[str]:
    if asked != "all":
        return (asked or "auto").split(",")
    names = [b for b in case.impls if backend.unavailable_reason(b, torch.device(case.device)) is None]
    if case.device == "cpu":
        names = [b for b in names if b != "triton" and not (quick and b == "torch")]
    return names


class Progress:
    """One line on stderr, redrawn in place on a terminal."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, label: str):
        self.done += 1
        width = 24
        filled = width * (self.done - 1) // max(self.total, 1)
        text = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {time.perf_counter() - self.start:5.0f}s {label}"
        print(("\r\033[K" if self.tty else "") + text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self):
        if self.tty:
            print(file=sys.stderr)


def run(args) -> int:
    available = suites()
    ops = [o for o in args.ops.split(",") if o] if args.ops else list(available)
    unknown = [o for o in ops if o not in available]
    if unknown:
        print(f"fastseg bench: unknown op family {', '.join(unknown)}; choose from {', '.join(available)}", file=sys.stderr)
        return 2
    if args.update_auto and args.backends != "all":
        print("fastseg bench: --update-auto needs --backends all", file=sys.stderr)
        return 2
    old = None
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)["results"]
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.models:
        from fastseg.bench._models import MODEL_CASES, run_model_case

        jobs = [(MODEL_CASES[m](d, args.quick), None) for m in MODEL_CASES for d in devices]
    else:
        jobs = [(case, name) for op in ops for d in devices for case in available[op](d, args.quick)
                for name in backends_for(case, args.backends, args.quick)]
    progress = Progress(len(jobs))
    records = []
    for case, name in jobs:
        progress.step(f"{case.op} {case.shape} {str(case.dtype).replace('torch.', '')} {case.device} {name or ''}")
        records.append(run_model_case(case, args.quick) if args.models
                       else run_case(case, name, args.quick, args.isolated))
    progress.close()
    if args.update_auto:
        choices = backend.update_auto_table(records)
        for r in records:
            r["auto"] = choices.get((r["device"], r["op"]), r["auto"])
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "results": records}, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot(records, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if old is not None:
        report, regressions = compare(old, records)
        print(f"\ncompared with {args.compare}:\n{report}")
        if regressions:
            print(f"{regressions} regression(s) beyond noise", file=sys.stderr)
            return 1
    return 0
