"""`make bench`: tunewright against what a user would otherwise run, on the same model, data, batch and
hardware, in one run. Prints a table, writes bench/results.json, and ends with one line of key ratios.

Every measurement runs in its own process (`bench.child`), so each side's peak RSS is its own (read with
os.wait4). The sides of a comparison alternate (A B, B A, A B, ...) over the repetitions, so drift in
machine load hits both; figures are medians over repetitions, and a ratio is the median of the
per-repetition ratios (repetition i of one side against repetition i of the other), shown with their
min–max. Where the other tool runs in more than one configuration, the headline ratio is against the
faster one.

    python -m bench.run [--reps 5] [--only dpo,sft,musicgen,ckpt,ckpt-slow] [--quick] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "tunewright-bench"

# The shared text setting of the issue: small-llama (hidden 256, 4 layers), seq 128, batch 8, LoRA r16 on
# q/k/v/o. fp32: CPUs without AVX512-BF16 (some machines here) emulate bf16 and run it ~20x slower.
TEXT = {"model": "small-llama", "batch": 8, "max_length": 128, "precision": "fp32", "rank": 16, "per_prompt": 6}


@dataclass
class Side:
    label: str
    case: str  # bench.<module>.<function>


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    compared: bool = True  # False: a figure of one side's run (the ratio column stays empty)


@dataclass
class Comparison:
    name: str
    ours: Side
    theirs: Side  # the other tool at its defaults
    params: dict[str, Any]
    metrics: list[Metric]
    store: str = ""  # "s3": moto's server; "s3-slow": moto behind a proxy adding SLOW_STORE_S per request
    alternatives: list[Side] = field(default_factory=list)  # more configurations of the other tool
    reps: int | None = None  # repetitions when not the run's --reps
    headline: bool = False  # its repetitions come first when time is short (see measure)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of all its measurement processes

    def __post_init__(self) -> None:
        for role in self.roles():
            self.runs.setdefault(role, [])

    def roles(self) -> list[str]:
        """"ours", "theirs", then each alternative's case."""
        return ["ours", "theirs", *(side.case for side in self.alternatives)]

    def side(self, role: str) -> Side:
        return {"ours": self.ours, "theirs": self.theirs, **{s.case: s for s in self.alternatives}}[role]


def comparisons(quick: bool) -> list[Comparison]:
    text = {**TEXT, "model": "tiny-llama"} if quick else TEXT
    steps = (lambda full, short: short) if quick else (lambda full, short: full)
    rss = Metric("peak_rss_mb", "peak RSS", "MB", higher_is_better=False)

    def ckpt(name: str, store: str, reps: int | None) -> Comparison:
        return Comparison(
            name, Side("S3 checkpoint every K", "ckpt.with_checkpoints"), Side("no checkpoints", "ckpt.without"),
            {**text, "steps": steps(33, 6), "warmup": steps(3, 1), "every": steps(10, 2), "lr": 2e-4,
             "per_prompt": 11, "store": store},
            [Metric("steps_per_s", "steps/s (window mean)", "1/s"),
             Metric("step_s", "median step", "s", higher_is_better=False),
             Metric("step_cpu_s", "  training thread CPU", "s", higher_is_better=False),
             Metric("other_threads_cpu_s", "other threads' CPU s", "s", compared=False),
             Metric("excess_s_per_position", "s extra after K-th step", "s", compared=False),
             Metric("interval_cost", "  per K steps (fraction)", "", compared=False),
             Metric("sync_s_per_checkpoint", "s per ckpt (sync save)", "s", compared=False),
             Metric("upload_s_per_checkpoint", "s per ckpt (bg upload)", "s", compared=False),
             Metric("upload_cpu_s_per_checkpoint", "CPU s per ckpt (upload)", "s", compared=False),
             Metric("parent_cpu_s", "S3 server CPU s (run)", "s", compared=False)],
            store=store, reps=reps)

    return [
        Comparison(
            "dpo", Side("tunewright dpo", "dpo.tunewright"), Side("TRL DPOTrainer defaults", "dpo.trl"),
            {**text, "steps": steps(27, 4), "warmup": steps(2, 1), "measure_steps": steps(4, 2), "lr": 5e-3,
             "beta": 0.1, "judge_every": 2, "judge_pairs": steps(24, 8), "target": 0.9},
            [Metric("steps_per_s", "steps/s", "1/s"), Metric("mean_steps_per_s", "steps/s (window mean)", "1/s"),
             Metric("samples_per_s", "pairs/s", "1/s"),
             Metric("setup_s", "s before step 1", "s", higher_is_better=False),
             Metric("seconds_to_target", "s to held-out acc 0.9", "s", higher_is_better=False),
             Metric("train_seconds_to_target", "  of which in steps", "s", higher_is_better=False),
             Metric("steps_to_target", "steps to acc 0.9", "", compared=False), rss],
            alternatives=[Side("TRL precompute_ref_log_probs", "dpo.trl_precompute")], headline=True),
        Comparison(
            "sft", Side("tunewright sft", "sft.tunewright"), Side("TRL SFTTrainer", "sft.trl"),
            {**text, "steps": steps(10, 3), "warmup": steps(2, 1), "lr": 2e-4},
            [Metric("samples_per_s", "samples/s", "1/s"), Metric("mean_steps_per_s", "steps/s (window mean)", "1/s"),
             Metric("tokens_per_s", "tokens/s", "1/s"), rss], headline=True),
        Comparison(
            "musicgen", Side("tunewright (cached)", "musicgen.tunewright"),
            Side("encode every step", "musicgen.baseline"),
            {"model": "musicgen-small, widths / 4", "batch": 2, "precision": "fp32", "rank": 16, "lr": 2e-4,
             "steps": steps(10, 3), "warmup": steps(2, 1), "seconds": steps(2.0, 0.5), "prompts": 22, "per_prompt": 1},
            [Metric("steps_per_s", "steps/s", "1/s"), Metric("mean_steps_per_s", "steps/s (window mean)", "1/s"),
             Metric("seconds_to_first_step", "s from start to step 1", "s", higher_is_better=False),
             Metric("encoder_share", "encoders' share of step", "", compared=False), rss], reps=3),
        ckpt("ckpt", "s3", 3),
        ckpt("ckpt-slow", "s3-slow", 3),
    ]


