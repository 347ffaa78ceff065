"""`make bench-gpu`: the DPO and SFT comparisons of `make bench` on a GPU, in bf16, on a ~1B-parameter
random-weight causal LM built from a config (`llama-1b`: hidden 2048, 22 layers, 16 heads, MLP 4096, vocab
32,000: 1.05 B parameters), plus the model-FLOPs utilisation (MFU) of tunewright's LoRA SFT.

    python -m bench.gpu [--reps 2] [--tiny] [--out bench/gpu-results.json]

Sized for one call of at most 8 minutes on a lent GPU machine (building the model's weights on its CPU
takes about a minute of that); `--tiny` runs the same plumbing with tiny-llama on the CPU (bf16 autocast),
to check it without a GPU. Each side runs in its own process (bench.child), as in `make bench`; the table,
the per-repetition ratio spreads and the last line come from bench.run.

MFU = tokens/s × FLOPs per token / the GPU's peak dense bf16 FLOP/s. FLOPs per token for LoRA training:
2N for the forward and 2N for the backward's input gradients (the frozen weights get no weight gradient;
the adapters' own FLOPs are < 1 % and left out), N the model's parameters, plus the attention scores
(4 · layers · sequence · hidden per token, forward and backward). Tokens are the batches' real
(non-padding) tokens, so padding counts against MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import run as bench_run

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llama-1b"
DIMS = {"hidden": 2048, "layers": 22, "heads": 16, "vocab": 32000}
# Peak dense bf16 tensor FLOP/s by device name (vendor data sheets; SXM parts).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def register() -> None:
    """Add the `llama-1b` preset (built once per machine into the preset cache, bf16 weights on disk)."""
    from tunewright.models import presets

    if MODEL not in presets.PRESETS:
        def build() -> Any:
            model, tokenizer = presets._llama(DIMS["hidden"], DIMS["layers"], DIMS["heads"], DIMS["vocab"])
            return model, tokenizer

        presets.PRESETS[MODEL] = build


def parameters() -> int:
    h, n, v = DIMS["hidden"], DIMS["layers"], DIMS["vocab"]
    return n * (4 * h * h + 3 * h * 2 * h + 2 * h) + 2 * v * h + h  # attention, MLP (2h wide), norms; emb + head


def flops_per_token(seq: float) -> float:
    return 4 * parameters() + 4 * DIMS["layers"] * seq * DIMS["hidden"]


# -- the sides, in their own processes (bench.child "gpu.<function>") -------------------------------------

def _side(case: str, p: dict[str, Any]) -> dict[str, Any]:
    import importlib

    if p["model"] == MODEL:
        register()
    module_name, function = case.split(".")
    result = getattr(importlib.import_module(f"bench.{module_name}"), function)(p)
    try:
        import torch

        if torch.cuda.is_available():
            result["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    except ImportError:
        pass
    return result


def dpo_tunewright(p: dict[str, Any]) -> dict[str, Any]:
    return _side("dpo.tunewright", p)


def dpo_trl(p: dict[str, Any]) -> dict[str, Any]:
    return _side("dpo.trl", p)


def dpo_trl_precompute(p: dict[str, Any]) -> dict[str, Any]:
    return _side("dpo.trl_precompute", p)


def sft_tunewright(p: dict[str, Any]) -> dict[str, Any]:
    result = _side("sft.tunewright", p)
    return result | mfu(result, p)


def sft_trl(p: dict[str, Any]) -> dict[str, Any]:
    result = _side("sft.trl", p)
    return result | mfu(result, p)


def mfu(result: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    import torch

    if p["model"] != MODEL or not torch.cuda.is_available():
        return {}
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    achieved = result["tokens_per_s"] * flops_per_token(result["tokens_per_sample"])
    return {"tflops": achieved / 1e12, "mfu": None if peak is None else achieved / peak, "device_name": name}


# -- the run ------------------------------------------------------------------------------------------------

def comparisons(tiny: bool) -> list[bench_run.Comparison]:
    from bench.run import Comparison, Metric, Side

    text = {"model": "tiny-llama" if tiny else MODEL, "batch": 8, "max_length": 128 if tiny else 256,
            "precision": "bf16", "rank": 16, "per_prompt": 6, "gpu": not tiny}
    rss = Metric("peak_rss_mb", "peak RSS", "MB", higher_is_better=False)
    gpu_memory = Metric("gpu_peak_memory_gb", "GPU peak memory", "GB", higher_is_better=False)
    return [
        Comparison(
            "dpo", Side("tunewright dpo", "gpu.dpo_tunewright"), Side("TRL DPOTrainer defaults", "gpu.dpo_trl"),
            {**text, "steps": 4 if tiny else 27, "warmup": 1 if tiny else 2, "measure_steps": 2 if tiny else 6,
             "lr": 5e-3 if tiny else 1e-4, "beta": 0.1, "judge_every": 2, "judge_pairs": 8 if tiny else 24,
             "target": 0.9},
            [Metric("steps_per_s", "steps/s", "1/s"), Metric("mean_steps_per_s", "steps/s (window mean)", "1/s"),
             Metric("setup_s", "s before step 1", "s", higher_is_better=False),
             Metric("seconds_to_target", "s to held-out acc 0.9", "s", higher_is_better=False),
             Metric("steps_to_target", "steps to acc 0.9", "", compared=False), gpu_memory, rss],
            alternatives=[Side("TRL precompute_ref_log_probs", "gpu.dpo_trl_precompute")]),
        Comparison(
            "sft", Side("tunewright sft", "gpu.sft_tunewright"), Side("TRL SFTTrainer", "gpu.sft_trl"),
            {**text, "steps": 3 if tiny else 20, "warmup": 1 if tiny else 3, "lr": 2e-4},
            [Metric("samples_per_s", "samples/s", "1/s"), Metric("tokens_per_s", "tokens/s", "1/s"),
             Metric("tflops", "model TFLOP/s", "1/s"), Metric("mfu", "MFU", "", compared=False), gpu_memory, rss]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny-llama on the CPU: checks the plumbing only")
    parser.add_argument("--out", default=str(ROOT / "bench" / "gpu-results.json"))
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per measurement process")
    parser.add_argument("--budget", type=float, default=200.0,
                        help="no repetition after the first starts once this many seconds of measuring have passed "
                             "(keeps one call within 8 minutes)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if not args.tiny:  # build the 1B model's weights once, before any side's clock runs
        register()
        from tunewright.models.presets import materialise

        print(f"bench-gpu: {MODEL} ({parameters() / 1e9:.2f} B parameters) at {materialise(MODEL)} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    comps = comparisons(args.tiny)
    threads = 1 if args.tiny else int(os.environ.get("BENCH_THREADS", "4"))
    bench_run.measure(comps, args.reps, args.timeout, threads, budget=args.budget)
    summary = bench_run.summarise(comps)
    results = {"date": bench_run.datetime.now(bench_run.UTC).isoformat(timespec="seconds"),
               "device": bench_run.device() | {"gpu": gpu_name()}, "reps": args.reps, "tiny": args.tiny,
               "model": "tiny-llama" if args.tiny else f"{MODEL} {DIMS}", "parameters": parameters(),
               "seconds": round(time.perf_counter() - began, 1), **summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print()
    print(bench_run.table(comps, summary))
    print(f"results: {args.out} ({results['seconds']:.0f} s)")
    print(final_line(summary, comps))
    return 0


def final_line(summary: dict[str, Any], comps: list[bench_run.Comparison]) -> str:
    ratios = summary["ratios"]
    line = " ".join(f"{k}={'n/a' if ratios.get(k) is None else f'{ratios[k]:.2f}'}"
                    for k in ("dpo_speedup", "dpo_speedup_vs_default", "dpo_time_to_acc_speedup", "sft_speedup"))
    mfu = bench_run.median(comps[1].runs["ours"], "mfu")
    return f"{line} sft_mfu={'n/a' if mfu is None else f'{mfu:.3f}'}"


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
