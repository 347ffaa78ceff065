"""How each tool is driven: tunewright through its public `Run` (the same path as `tunewright-train`),
TRL through its trainers with the settings a user would pass (defaults + what CPU training requires).

The harness observes training only through HF TrainerCallbacks and a counting wrapper around the data
collator, attached right after each trainer is built.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunewright.config import TrainingConfig
from tunewright.data.rows import Kind, Modality
from tunewright.data.store import DatasetStore
from tunewright.data.synthetic import write_jsonl
from tunewright.models.presets import materialise
from tunewright.storage import open_storage

Hook = Callable[[Any], None]  # called with each trainer right after it is built

DATASET_ID = "bench"


def lora_settings(p: dict[str, Any]) -> dict[str, Any]:
    """The one LoRA configuration both tools train (tunewright's defaults: r16, α32, the attention projections)."""
    return {"r": p["rank"], "lora_alpha": 2 * p["rank"], "lora_dropout": 0.0,
            "target_modules": p.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])}


# -- tunewright ---------------------------------------------------------------------------------------------

def tunewright_config(p: dict[str, Any], method: str, **extra: Any) -> TrainingConfig:
    lora = lora_settings(p)
    return TrainingConfig.model_validate({
        "method": method, "baseModel": p["model"], "dataset": {"id": DATASET_ID},
        "training": {"maxSteps": p["steps"], "batchSize": p["batch"], "learningRate": p["lr"],
                     "precision": p["precision"], **extra.pop("training", {})},
        "data": {"maxLength": p.get("max_length", 512), "validationFraction": 0.0},
        "lora": {"rank": lora["r"], "alpha": lora["lora_alpha"], "dropout": lora["lora_dropout"],
                 "targetModules": lora["target_modules"]},
        **extra,
    })


def run_tunewright(config: TrainingConfig, rows: list | Path, kind: Kind, hook: Hook, root_uri: str | None = None,
                   modality: Modality = "text", before_run: Callable[[], None] = lambda: None) -> Any:
    """Import `rows` (or a JSONL file) as a dataset into a storage root (a temp dir by default), execute a Run
    (`before_run` is called just before it is created)."""
    import tunewright.training.run as run_module

    with tempfile.TemporaryDirectory(prefix="tunewright-bench-") as tmp:
        root = open_storage(root_uri or f"file://{tmp}/root")
        path = rows if isinstance(rows, Path) else write_jsonl(rows, Path(tmp) / "rows.jsonl")
        DatasetStore(root).import_file(DATASET_ID, path, kind, modality)
        base = run_module.ObjectiveTrainer

        class Observed(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any):
                super().__init__(*args, **kwargs)
                hook(self)

        run_module.ObjectiveTrainer = Observed
        try:
            before_run()
            return run_module.Run(config, root, display=False).execute()
        finally:
            run_module.ObjectiveTrainer = base


# -- TRL ----------------------------------------------------------------------------------------------------

def trl_model(p: dict[str, Any]) -> tuple[Any, Any]:
    """The same preset, loaded the way a TRL user loads any checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = materialise(p["model"])
    return AutoModelForCausalLM.from_pretrained(path, dtype="float32"), AutoTokenizer.from_pretrained(path)


def trl_common(p: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """TRL defaults, except: CPU (use_cpu; not in `make bench-gpu`), the precision both tools use, no
    activation checkpointing (TRL turns it on by default; it only slows small models and tunewright does not
    use it), and the run's
    steps/batch/lr/length. Progress bars and reporting integrations off, as in tunewright."""
    return {"output_dir": output_dir, "use_cpu": not p.get("gpu", False), "bf16": p["precision"] == "bf16",
            "activation_checkpointing": False, "max_steps": p["steps"], "per_device_train_batch_size": p["batch"],
            "learning_rate": p["lr"], "max_length": p["max_length"], "report_to": [], "disable_tqdm": True,
            "seed": 42}


def peft_config(p: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **lora_settings(p))
