"""`make bench`: tunewright against what a user would otherwise run, on the same model, data, batch and
hardware, in one run. Prints a table, writes bench/results.json, and ends with one line of key ratios.

Every measurement runs in its own process (`bench.child`), so each side's peak RSS is its own (read with
os.wait4). The two sides of a comparison alternate (A B, B A, A B, ...) over the repetitions, so drift in
machine load hits both; figures are medians over repetitions and ratios are ratios of those medians.

    python -m bench.run [--reps 3] [--only dpo,sft,musicgen,ckpt] [--quick] [--out bench/results.json]
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
    theirs: Side
    params: dict[str, Any]
    metrics: list[Metric]
    needs_s3: bool = False
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"ours": [], "theirs": []})


def comparisons(quick: bool) -> list[Comparison]:
    text = {**TEXT, "model": "tiny-llama"} if quick else TEXT
    steps = (lambda full, short: short) if quick else (lambda full, short: full)
    rss = Metric("peak_rss_mb", "peak RSS", "MB", higher_is_better=False)
    return [
        Comparison(
            "dpo", Side("tunewright dpo", "dpo.tunewright"), Side("TRL DPOTrainer", "dpo.trl"),
            {**text, "steps": steps(27, 4), "warmup": steps(2, 1), "measure_steps": steps(4, 2), "lr": 5e-3,
             "beta": 0.1, "judge_every": 2, "judge_pairs": steps(24, 8), "target": 0.9},
            [Metric("steps_per_s", "steps/s", "1/s"), Metric("samples_per_s", "pairs/s", "1/s"),
             Metric("setup_s", "s setup in trainer", "s", higher_is_better=False),
             Metric("seconds_to_target", "s to held-out acc 0.9", "s", higher_is_better=False),
             Metric("train_seconds_to_target", "  of which in steps", "s", higher_is_better=False),
             Metric("steps_to_target", "steps to acc 0.9", "", compared=False), rss]),
        Comparison(
            "sft", Side("tunewright sft", "sft.tunewright"), Side("TRL SFTTrainer", "sft.trl"),
            {**text, "steps": steps(10, 3), "warmup": steps(2, 1), "lr": 2e-4},
            [Metric("samples_per_s", "samples/s", "1/s"), Metric("tokens_per_s", "tokens/s", "1/s"), rss]),
        Comparison(
            "musicgen", Side("tunewright (cached)", "musicgen.tunewright"),
            Side("encode every step", "musicgen.baseline"),
            {"model": "musicgen-small, widths / 4", "batch": 2, "precision": "fp32", "rank": 16, "lr": 2e-4,
             "steps": steps(10, 3), "warmup": steps(2, 1), "seconds": steps(2.0, 0.5), "prompts": 22, "per_prompt": 1},
            [Metric("steps_per_s", "steps/s", "1/s"),
             Metric("seconds_to_first_step", "s from start to step 1", "s", higher_is_better=False),
             Metric("encoder_share", "encoders' share of step", "", compared=False), rss]),
        Comparison(
            "ckpt", Side("S3 checkpoint every K", "ckpt.with_checkpoints"), Side("no checkpoints", "ckpt.without"),
            {**text, "steps": steps(34, 6), "warmup": steps(5, 1), "every": steps(10, 2), "lr": 2e-4,
             "per_prompt": 11},
            [Metric("steps_per_s", "steps/s (window mean)", "1/s"),
             Metric("step_s", "median step", "s", higher_is_better=False),
             Metric("excess_s_per_position", "s extra after K-th step", "s", compared=False),
             Metric("interval_cost", "  per K steps (fraction)", "", compared=False),
             Metric("sync_s_per_checkpoint", "s per ckpt (sync save)", "s", compared=False),
             Metric("upload_s_per_checkpoint", "s per ckpt (bg upload)", "s", compared=False),
             Metric("upload_cpu_s_per_checkpoint", "CPU s per ckpt (upload)", "s", compared=False),
             Metric("parent_cpu_s", "S3 server CPU s (run)", "s", compared=False)],
            needs_s3=True),
    ]


# -- running children ---------------------------------------------------------------------------------------

def run_child(case: str, params: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one measurement; its result dict plus `peak_rss_mb`, `wall_s` and `parent_cpu_s` (this process's
    CPU time meanwhile: the S3 server's work when one runs here), or `error`."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result_path, log_path = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        began, parent_cpu = time.perf_counter(), time.process_time()
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


def measure(comps: list[Comparison], reps: int, timeout: float, threads: int) -> None:
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    s3 = None
    try:
        for rep in range(reps):
            for comp in comps:
                env = base_env
                if comp.needs_s3:
                    if s3 is None:
                        s3 = start_s3()
                    env = {**base_env, **s3[1]}
                order = [("ours", comp.ours), ("theirs", comp.theirs)]
                for role, side in order if rep % 2 == 0 else order[::-1]:
                    result = run_child(side.case, comp.params, env, timeout)
                    comp.runs[role].append(result)
                    print(f"  rep {rep + 1}/{reps} {comp.name:9s} {side.label:24s} {brief(result)}", flush=True)
    finally:
        if s3 is not None:
            s3[0].stop()


def brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED"
    if result.get("available") is False:
        return "not available"
    shown = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
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


KEY_RATIOS = {  # name: (comparison, metric, how: of the two sides' medians)
    "dpo_speedup": ("dpo", "steps_per_s", "ours/theirs"),
    "dpo_time_to_acc_speedup": ("dpo", "seconds_to_target", "theirs/ours"),
    "sft_speedup": ("sft", "samples_per_s", "ours/theirs"),
    "musicgen_speedup": ("musicgen", "steps_per_s", "ours/theirs"),
    # Each run measured against itself, then with minus without (see bench/ckpt.py): not steps/s across
    # processes, which moves by more than the overhead with the load other work puts on the cores.
    "ckpt_overhead": ("ckpt", "interval_cost", "ours-theirs"),
}

TARGETS = {"dpo_speedup": (">=", 1.5), "sft_speedup": (">=", 1.0), "musicgen_speedup": (">=", 3.0),
           "ckpt_overhead": ("<=", 0.05)}


def combine(ours: float | None, theirs: float | None, how: str) -> float | None:
    if how == "ours/theirs":
        return ratio(ours, theirs)
    if how == "theirs/ours":
        return ratio(theirs, ours)
    if how == "ours-theirs":
        return None if ours is None or theirs is None else ours - theirs
    raise ValueError(f"unknown combination {how!r}")


def summarise(comps: list[Comparison]) -> dict[str, Any]:
    out: dict[str, Any] = {"comparisons": {}, "ratios": {}, "targets": {}}
    by_name = {c.name: c for c in comps}
    for comp in comps:
        ok = [available(comp.runs["ours"]), available(comp.runs["theirs"])]
        medians = {role: {m.key: median(comp.runs[role], m.key) for m in comp.metrics} for role in comp.runs}
        out["comparisons"][comp.name] = {
            "ours": comp.ours.label, "theirs": comp.theirs.label, "params": comp.params,
            "available": all(a for a, _ in ok), "why_not": "; ".join(w for _, w in ok if w),
            "medians": medians, "runs": comp.runs,
        }
    for name, (comp_name, key, how) in KEY_RATIOS.items():
        comp = by_name.get(comp_name)
        value = None
        if comp is not None and out["comparisons"][comp_name]["available"]:
            med = out["comparisons"][comp_name]["medians"]
            value = combine(med["ours"][key], med["theirs"][key], how)
        out["ratios"][name] = value
        if name in TARGETS:
            op, bound = TARGETS[name]
            met = None if value is None else (value >= bound if op == ">=" else value <= bound)
            out["targets"][name] = {"target": f"{op} {bound:g}", "met": met}
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def table(comps: list[Comparison], summary: dict[str, Any]) -> str:
    lines = [f"{'comparison':10s} {'metric':24s} {'tunewright':>14s} {'other':>14s} {'ratio':>7s}  other side"]
    for comp in comps:
        info = summary["comparisons"][comp.name]
        if not info["available"]:
            lines.append(f"{comp.name:10s} not available: {info['why_not']}")
            continue
        for m in comp.metrics:
            ours, theirs = info["medians"]["ours"][m.key], info["medians"]["theirs"][m.key]
            r = ratio(ours, theirs) if m.higher_is_better else ratio(theirs, ours)
            shown = f"{fmt(r)}x" if m.compared and r is not None else ""
            lines.append(f"{comp.name:10s} {m.label:24s} {fmt(ours):>14s} {fmt(theirs):>14s} "
                         f"{shown:>7s}  {comp.theirs.label}")
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
    return " ".join(f"{k}={'n/a' if v is None else f'{v:.2f}'}" for k, v in summary["ratios"].items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "3")))
    p.add_argument("--only", default="", help="comma-separated comparisons (dpo, sft, musicgen, ckpt)")
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps (plumbing check)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement process")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")),
                   help="torch threads per process (default 1: on 2 cores shared with other work, 2 threads "
                        "wait on each other and step times vary 2-6x)")
    args = p.parse_args(argv)
    comps = comparisons(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in comps}
        if unknown:
            p.error(f"unknown comparison(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in comps)}")
        comps = [c for c in comps if c.name in wanted]
    began, load_before = time.perf_counter(), os.getloadavg()
    print(f"bench: {len(comps)} comparisons x {args.reps} repetitions, each side in its own process "
          f"({args.threads} torch thread{'s' if args.threads > 1 else ''} each)", flush=True)
    measure(comps, args.reps, args.timeout, args.threads)
    summary = summarise(comps)
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": device(), "reps": args.reps,
               "threads": args.threads, "quick": args.quick, "seconds": round(time.perf_counter() - began, 1),
               "load_average": {"before": load_before, "after": os.getloadavg()}, **summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print()
    print(table(comps, summary))
    print("\ntargets: " + ", ".join(f"{k} {t['target']}: {verdict(t['met'])}" for k, t in summary["targets"].items()))
    print(f"results: {args.out} ({results['seconds']:.0f} s; load average {load_before[0]:.1f} -> "
          f"{results['load_average']['after'][0]:.1f} on {results['device']['cores']} cores)")
    print(final_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