# -- running children ---------------------------------------------------------------------------------------

def run_child(case: str, params: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one measurement; its result dict plus `peak_rss_mb`, `wall_s` and `parent_cpu_s` (this process's
    CPU time meanwhile: the S3 server's work when one runs here), or `error`."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result_path, log_path = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        began, parent_cpu = time.perf_counter(), time.process_time()
        # Nothing cached by an earlier child; every temporary file of the child in `tmp` (removed here even
        # when the child ends itself with bench.child.finish).
        env = {**env, "HF_DATASETS_CACHE": str(Path(tmp) / "datasets"), "TMPDIR": tmp}
        with log_path.open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bench.child", case, json.dumps(params), str(result_path)],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone: a clean peak RSS
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - began
        if proc.returncode != 0 or not result_path.exists():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
            why = "timed out" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode}"
            return {"error": f"{case} {why}:\n{tail}", "wall_s": wall}
        result = json.loads(result_path.read_text())
    return {**result, "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall,
            "parent_cpu_s": time.process_time() - parent_cpu}


SLOW_STORE_S = 0.2  # seconds the fault proxy adds to every S3 request of the "s3-slow" store


def start_s3() -> tuple[Any, dict[str, str]]:
    """moto's S3 server in this (otherwise idle) process, as the tests use it; the env children need."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "TUNEWRIGHT_BENCH_BUCKET": BUCKET}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench-secret").create_bucket(Bucket=BUCKET)
    return server, env


def start_slow_proxy(endpoint: str) -> Any:
    """The tests' S3 fault proxy (tests/support/s3.py) in front of `endpoint`, adding SLOW_STORE_S to every
    request, as a distant or throttled store would."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.s3 import FaultProxy

    proxy = FaultProxy(endpoint)
    proxy.latency = SLOW_STORE_S
    return proxy


class Stores:
    """The S3 endpoints comparisons ask for, started on first use and stopped at the end."""

    def __init__(self) -> None:
        self.s3: tuple[Any, dict[str, str]] | None = None
        self.proxy: Any = None

    def env(self, store: str) -> dict[str, str]:
        if not store:
            return {}
        if self.s3 is None:
            self.s3 = start_s3()
        if store == "s3":
            return self.s3[1]
        if self.proxy is None:
            self.proxy = start_slow_proxy(self.s3[1]["AWS_ENDPOINT_URL"])
        return {**self.s3[1], "AWS_ENDPOINT_URL": self.proxy.endpoint}

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.s3 is not None:
            self.s3[0].stop()


def measure(comps: list[Comparison], reps: int, timeout: float, threads: int, budget: float | None = None,
            limit: float | None = None) -> None:
    """Run every comparison's sides `reps` times (a comparison's own `reps` when set); with `budget`, no
    repetition after the first starts once that many seconds have passed. With `limit`, no repetition of a
    comparison starts that would end past `limit` seconds, or, for a comparison that is not a headline one,
    that would leave too little time for the headline comparisons' remaining repetitions (lengths predicted
    from each comparison's mean repetition so far, the headline's from their longest); a comparison stopped so
    runs no more repetitions."""
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    stores = Stores()
    stopped: set[str] = set()
    began = time.perf_counter()
    try:
        for rep in range(max(c.reps or reps for c in comps)):
            if rep and budget is not None and time.perf_counter() - began > budget:
                print(f"  time budget ({budget:.0f} s) spent: stopping after {rep} repetition(s)", flush=True)
                break
            for comp in comps:
                total = comp.reps or reps
                if rep >= total or comp.name in stopped:
                    continue
                if rep and limit is not None:
                    reserved = 0.0 if comp.headline else sum(_left(c, reps) for c in comps
                                                              if c.headline and c.name not in stopped)
                    end = time.perf_counter() - began + comp.seconds / rep + reserved
                    if end > limit:
                        stopped.add(comp.name)
                        why = f" and {reserved:.0f} s kept for the headline comparisons" if reserved else ""
                        print(f"  {comp.name}: a repetition more (~{comp.seconds / rep:.0f} s{why}) would end past "
                              f"{limit:.0f} s: stopping it after {rep} repetition(s)", flush=True)
                        continue
                env = {**base_env, **stores.env(comp.store)}
                order = [(role, comp.side(role)) for role in comp.roles()]
                for role, side in order if rep % 2 == 0 else order[::-1]:
                    result = run_child(side.case, comp.params, env, timeout)
                    comp.runs[role].append(result)
                    comp.seconds += result["wall_s"]
                    print(f"  rep {rep + 1}/{total} {comp.name:9s} {side.label:29s} {brief(result)}", flush=True)
    finally:
        stores.stop()


def _left(comp: Comparison, reps: int) -> float:
    """Predicted seconds of the (headline) repetitions `comp` has yet to run: its longest repetition so far,
    times them (the mean came out short when later repetitions ran slower, and a headline one was lost)."""
    done = len(comp.runs[comp.roles()[0]])
    if not done:
        return 0.0
    longest = max(sum(comp.runs[role][i].get("wall_s", 0.0) for role in comp.roles()) for i in range(done))
    return ((comp.reps or reps) - done) * longest


def brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED"
    if result.get("available") is False:
        return "not available"
    shown = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    shown = dict(list(shown.items())[:8])
    return " ".join(f"{k}={v:.3g}" for k, v in shown.items())


# -- summarising --------------------------------------------------------------------------------------------

def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def available(runs: list[dict[str, Any]]) -> tuple[bool, str]:
    for r in runs:
        if r.get("available") is False:
            return False, r.get("reason", "not available")
        if "error" in r:
            return False, r["error"].splitlines()[0]
    return bool(runs), ""


# name: (comparison, metric, how, against) where `how` combines one repetition of each side and `against` is
# "theirs" (the other tool's defaults) or "best" (whichever of its configurations gives the lowest ratio).
KEY_RATIOS = {
    "dpo_speedup": ("dpo", "steps_per_s", "ours/theirs", "best"),
    "dpo_speedup_vs_default": ("dpo", "steps_per_s", "ours/theirs", "theirs"),
    "dpo_time_to_acc_speedup": ("dpo", "seconds_to_target", "theirs/ours", "best"),
    "sft_speedup": ("sft", "samples_per_s", "ours/theirs", "theirs"),
    "musicgen_speedup": ("musicgen", "steps_per_s", "ours/theirs", "theirs"),
    # What caching the encoders can give at most: 1 / (1 − the encoders' share of a baseline step).
    "musicgen_ceiling": ("musicgen", "encoder_share", "ceiling", "theirs"),
    # Each run measured against itself, then with minus without (see bench/ckpt.py): not steps/s across
    # processes, which moves by more than the overhead with the load other work puts on the cores.
    "ckpt_overhead": ("ckpt", "interval_cost", "ours-theirs", "theirs"),
    "ckpt_overhead_slow_store": ("ckpt-slow", "interval_cost", "ours-theirs", "theirs"),
    # Across the two processes (alternated): median step away from checkpoints, with / without, and the
    # training thread's CPU time per such step. A cost spread over every step would raise both; load
    # from other processes raises only the first.
    "ckpt_step_with_vs_without": ("ckpt", "step_s", "ours/theirs", "theirs"),
    "ckpt_step_cpu_with_vs_without": ("ckpt", "step_cpu_s", "ours/theirs", "theirs"),
    "ckpt_slow_step_with_vs_without": ("ckpt-slow", "step_s", "ours/theirs", "theirs"),
    "ckpt_slow_step_cpu_with_vs_without": ("ckpt-slow", "step_cpu_s", "ours/theirs", "theirs"),
}
DERIVED = {"musicgen_of_ceiling": ("musicgen_speedup", "musicgen_ceiling")}  # per repetition, a / b

TARGETS = {"dpo_speedup": (">=", 1.5), "dpo_time_to_acc_speedup": (">=", 1.2), "sft_speedup": (">=", 1.3),
           "musicgen_of_ceiling": (">=", 0.95), "ckpt_overhead": ("<=", 0.05),
           "ckpt_overhead_slow_store": ("<=", 0.10)}
LAST_LINE = ["dpo_speedup", "dpo_speedup_vs_default", "dpo_time_to_acc_speedup", "sft_speedup", "musicgen_speedup",
             "musicgen_ceiling", "ckpt_overhead"]  # the keys; the rest are in the table and results.json


def combine(ours: float | None, theirs: float | None, how: str) -> float | None:
    if how == "ours/theirs":
        return ratio(ours, theirs)
    if how == "theirs/ours":
        return ratio(theirs, ours)
    if how == "ours-theirs":
        return None if ours is None or theirs is None else ours - theirs
    if how == "ceiling":
        return None if theirs is None or theirs >= 1 else 1 / (1 - theirs)
    raise ValueError(f"unknown combination {how!r}")


def per_rep(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str, how: str) -> list[float]:
    """The combination of repetition i of each side, for every i where both have the figure."""
    values = [combine(a.get(key), b.get(key), how) for a, b in zip(ours, theirs, strict=False)]
    return [v for v in values if v is not None]


def spread(values: list[float]) -> dict[str, Any] | None:
    """Median, min, max (and the values) of per-repetition ratios."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def summarise(comps: list[Comparison]) -> dict[str, Any]:
    out: dict[str, Any] = {"comparisons": {}, "ratios": {}, "spread": {}, "against": {}, "targets": {}}
    by_name = {c.name: c for c in comps}
    for comp in comps:
        ok = [available(comp.runs[role]) for role in comp.roles()]
        out["comparisons"][comp.name] = {
            "ours": comp.ours.label, "theirs": comp.theirs.label, "params": comp.params,
            "labels": {role: comp.side(role).label for role in comp.roles()},
            "available": all(a for a, _ in ok), "why_not": "; ".join(w for _, w in ok if w),
            "seconds": round(comp.seconds, 1), "repetitions": max((len(r) for r in comp.runs.values()), default=0),
            "medians": {role: {m.key: median(comp.runs[role], m.key) for m in comp.metrics} for role in comp.roles()},
            "ratios": {role: {m.key: spread(per_rep(comp.runs["ours"], comp.runs[role], m.key,
                                                    "ours/theirs" if m.higher_is_better else "theirs/ours"))
                              for m in comp.metrics if m.compared} for role in comp.roles()[1:]},
            "runs": comp.runs,
        }
    for name, (comp_name, key, how, against) in KEY_RATIOS.items():
        comp = by_name.get(comp_name)
        result, role = None, None
        if comp is not None and out["comparisons"][comp_name]["available"]:
            candidates = comp.roles()[1:] if against == "best" else ["theirs"]
            med = out["comparisons"][comp_name]["medians"]
            # The other tool's configuration that is faster on this figure: the lowest ratio of medians.
            role = min(candidates, key=lambda r: combine(med["ours"].get(key), med[r].get(key), how) or float("inf"))
            result = spread(per_rep(comp.runs["ours"], comp.runs[role], key, how))
        out["spread"][name] = result
        out["against"][name] = None if role is None else comp.side(role).label  # type: ignore[union-attr]
    for name, (a, b) in DERIVED.items():
        sa, sb = out["spread"][a], out["spread"][b]
        out["spread"][name] = spread([x / y for x, y in zip(sa["values"], sb["values"], strict=False)]) \
            if sa and sb else None
        out["against"][name] = out["against"][a]
    for name, s in out["spread"].items():
        out["ratios"][name] = None if s is None else s["median"]
        if name in TARGETS:
            op, bound = TARGETS[name]
            value = out["ratios"][name]
            met = None if value is None else (value >= bound if op == ">=" else value <= bound)
            out["targets"][name] = {"target": f"{op} {bound:g}", "met": met}
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def fmt_spread(s: dict[str, Any] | None, suffix: str = "x") -> str:
    if s is None:
        return ""
    return f"{fmt(s['median'])}{suffix} ({fmt(s['min'])}–{fmt(s['max'])})"


def table(comps: list[Comparison], summary: dict[str, Any]) -> str:
    lines = [f"{'comparison':10s} {'metric':24s} {'tunewright':>11s} {'other':>11s} {'ratio (min–max)':>22s}  "
             "other side"]
    for comp in comps:
        info = summary["comparisons"][comp.name]
        lines.append(f"{comp.name:10s} {'wall time, all sides':24s} {comp.seconds:>10.0f}s "
                     f"({info['repetitions']} repetitions)")
        if not info["available"]:
            lines.append(f"{comp.name:10s} not available: {info['why_not']}")
            continue
        for role in comp.roles()[1:]:
            for m in comp.metrics:
                if role != "theirs" and not m.compared:
                    continue
                ours, theirs = info["medians"]["ours"][m.key], info["medians"][role][m.key]
                shown = fmt_spread(info["ratios"][role].get(m.key)) if m.compared else ""
                lines.append(f"{comp.name:10s} {m.label:24s} {fmt(ours):>11s} {fmt(theirs):>11s} "
                             f"{shown:>22s}  {comp.side(role).label}")
    lines.append("")
    for name, s in summary["spread"].items():
        if s is not None:
            against = summary["against"].get(name)
            lines.append(f"{name:26s} {fmt_spread(s, '') :>26s}  n={s['n']}" + (f"  vs {against}" if against else ""))
    return "\n".join(lines)


def device() -> dict[str, Any]:
    cpu = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "gpu": None,
            "bf16_native": "avx512_bf16" in flags or "amx_bf16" in flags,
            "python": platform.python_version(),
            "versions": {p: version(p) for p in ("torch", "transformers", "peft", "trl", "accelerate")}}


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "MISSED"


def final_line(summary: dict[str, Any]) -> str:
    values = summary["ratios"]
    return " ".join(f"{k}={'n/a' if values.get(k) is None else f'{values[k]:.2f}'}" for k in LAST_LINE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")),
                   help="repetitions of the headline comparisons, dpo and sft (default 5); musicgen and the "
                        "checkpoint comparisons run 3 unless --reps is lower")
    p.add_argument("--only", default="", help="comma-separated comparisons (dpo, sft, musicgen, ckpt, ckpt-slow)")
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps (plumbing check)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement process")
    p.add_argument("--minutes", type=float, default=float(os.environ.get("BENCH_MINUTES", "15")),
                   help="start no repetition that would end the measurements past this many minutes, keeping the "
                        "time the headline comparisons' (dpo, sft) remaining repetitions need (default 15: the "
                        "issue's bound for `make bench`; 0: no bound)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")),
                   help="torch threads per process (default 1: on 2 cores shared with other work, 2 threads "
                        "wait on each other and step times vary 2-6x)")
    args = p.parse_args(argv)
    comps = comparisons(args.quick)
    for comp in comps:
        comp.reps = min(comp.reps or args.reps, args.reps)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in comps}
        if unknown:
            p.error(f"unknown comparison(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in comps)}")
        comps = [c for c in comps if c.name in wanted]
    began, load_before = time.perf_counter(), os.getloadavg()
    print(f"bench: {len(comps)} comparisons x {args.reps} repetitions, each side in its own process "
          f"({args.threads} torch thread{'s' if args.threads > 1 else ''} each)", flush=True)
    measure(comps, args.reps, args.timeout, args.threads, limit=args.minutes * 60 or None)
    summary = summarise(comps)
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": device(), "reps": args.reps,
               "threads": args.threads, "quick": args.quick, "seconds": round(time.perf_counter() - began, 1),
               "load_average": {"before": load_before, "after": os.getloadavg()}, **summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print()
    print(table(comps, summary))
    print("\ntargets: " + ", ".join(f"{k} {t['target']}: {verdict(t['met'])}" for k, t in summary["targets"].items()))
    print(f"results: {args.out} (whole run {results['seconds']:.0f} s; load average {load_before[0]:.1f} -> "
          f"{results['load_average']['after'][0]:.1f} on {results['device']['cores']} cores)")
    print(final_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
