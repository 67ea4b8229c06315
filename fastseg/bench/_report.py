"""Presenting results: the table, the comparison with an earlier run, the plots."""
from __future__ import annotations

import math
from typing import Sequence


def key(r: dict) -> tuple:
    return (r["op"], r["shape"], r["dtype"], r["device"], r["backend"])


def format_rows(header: list, rows: list) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_table(records: Sequence[dict]) -> str:
    header = ["op", "shape", "dtype", "device", "backend", "fastseg ms", "peer", "peer ms", "speed-up", "auto"]
    rows = [[r["op"], r["shape"], r["dtype"], r["device"], r["backend"], f"{r['fastseg_ms']:.3f}",
             r["peer"], f"{r['peer_ms']:.3f}", f"{r['speedup']:.1f}x", r["auto"]] for r in records]
    return format_rows(header, rows)


def compare(old: Sequence[dict], new: Sequence[dict], tolerance: float = 0.10) -> tuple[str, int]:
    """Compare two runs record by record. The measure is the speed-up over the peer timed in the same
    run, which cancels a machine that is busier or slower as a whole; a change counts only beyond
    `tolerance` and beyond three times the runs' own noise (relative median absolute deviations).
    Returns the report and the number of regressions."""
    old_by_key = {key(r): r for r in old}
    header = ["op", "shape", "dtype", "device", "backend", "old ms", "new ms", "old speed-up",
              "new speed-up", "change", "verdict"]
    rows, regressions = [], 0
    for r in new:
        o = old_by_key.get(key(r))
        if o is None:
            rows.append(list(key(r)) + ["-", f"{r['fastseg_ms']:.3f}", "-", f"{r['speedup']:.1f}x", "-", "new"])
            continue
        timings = [x.get("timing", "alternating") for x in (o, r)]
        if timings[0] != timings[1]:  # different page-fault regimes: the speed-ups do not compare
            rows.append(list(key(r)) + [f"{o['fastseg_ms']:.3f}", f"{r['fastseg_ms']:.3f}", f"{o['speedup']:.1f}x",
                                        f"{r['speedup']:.1f}x", "-", f"not compared ({timings[0]} vs {timings[1]})"])
            continue
        noise = 3 * math.sqrt(sum(x.get(f, 0.0) ** 2 for x in (o, r) for f in ("fastseg_rel_mad", "peer_rel_mad")))
        threshold = max(tolerance, noise)
        change = o["speedup"] / r["speedup"] - 1  # > 0: fastseg got slower relative to the peer
        verdict = "REGRESSION" if change > threshold else "faster" if change < -threshold else "same"
        regressions += verdict == "REGRESSION"
        rows.append(list(key(r)) + [f"{o['fastseg_ms']:.3f}", f"{r['fastseg_ms']:.3f}", f"{o['speedup']:.1f}x",
                                    f"{r['speedup']:.1f}x", f"{-change:+.0%}", f"{verdict} (noise {threshold:.0%})"])
    return format_rows(header, rows), regressions


def plot(records: Sequence[dict], path: str) -> None:
    """One PNG: speed-up of every record (left) and time against problem size for every series with
    several sizes, fastseg solid and the peer dashed (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, scaling) = plt.subplots(1, 2, figsize=(16, max(4.0, 0.35 * len(records) + 1.5)))
    labels = [f"{r['op']} {r['shape']} {r['dtype']} {r['device']} [{r['backend']}]" for r in records]
    speedups = [r["speedup"] for r in records]
    bars.barh(range(len(records)), speedups, color=["tab:green" if s >= 1 else "tab:red" for s in speedups])
    bars.set_yticks(range(len(records)), labels, fontsize=7)
    bars.invert_yaxis()
    bars.axvline(1.0, color="black", linewidth=0.8)
    bars.set_xscale("log")
    bars.set_xlabel("speed-up over the peer (median time of peer / fastseg)")
    bars.set_title("fastseg speed-up")

    series: dict = {}
    for r in records:
        series.setdefault((r["op"], r["dtype"], r["device"], r["backend"], r["peer"]), []).append(r)
    drawn = 0
    for (op, dtype, device, backend_name, peer), rs in series.items():
        if len({r["size"] for r in rs}) < 2:
            continue
        rs = sorted(rs, key=lambda r: r["size"])
        sizes = [r["size"] for r in rs]
        line, = scaling.plot(sizes, [r["fastseg_ms"] for r in rs], "o-", label=f"fastseg {op} {dtype} {device} [{backend_name}]")
        scaling.plot(sizes, [r["peer_ms"] for r in rs], "s--", color=line.get_color(), label=f"{peer} {op} {dtype} {device}")
        drawn += 1
    scaling.set_xscale("log")
    scaling.set_yscale("log")
    scaling.set_xlabel("problem size (boxes / elements)")
    scaling.set_ylabel("median time (ms)")
    scaling.set_title("time against problem size" if drawn else "time against problem size (no multi-size series in this run)")
    if drawn:
        scaling.legend(fontsize=7)
    scaling.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
