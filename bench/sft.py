"""SFT: tunewright (`method: sft`) vs TRL's SFTTrainer on the same high-rated samples, LoRA, batch and precision.

Measures samples/s and non-pad tokens/s (warm-up excluded).
"""

from __future__ import annotations

import tempfile
from typing import Any

from bench import data
from bench.measure import StepClock, TokenCounter
from bench.sides import peft_config, run_tunewright, trl_common, trl_model, tunewright_config


def _rows(p: dict[str, Any]) -> list:
    train, _ = data.split(data.preference_pairs(p["per_prompt"]))
    return data.rated(train)  # tunewright keeps rating >= 4 (the chosen samples); TRL gets those directly


def _observe(p: dict[str, Any]) -> tuple[Any, dict]:
    seen: dict[str, Any] = {}

    def hook(trainer: Any) -> None:
        seen["clock"] = clock = StepClock(p["warmup"])
        seen["tokens"] = counter = TokenCounter(trainer.data_collator)
        trainer.data_collator = counter
        trainer.add_callback(clock)

    return hook, seen


def _result(seen: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    clock = seen["clock"]
    steps = clock.steps_per_second()
    tokens = seen["tokens"].tokens_per_sample()
    return {"steps_per_s": steps, "samples_per_s": steps * p["batch"],
            "tokens_per_s": steps * p["batch"] * tokens, "tokens_per_sample": tokens,
            "mean_steps_per_s": clock.mean_steps_per_second(), "step_durations": list(clock.durations().values())}


def tunewright(p: dict[str, Any]) -> dict[str, Any]:
    hook, seen = _observe(p)
    run_tunewright(tunewright_config(p, "sft"), _rows(p), "rated", hook)
    return _result(seen, p)


def trl(p: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = trl_model(p)
    rows = [{"prompt": r.prompt, "completion": r.completion} for r in _rows(p) if r.rating >= 4]
    hook, seen = _observe(p)
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out:
        trainer = SFTTrainer(model=model, args=SFTConfig(**trl_common(p, out)), train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config(p))
        hook(trainer)
        trainer.train()
    return _result(seen, p)
