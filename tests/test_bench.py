"""The benchmark machinery: records, comparison (a deliberate slowdown is flagged, the same run is
not), JSON and plot output, and `auto` following the measured table."""
import json
import time

import pytest
import torch

import fastseg
from fastseg import backend
from fastseg.bench import Case, compare, run_case
from fastseg.cli import main


def busy_wait(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def sleepy_case(extra_ms=0.0):
    def fast(x):
        busy_wait((1.0 + extra_ms) / 1e3)
        return x + 1

    def peer(x):
        busy_wait(1.0 / 1e3)
        return x + 1

    def check(a, b, inputs):
        assert torch.equal(a, b)

    return Case("toy", "1 ms", 1, torch.float32, "cpu", lambda seed: (torch.full((3,), float(seed)),),
                fast, peer, "peer", check, {"torch": fast})


def test_record_fields_and_speedup():
    r = run_case(sleepy_case(), "auto", quick=True)
    for field in ("op", "shape", "size", "dtype", "device", "backend", "auto", "fastseg_ms", "peer_ms",
                  "speedup", "repeats", "fastseg_rel_mad", "peer_rel_mad"):
        assert field in r
    assert r["repeats"] >= 3 and 0.5 < r["speedup"] < 2.0  # same work on both sides


@pytest.mark.parametrize("isolated", [False, True], ids=["alternating", "isolated"])
def test_a_deliberately_slower_side_reads_slower(isolated):
    """Both timings see a 3 ms fastseg against a 1 ms peer as such, and say which timing ran."""
    r = run_case(sleepy_case(extra_ms=2.0), "auto", quick=True, isolated=isolated)
    assert 0.2 < r["speedup"] < 0.5 and 2.5 < r["fastseg_ms"] < 4.5 and 0.8 < r["peer_ms"] < 1.6
    assert r["timing"] == ("isolated" if isolated else "alternating") and r["repeats"] >= 3


def test_compare_flags_a_deliberate_slowdown():
    base = run_case(sleepy_case(), "auto", quick=True)
    slowed = run_case(sleepy_case(extra_ms=4.0), "auto", quick=True)  # 5x slower than the peer
    _, regressions = compare([base], [slowed])
    assert regressions == 1
    report, regressions = compare([base], [base])
    assert regressions == 0 and "same" in report
    isolated = dict(slowed, timing="isolated")  # another timing: not compared, not a regression
    report, regressions = compare([base], [isolated])
    assert regressions == 0 and "not compared (alternating vs isolated)" in report


def test_check_runs_before_timing():
    case = sleepy_case()
    case.peer = lambda x: x + 2
    with pytest.raises(AssertionError):
        run_case(case, "auto", quick=True)


def test_cli_quick_json_plot_compare(tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    assert main(["bench", "--quick", "--ops", "nms", "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["cpu"]
    keys = {(r["op"], r["backend"], r["size"]) for r in data["results"]}
    assert len(keys) == len(data["results"]) >= 3  # one record per op, backend and size
    assert all(r["speedup"] > 0 and r["auto"] == "native" for r in data["results"])
    assert png.stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "speed-up" in table and "batched_nms" in table
    assert main(["bench", "--quick", "--ops", "nope"]) == 2


def test_auto_follows_the_measured_table(monkeypatch, tmp_path):
    monkeypatch.setattr(backend, "AUTO_TABLE_PATH", str(tmp_path / "auto.json"))
    try:
        records = [{"op": "nms", "shape": s, "dtype": "float32", "device": "cpu", "backend": b, "fastseg_ms": t}
                   for s, b, t in [("a", "native", 1.0), ("a", "torch", 0.5), ("b", "native", 2.0), ("b", "torch", 1.0)]]
        assert backend.update_auto_table(records) == {("cpu", "nms"): "torch"}
        from fastseg.ops.nms import NMS_IMPLS
        assert backend.auto_choice("nms", "cpu", NMS_IMPLS) == "torch"
        assert fastseg.info()["auto"]["cpu"]["nms"] == "torch"
    finally:
        monkeypatch.undo()
        backend.load_auto_table()


def test_model_records_carry_images_per_second():
    from fastseg.bench._models import run_model_case

    case = sleepy_case()
    case.size = 2  # images per step
    r = run_model_case(case, quick=True)
    assert r["fastseg_images_per_s"] == pytest.approx(2 / (r["fastseg_ms"] / 1e3))
    assert r["peer_images_per_s"] > 0 and r["speedup"] > 0
