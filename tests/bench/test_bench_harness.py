"""The bench harness's plumbing (not its figures): children, RSS, medians, ratios, the last line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import bench.run as bench_run  # noqa: E402
from bench.run import Comparison, Metric, Side, final_line, summarise, table  # noqa: E402


def comparison(name: str, ours: list[dict], theirs: list[dict]) -> Comparison:
    comp = Comparison(name, Side("tunewright", f"{name}.a"), Side("other", f"{name}.b"), {},
                      [Metric("steps_per_s", "steps/s", "1/s"),
                       Metric("seconds_to_target", "s to target", "s", higher_is_better=False)])
    comp.runs = {"ours": ours, "theirs": theirs}
    return comp


def test_ratios_are_medians_of_per_repetition_ratios_against_the_faster_configuration() -> None:
    dpo = comparison("dpo", [{"steps_per_s": s, "seconds_to_target": t} for s, t in ((3, 10), (2, 30), (100, 20))],
                     [{"steps_per_s": s, "seconds_to_target": t} for s, t in ((1, 40), (1.5, 50), (1, None))])
    dpo.alternatives = [Side("other, precomputed", "dpo.c")]
    dpo.runs["dpo.c"] = [{"steps_per_s": s, "seconds_to_target": t} for s, t in ((2, 12), (2, 15), (2, 60))]
    musicgen = comparison("musicgen", [{"available": False, "reason": "method 'x' is not available"}],
                          [{"steps_per_s": 1.0}])
    ckpt = Comparison("ckpt", Side("with", "ckpt.a"), Side("without", "ckpt.b"), {},
                      [Metric("interval_cost", "cost", "", higher_is_better=False),
                       Metric("step_s", "median step", "s", higher_is_better=False),
                       Metric("step_cpu_s", "step CPU", "s", higher_is_better=False)])
    ckpt.runs = {"ours": [{"interval_cost": c, "step_s": s, "step_cpu_s": 0.3, "wall_s": 20.0}
                          for c, s in ((0.06, 0.42), (0.05, 0.48), (0.2, 0.40))],
                 "theirs": [{"interval_cost": c, "step_s": s, "step_cpu_s": 0.3, "wall_s": 19.0}
                            for c, s in ((0.0, 0.36), (-0.01, 0.38))]}
    ckpt.seconds = 78.0

    summary = summarise([dpo, musicgen, ckpt])

    # Against the faster configuration (steps/s median 2 beats 1): per-repetition 3/2, 2/2, 100/2.
    assert summary["ratios"]["dpo_speedup"] == pytest.approx(1.5)
    assert summary["spread"]["dpo_speedup"] | {"values": None} == {"median": 1.5, "min": 1.0, "max": 50.0, "n": 3,
                                                                    "values": None}
    assert summary["against"]["dpo_speedup"] == "other, precomputed"
    assert summary["ratios"]["dpo_speedup_vs_default"] == pytest.approx(3.0)  # 3/1, 2/1.5, 100/1
    # Time: the precomputed configuration is faster here too (median 15 s vs 45 s): 12/10, 15/30, 60/20.
    assert summary["ratios"]["dpo_time_to_acc_speedup"] == pytest.approx(1.2)
    assert summary["ratios"]["ckpt_overhead"] == pytest.approx((0.06 + 0.06) / 2)  # with minus without, per rep
    # Across the processes, per repetition: the median step with / without, and the training thread's CPU.
    assert summary["spread"]["ckpt_step_with_vs_without"]["values"] == pytest.approx([0.42 / 0.36, 0.48 / 0.38])
    assert summary["ratios"]["ckpt_step_cpu_with_vs_without"] == pytest.approx(1.0)
    assert summary["comparisons"]["ckpt"]["seconds"] == 78.0
    assert summary["comparisons"]["ckpt"]["repetitions"] == 3
    assert summary["ratios"]["musicgen_speedup"] is None
    assert summary["targets"]["dpo_speedup"]["met"] is True
    assert summary["targets"]["dpo_time_to_acc_speedup"]["met"] is True
    assert summary["targets"]["ckpt_overhead"]["met"] is False
    assert summary["targets"]["musicgen_of_ceiling"]["met"] is None
    text = table([dpo, musicgen, ckpt], summary)
    assert "musicgen   not available: method 'x' is not available" in text
    assert "1.5x (1–50)" in text
    assert re.search(r"ckpt +wall time, all sides +78s \(3 repetitions\)", text), text
    assert final_line(summary) == ("dpo_speedup=1.50 dpo_speedup_vs_default=3.00 dpo_time_to_acc_speedup=1.20 "
                                   "sft_speedup=n/a musicgen_speedup=n/a musicgen_ceiling=n/a ckpt_overhead=0.06")


def test_musicgen_ceiling_is_one_over_the_baselines_non_encoder_share_per_repetition() -> None:
    musicgen = Comparison("musicgen", Side("cached", "musicgen.a"), Side("encode", "musicgen.b"), {},
                          [Metric("steps_per_s", "steps/s", "1/s"),
                           Metric("encoder_share", "share", "", compared=False)])
    musicgen.runs = {"ours": [{"steps_per_s": s} for s in (1.2, 1.25, 1.1)],
                     "theirs": [{"steps_per_s": 1.0, "encoder_share": e} for e in (0.2, 0.2, 0.0)]}
    summary = summarise([musicgen])
    assert summary["ratios"]["musicgen_ceiling"] == pytest.approx(1.25)
    assert summary["ratios"]["musicgen_of_ceiling"] == pytest.approx(1.0)  # 1.2/1.25, 1.25/1.25, 1.1/1


def _quick_run(only: str, out: Path, timeout: float) -> str:
    """`bench.run --quick --reps 1 --only <only>` in its own process: its last line (results go to `out`)."""
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--reps", "1", "--only", only,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_quick_sft_comparison_runs_both_sides_in_their_own_processes(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    last = _quick_run("sft", out, timeout=120)
    assert re.fullmatch(r"dpo_speedup=n/a dpo_speedup_vs_default=n/a dpo_time_to_acc_speedup=n/a "
                        r"sft_speedup=\d+\.\d\d musicgen_speedup=n/a musicgen_ceiling=n/a ckpt_overhead=n/a",
                        last), last
    results = json.loads(out.read_text())
    sft = results["comparisons"]["sft"]
    assert sft["available"]
    walls = [run["wall_s"] for role in ("ours", "theirs") for run in sft["runs"][role]]
    assert sft["seconds"] == pytest.approx(sum(walls), abs=0.1) and sft["seconds"] <= results["seconds"]
    for role in ("ours", "theirs"):
        (run,) = sft["runs"][role]
        assert run["samples_per_s"] > 0 and run["tokens_per_s"] > run["samples_per_s"]
        assert 100 < run["peak_rss_mb"] < 8000  # each child's own peak (torch alone is > 100 MB)
        assert 50 < run["tokens_per_sample"] <= sft["params"]["max_length"]
    assert results["device"]["cores"] and results["device"]["versions"]["trl"]


def test_quick_checkpoint_comparison_ends_each_run_at_its_last_step_with_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    last = _quick_run("ckpt", out, timeout=240)
    assert re.fullmatch(r"dpo_speedup=n/a .* musicgen_ceiling=n/a ckpt_overhead=-?\d+\.\d\d", last), last
    ckpt = json.loads(out.read_text())["comparisons"]["ckpt"]
    (saving,), (plain,) = ckpt["runs"]["ours"], ckpt["runs"]["theirs"]
    # bench.child.finish at the last step: the figures are there, the final checkpoint never started (the run
    # without periodic checkpoints uploaded nothing), and the checkpoint every 2 steps was committed first.
    assert "error" not in saving and "error" not in plain
    assert "upload_s_per_checkpoint" not in plain
    assert saving["upload_s_per_checkpoint"] > 0 and saving["sync_s_per_checkpoint"] is not None
    for run in (saving, plain):
        assert 0 < run["step_cpu_s"] <= run["step_s"] * 1.5 and run["other_threads_cpu_s"] >= -0.01
    assert ckpt["seconds"] > 0


def test_the_headline_repetitions_are_reserved_at_their_longest_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    walls = {"sft": iter([100.0, 100.0, 150.0, 150.0] + [150.0] * 8), "musicgen": iter([100.0] * 10)}

    def child(case: str, params: dict, env: dict, timeout: float) -> dict:
        wall = next(walls["sft" if "sft" in case else "musicgen"])
        clock[0] += wall
        return {"wall_s": wall}

    monkeypatch.setattr(bench_run, "run_child", child)
    monkeypatch.setattr(bench_run, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    headline, other = comparison("sft", [], []), comparison("musicgen", [], [])
    headline.headline, other.reps = True, 3
    bench_run.measure([headline, other], reps=4, timeout=60, threads=1, limit=1450)
    # The headline's 1st repetition took 200 s, its 2nd 300 s. Before the other's 2nd (at 700 s) the headline's 2
    # left are reserved at 300 s each: 700 + 200 + 600 > 1450, so the other stops and the headline runs all 4 (to
    # 1300 s). Reserved at the mean (250 s) the other's 2nd would have run, and the headline's 4th not fitted.
    assert [len(headline.runs["ours"]), len(other.runs["ours"])] == [4, 1]
    assert clock[0] == 1300


@pytest.mark.parametrize(("limit", "done", "ended"), [(1300, [5, 1], 1200), (1500, [5, 2], 1400)])
def test_no_repetition_starts_that_would_end_past_the_limit_and_the_headline_ones_come_first(
        monkeypatch: pytest.MonkeyPatch, limit: float, done: list[int], ended: float) -> None:
    clock = [0.0]

    def child(case: str, params: dict, env: dict, timeout: float) -> dict:
        clock[0] += 100.0
        return {"wall_s": 100.0}

    monkeypatch.setattr(bench_run, "run_child", child)
    monkeypatch.setattr(bench_run, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    headline, other = comparison("sft", [], []), comparison("musicgen", [], [])
    headline.headline, other.reps = True, 3
    bench_run.measure([headline, other], reps=5, timeout=60, threads=1, limit=limit)
    # 200 s a repetition each. Limit 1300: after repetition 1 (400 s) and the headline's 2nd (600 s), the
    # other's 2nd would end at 1400 with the headline's 3 left (600 s) reserved: it stops, the headline runs
    # to 1200. Limit 1500: the other's 2nd fits (600 + 200 + 600 reserved), its 3rd would not
    # (1000 + 200 + 400): the headline ends at 1400.
    assert [len(headline.runs["ours"]), len(other.runs["ours"])] == done
    assert clock[0] == ended
