"""`make demo`: train a real SFT adapter on CPU from embedded defaults and show that it learned.

Local storage (./.tunewright), the `tiny-llama` preset (random weights, built from a config), a synthetic
rated dataset whose high-rated completions follow a prompt-dependent rule (see data/synthetic.py).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from rich.console import Console

from tunewright.config import TrainingConfig, validate
from tunewright.data.store import DatasetStore
from tunewright.data.synthetic import MOODS, rated_rows, write_jsonl
from tunewright.registry import Registry
from tunewright.storage import open_storage

DATASET = "demo-songs"
CONFIG: dict[str, Any] = {
    "name": "demo-songs-sft",
    "method": "sft",
    "baseModel": "tiny-llama",
    "dataset": {"id": DATASET},
    "training": {"learningRate": 5e-3, "epochs": 20, "batchSize": 8, "logEverySteps": 10, "warmupRatio": 0.05},
    "data": {"minRating": 4, "validationFraction": 0.2},
    # A random tiny model needs its output layer trained too (see shared notes): lm_head in full.
    "lora": {"rank": 16, "alpha": 32, "modulesToSave": ["lm_head"]},
    "checkpointing": {"everySteps": 50, "keepLast": 2},
    "earlyStopping": {"patience": 3},
}
HELD_OUT_PROMPTS = ["a happy song about the lighthouse:", "a sad song about the lighthouse:"]


def ensure_dataset(store: DatasetStore, console: Console) -> None:
    if any(m.id == DATASET for m in store.list()):
        console.print(f"dataset {DATASET} already imported: reusing it")
        return
    with tempfile.TemporaryDirectory() as tmp:
        meta = store.import_file(DATASET, write_jsonl(rated_rows(), f"{tmp}/{DATASET}.jsonl"), "rated")
    console.print(f"imported {meta.samples} rated samples as dataset {meta.id} ({meta.digest[:19]}…)")


def mood_score(text: str, mood: str) -> float:
    """Share of mood words in `text` that belong to the requested mood (the rule the data rewards)."""
    words = [w.strip(".,") for w in text.split()]
    hits = [w for w in words if w in MOODS["happy"] or w in MOODS["sad"]]
    return sum(w in MOODS[mood] for w in hits) / len(hits) if hits else 0.0


def show_samples(model: Any, tokenizer: Any, console: Console) -> None:
    from tunewright.training.listen import generate_text as generate

    console.rule("[bold]generations for prompts the adapter never saw")
    for prompt in HELD_OUT_PROMPTS:
        mood = "happy" if "happy" in prompt else "sad"
        with model.disable_adapter():
            base = generate(model, tokenizer, prompt)
        tuned = generate(model, tokenizer, prompt)
        console.print(f"[bold]{prompt}[/bold]")
        console.print(f"  base    : {base!r}  (mood words on-rule: {mood_score(base, mood):.0%})")
        console.print(f"  adapter : {tuned!r}  (mood words on-rule: {mood_score(tuned, mood):.0%})")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(soft_wrap=True)  # URIs and commands stay whole off a terminal too
    root = open_storage()
    console.rule(f"[bold]tunewright demo — storage {root.uri}")
    store = DatasetStore(root)
    ensure_dataset(store, console)
    config: TrainingConfig = validate(CONFIG)
    from tunewright.training.run import Run

    outcome = Run(config, root, metrics_port=None).execute()
    report = outcome.report
    if outcome.model is not None:
        show_samples(outcome.model, outcome.processor, console)
    console.rule("[bold]result")
    console.print(f"validation loss: {report['initialEvalLoss']:.3f} before training → "
                  f"{report['bestEvalLoss']:.3f} after (best step {report['bestStep']})")
    console.print(f"adapter (PEFT directory): {outcome.result.adapter_uri}")
    console.print("registered adapters:")
    for record in Registry(root).list():
        console.print(f"  {record.name} v{record.version}  {record.method}  dataset={record.dataset.id}  "
                      f"final loss={record.report.final_loss:.4f}")
    console.print("Next: `tunewright adapter list`, `tunewright adapter show demo-songs-sft`, "
                  "`tunewright report demo-songs-sft`.")
    # Last: the page to open (curves, base vs adapter generations).
    console.print(f"report: {outcome.result.report_page_uri}", highlight=False)


if __name__ == "__main__":
    main()
