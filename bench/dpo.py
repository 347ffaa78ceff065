"""DPO: tunewright (`method: dpo`) vs TRL's DPOTrainer on the same PEFT model, pairs, batch and precision.

TRL runs twice: at its defaults (the reference is scored inside every step) and with
`precompute_ref_log_probs=True` (every training pair scored once inside `DPOTrainer.__init__`, before the
first step), the configuration a user who knows TRL would pick for several epochs. tunewright scores each
pair's reference in the first step that trains on it and caches it (training/reference.py).

Measures steps/s (warm-up excluded) and the time until held-out preference accuracy reaches the target
(judged by bench.measure.PreferenceJudge on pairs about subjects never trained on), counted from just before
the trainer is built: `DPOTrainer(...)` for TRL (so its tokenization and precompute pass count), `Run(...)`
for tunewright (so its dataset read, model load and tokenization count too). `setup_s` is the part before
step 1, and `train_seconds_to_target` the time spent in training steps.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench import data
from bench.measure import Encoded, PreferenceJudge, StepClock, TokenCounter
from bench.sides import peft_config, run_tunewright, trl_common, trl_model, tunewright_config


def _rows(p: dict[str, Any]) -> tuple[list, list]:
    train, held_out = data.split(data.preference_pairs(p["per_prompt"]))
    return train, held_out[: p["judge_pairs"]]


def _observe(p: dict[str, Any], judge_pairs: list[tuple[Encoded, Encoded]], pad_id: int) -> tuple[Any, dict]:
    """A hook for the trainer once built, and what it saw; set `seen["started"]` just before building it."""
    seen: dict[str, Any] = {}

    def hook(trainer: Any) -> None:
        seen["clock"] = clock = StepClock(p["warmup"], started=seen["started"])
        seen["judge"] = judge = PreferenceJudge(judge_pairs, clock, p["judge_every"], p["target"],
                                                p["precision"] == "bf16", pad_id,
                                                min_steps=p["warmup"] + p["measure_steps"])
        seen["tokens"] = counter = TokenCounter(trainer.data_collator, p.get("mask_key", "attention_mask"))
        trainer.data_collator = counter
        trainer.add_callback(clock)
        trainer.add_callback(judge)

    return hook, seen


def _result(seen: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    clock, judge = seen["clock"], seen["judge"]
    reached = judge.reached or {}
    setup = clock.setup_seconds()
    seconds = reached.get("seconds")
    return {"steps_per_s": clock.steps_per_second(), "samples_per_s": clock.steps_per_second() * p["batch"],
            "mean_steps_per_s": clock.mean_steps_per_second(), "step_durations": list(clock.durations().values()),
            "setup_s": setup, "seconds_to_target": seconds, "steps_to_target": reached.get("step"),
            "train_seconds_to_target": None if seconds is None or setup is None else seconds - setup,
            "accuracy_history": judge.history, "tokens_per_pair": seen["tokens"].tokens_per_sample()}


def tunewright(p: dict[str, Any]) -> dict[str, Any]:
    from tunewright.models.loading import load_base
    from tunewright.training.family import CausalLMFamily
    from tunewright.training.objectives import DataError, objective_for

    try:
        objective_for("dpo")
    except DataError as err:
        return {"available": False, "reason": str(err)}
    train, held_out = _rows(p)
    _, tokenizer, _ = load_base(p["model"])
    family = CausalLMFamily(tokenizer, p["max_length"])

    def encode(prompt: str, sample: str) -> Encoded:
        e = family.encode(prompt, sample)
        return e["input_ids"], e["sample_mask"]

    pairs = [(encode(r.prompt, r.chosen), encode(r.prompt, r.rejected)) for r in held_out]
    hook, seen = _observe(p, pairs, tokenizer.pad_token_id)
    run_tunewright(tunewright_config(p, "dpo", dpo={"beta": p["beta"]}), train, "preference", hook,
                   before_run=lambda: seen.update(started=time.perf_counter()))
    return _result(seen, p)


def trl(p: dict[str, Any]) -> dict[str, Any]:
    """TRL's defaults: the reference scored in every step."""
    return _trl(p, precompute=False)


def trl_precompute(p: dict[str, Any]) -> dict[str, Any]:
    """`precompute_ref_log_probs=True`: the reference scored once, inside `DPOTrainer.__init__`. Each child
    gets an empty datasets cache (bench.run), so no run reuses another's precomputed file."""
    return _trl(p, precompute=True)


def _trl(p: dict[str, Any], precompute: bool) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    train, held_out = _rows(p)
    model, tokenizer = trl_model(p)

    def encode(prompt: str, sample: str) -> Encoded:  # TRL's layout: prompt + completion + eos, no bos
        prompt_len = len(tokenizer(prompt)["input_ids"])
        ids = tokenizer(prompt + sample + tokenizer.eos_token)["input_ids"][: p["max_length"]]
        return ids, [0] * prompt_len + [1] * (len(ids) - prompt_len)

    pairs = [(encode(r.prompt, r.chosen), encode(r.prompt, r.rejected)) for r in held_out]
    hook, seen = _observe(p, pairs, tokenizer.pad_token_id)
    dataset = Dataset.from_list([r.model_dump() for r in train])
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out:
        args = DPOConfig(**trl_common(p, out), beta=p["beta"], precompute_ref_log_probs=precompute)
        seen["started"] = time.perf_counter()
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config(p))
        hook(trainer)
        trainer.train()
    return _result(seen, p)
