"""DPO and ranking end to end on tiny-llama (in this process, CPU): held-out preference accuracy and Kendall τ
rise on a synthetic task whose preferred samples follow a prompt-dependent rule, and the reference log-probs
are computed once per run: a run interrupted by SIGTERM and resumed does not score the reference again.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tunewright.config import TrainingConfig, validate
from tunewright.data import synthetic
from tunewright.data.split import split_by_prompt
from tunewright.data.store import DatasetStore
from tunewright.models.loading import load_base
from tunewright.storage import Storage, open_storage
from tunewright.training import reference
from tunewright.training.callbacks import SigtermCallback
from tunewright.training.family import CausalLMFamily
from tunewright.training.objectives import objective_for
from tunewright.training.run import Run, TrainingInterrupted

pytestmark = pytest.mark.slow

BASE: dict[str, Any] = {  # learns on tiny random models: see shared/notes/calibration.md
    "baseModel": "tiny-llama", "dataset": {"id": "songs"},
    "training": {"learningRate": 5e-3, "epochs": 2, "batchSize": 8, "logEverySteps": 1},
    "data": {"validationFraction": 0.2, "maxLength": 96},
    "lora": {"rank": 8, "alpha": 16, "modulesToSave": ["lm_head"]},
}


def setup(tmp: Path, method: str, rows: list, kind: str, **overrides: Any) -> tuple[Storage, TrainingConfig]:
    root = open_storage(f"file://{tmp}/store")
    DatasetStore(root).import_file("songs", synthetic.write_jsonl(rows, tmp / "songs.jsonl"), kind)  # type: ignore[arg-type]
    return root, validate({**BASE, "method": method, **overrides})


def metrics(root: Storage, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in root.read_text(f"runs/{run_id}/metrics.jsonl").splitlines()]


def base_preference_accuracy(config: TrainingConfig, rows: list) -> float:
    """How often the untrained base model already gives the chosen sample the higher likelihood."""
    model, tokenizer, _ = load_base(config.base_model)
    family = CausalLMFamily(tokenizer, config.data.max_length)
    _, held_out = split_by_prompt(rows, config.data.validation_fraction)
    examples = objective_for("dpo").examples(held_out, family, config)
    logps = []
    with torch.no_grad():
        for e in examples:
            logps.append(family.sequence_logprobs(model.eval(), family.collate(e["samples"]))[0])
    return sum(float(lp[0] > lp[1]) for lp in logps) / len(logps)


@dataclass
class DpoRun:
    root: Storage
    run_id: str
    report: dict[str, Any]
    before: float
    scored_first: int
    scored_on_resume: int
    seconds: float


@pytest.fixture(scope="module")
def dpo(tmp_path_factory: pytest.TempPathFactory) -> DpoRun:
    rows = synthetic.preference_rows()
    root, config = setup(tmp_path_factory.mktemp("dpo"), "dpo", rows, "preference")
    began = time.monotonic()

    def stop_at_step_5(self: SigtermCallback, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.requested = self.requested or state.global_step == 5  # as if SIGTERM arrived during step 5
        original(self, args, state, control, **kw)

    original = SigtermCallback.on_step_end
    start = reference.reference_batches
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SigtermCallback, "on_step_end", stop_at_step_5)
        with pytest.raises(TrainingInterrupted, match="step 5"):
            Run(config, root, run_id="dpo-run", metrics_port=None, display=False).execute()
    scored_first = reference.reference_batches - start
    start = reference.reference_batches
    outcome = Run(config, root, run_id="dpo-run", resume="latest", metrics_port=None, display=False).execute()
    scored_on_resume = reference.reference_batches - start
    seconds = time.monotonic() - began
    return DpoRun(root, outcome.run_id, outcome.report, base_preference_accuracy(config, rows),
                  scored_first, scored_on_resume, seconds)


def test_dpo_lifts_held_out_preference_accuracy_and_lowers_the_loss_below_ln2(dpo: DpoRun) -> None:
    logged = metrics(dpo.root, dpo.run_id)
    last = [m for m in logged if "eval_loss" in m][-1]
    print(f"dpo: held-out accuracy {dpo.before:.2f} (base model) -> {last['eval_rewards/accuracies']:.2f}, "
          f"first train loss {logged[0]['loss']:.3f}, eval loss -> {last['eval_loss']:.3f}, "
          f"margin {last['eval_rewards/margins']:.3f}, {dpo.seconds:.1f} s for both attempts")
    assert dpo.before < 0.8  # the random base model has no idea of the rule
    assert logged[0]["step"] == 1 and logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == ref
    assert last["eval_rewards/accuracies"] >= 0.9
    assert last["eval_loss"] < math.log(2) - 0.15
    assert last["eval_rewards/margins"] > 0.2
    assert last["eval_rewards/chosen"] > last["eval_rewards/rejected"]
    assert dpo.report["steps"] == last["step"]


def test_dpo_reference_is_scored_once_and_reused_by_the_resumed_attempt(dpo: DpoRun) -> None:
    assert dpo.scored_first > 0
    assert dpo.scored_on_resume == 0
    assert len(dpo.root.list(f"runs/{dpo.run_id}/reference")) == 1
    assert dpo.report["resumedFrom"] == "checkpoint-5"


def plot_titles(root: Storage, run_id: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]+)">',
                      root.read_text(f"runs/{run_id}/report.html"))


def test_dpo_report_page_plots_rewards_and_accuracy_and_keeps_the_first_attempts_checkpoints(dpo: DpoRun) -> None:
    assert plot_titles(dpo.root, dpo.run_id) == ["loss over steps", "Learning rate", "Gradient norm (before clipping)",
                                                 "rewards over steps", "Preference accuracy"]
    steps = [c["step"] for c in dpo.report["checkpoints"]]
    assert 5 in steps and steps == sorted(steps)  # the interrupted attempt's SIGTERM checkpoint is marked too


def test_ranking_on_rated_lists_of_mixed_length_lifts_held_out_kendall_tau(tmp_path: Path) -> None:
    # Every other prompt loses its middle-rated samples: lists of three and of two share batches.
    rows = synthetic.rated_rows()
    prompts = sorted({r.prompt for r in rows})
    rows = [r for r in rows if r.rating != 3 or prompts.index(r.prompt) % 2]
    root, config = setup(tmp_path, "ranking", rows, "rated",
                         ranking={"loss": "margin", "margin": 0.5, "beta": 0.5, "sftWeight": 0.1})
    began = time.monotonic()
    outcome = Run(config, root, run_id="ranking-run", metrics_port=None, display=False).execute()
    evals = [m for m in metrics(root, outcome.run_id) if "eval_loss" in m]
    last = evals[-1]
    print(f"ranking: held-out Kendall tau 0 (untrained: all rewards 0) -> {last['eval_ranking/kendall_tau']:.2f}, "
          f"pairwise accuracy {last['eval_ranking/pairwise_accuracy']:.2f}, eval loss "
          f"{outcome.report['initialEvalLoss']:.3f} -> {last['eval_loss']:.3f}, {time.monotonic() - began:.1f} s")
    assert last["eval_ranking/kendall_tau"] >= 0.5
    assert last["eval_ranking/pairwise_accuracy"] >= 0.75
    assert last["eval_loss"] < outcome.report["initialEvalLoss"]
    assert plot_titles(root, outcome.run_id)[-1] == "Kendall τ"
