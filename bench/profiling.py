"""Where a training step's time goes, per side: `python -m bench.profiling [--only dpo,sft] [--quick]`.

Runs the DPO and SFT sides of `make bench` (same model, data, batch, one torch thread, each in its own process
through bench.child) with torch.profiler over `STEPS` steps after the warm-up, and prints per step: the
operators with the most self CPU time, the time in forward and backward passes, and how many LM-head
projections (`aten::linear`/`addmm`/`mm` calls whose output is vocabulary-wide) the step made. Writes
bench/profile-results.json. Not part of `make bench` (the profiler slows steps); no figure is asserted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parent.parent
FROM, STEPS = 3, 3  # profile steps 3..5: after the warm-up, before DPO's judge may stop training at step 6
TOP = 12
SIDES = {"dpo": ["dpo.tunewright", "dpo.trl", "dpo.trl_precompute"], "sft": ["sft.tunewright", "sft.trl"]}


class StepProfiler(TrainerCallback):
    """torch.profiler around optimizer steps FROM .. FROM+STEPS-1 (CPU activities, with shapes)."""

    def __init__(self) -> None:
        self.profile: Any = None
        self.steps = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.profiler

        if state.global_step + 1 == FROM:
            self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                  record_shapes=True)
            self.profile.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.profile is not None and self.steps < STEPS:
            self.steps += 1
            if self.steps == STEPS:
                self.profile.__exit__(None, None, None)

    def summary(self, vocab: int) -> dict[str, Any]:
        if self.profile is None or self.steps < STEPS:
            return {"error": f"only {self.steps} of {STEPS} steps profiled"}
        events = self.profile.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e6 / STEPS
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
        by_shape = self.profile.key_averages(group_by_input_shape=True)
        head = [e for e in by_shape if e.key in ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear")
                and any(vocab in (shape or []) for shape in (e.input_shapes or []))]
        passes = {name: sum(e.cpu_time_total for e in events if e.key.startswith(prefix)) / 1e6 / STEPS
                  for name, prefix in (("backward", "autograd::engine::evaluate_function"),)}
        return {"seconds_per_step": total,
                "top": [{"op": e.key, "self_s_per_step": e.self_cpu_time_total / 1e6 / STEPS,
                         "calls_per_step": e.count / STEPS} for e in top],
                "vocab_matmuls_per_step": sum(e.count for e in head if e.key != "aten::linear") / STEPS,
                "vocab_matmul_s_per_step": sum(e.self_cpu_time_total for e in head) / 1e6 / STEPS,
                **{f"{k}_s_per_step": v for k, v in passes.items()}}


def profiled(case: str, p: dict[str, Any]) -> dict[str, Any]:
    """Run bench case `module.function` with a StepProfiler attached to its trainer (in this process)."""
    module_name, function = case.rsplit(".", 1)
    module = importlib.import_module(f"bench.{module_name}")
    profiler = StepProfiler()
    observe = module._observe

    def with_profiler(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        hook, seen = observe(*args, **kwargs)

        def both(trainer: Any) -> None:
            hook(trainer)
            trainer.add_callback(profiler)
            seen["vocab"] = trainer.model.get_output_embeddings().weight.shape[0]

        seen_ref.append(seen)
        return both, seen

    seen_ref: list[dict[str, Any]] = []
    module._observe = with_profiler
    try:
        result = getattr(module, function)(p)
    finally:
        module._observe = observe
    return {"case": case, "steps_per_s": result.get("steps_per_s"), **profiler.summary(seen_ref[0]["vocab"])}


def dpo_tunewright(p: dict[str, Any]) -> dict[str, Any]:
    return profiled("dpo.tunewright", p)


def dpo_trl(p: dict[str, Any]) -> dict[str, Any]:
    return profiled("dpo.trl", p)


def dpo_trl_precompute(p: dict[str, Any]) -> dict[str, Any]:
    return profiled("dpo.trl_precompute", p)


def sft_tunewright(p: dict[str, Any]) -> dict[str, Any]:
    return profiled("sft.tunewright", p)


def sft_trl(p: dict[str, Any]) -> dict[str, Any]:
    return profiled("sft.trl", p)


def main(argv: list[str] | None = None) -> int:
    from bench.run import comparisons, run_child

    parser = argparse.ArgumentParser(prog="bench.profiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="dpo,sft")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "profile-results.json"))
    args = parser.parse_args(argv)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": path}
    params = {c.name: c.params for c in comparisons(args.quick)}
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        p = {**params[name], "steps": max(params[name]["steps"], FROM + STEPS + 1)}
        for case in SIDES[name]:
            out = run_child("profiling." + case.replace(".", "_"), p, env, 600)
            results[case] = out
            if "error" in out:
                print(f"{case}: {out['error']}")
                continue
            print(f"\n{case}: {out['seconds_per_step']:.3f} s CPU per step (profiled; {out['steps_per_s']:.2f} "
                  f"steps/s unprofiled window), vocabulary-wide matmuls {out['vocab_matmuls_per_step']:.0f} per step "
                  f"= {out['vocab_matmul_s_per_step']:.3f} s, backward {out['backward_s_per_step']:.3f} s")
            for row in out["top"]:
                print(f"    {row['op']:45s} {row['self_s_per_step']:8.3f} s {row['calls_per_step']:8.0f} calls")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
