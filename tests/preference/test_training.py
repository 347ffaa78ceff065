"""DPO and ranking end to end on tiny-llama (in this process, CPU): held-out preference accuracy and Kendall τ
rise on a synthetic task whose preferred samples follow a prompt-dependent rule, and the reference log-probs
are computed lazily, once per sample and run: a run interrupted by SIGTERM and resumed scores no sample twice,
the cached scores equal an up-front pass, and the resumed run equals an uninterrupted one exactly.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

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


def up_front_reference(config: TrainingConfig, rows: list) -> torch.Tensor:
    """Every sample's reference log-prob, scored before any training in batches of 16, in the order of the
    run's sample ids (training examples first, then validation; chosen before rejected)."""
    model, tokenizer, _ = load_base(config.base_model)
    family = CausalLMFamily(tokenizer, config.data.max_length)
    objective = objective_for("dpo")
    samples = [s for part in split_by_prompt(rows, config.data.validation_fraction)
               for e in objective.examples(part, family, config) for s in e["samples"]]
    with torch.no_grad():
        return torch.cat([family.sequence_logprobs(model.eval(), family.collate(samples[i:i + 16]))[0]
                          for i in range(0, len(samples), 16)])


@dataclass
class DpoRun:
    root: Storage
    run_id: str
    report: dict[str, Any]
    before: float
    scored_first: int
    scored_on_resume: int
    forwards_on_resume: int
    up_front: torch.Tensor
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
    start = reference.reference_samples
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SigtermCallback, "on_step_end", stop_at_step_5)
        with pytest.raises(TrainingInterrupted, match="step 5"):
            Run(config, root, run_id="dpo-run", metrics_port=None, display=False).execute()
    scored_first = reference.reference_samples - start
    start, forwards = reference.reference_samples, reference.reference_batches
    outcome = Run(config, root, run_id="dpo-run", resume="latest", metrics_port=None, display=False).execute()
    scored_on_resume = reference.reference_samples - start
    forwards_on_resume = reference.reference_batches - forwards
    seconds = time.monotonic() - began
    Run(config, root, run_id="dpo-straight", metrics_port=None, display=False).execute()
    return DpoRun(root, outcome.run_id, outcome.report, base_preference_accuracy(config, rows),
                  scored_first, scored_on_resume, forwards_on_resume, up_front_reference(config, rows), seconds)


def checkpoint_reference(root: Storage, run_id: str, name: str) -> dict[str, Any]:
    data = root.child("runs", run_id, "checkpoints", name).read_bytes(reference.FILE)
    return torch.load(io.BytesIO(data), weights_only=True)


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


def test_dpo_reference_is_scored_lazily_once_per_sample_across_the_resume(dpo: DpoRun) -> None:
    total = len(dpo.up_front)
    steps_per_epoch = dpo.report["steps"] // 2
    assert dpo.report["resumedFrom"] == "checkpoint-5"
    # The first attempt scored the first 5 steps' pairs and the validation pairs (its initial evaluation),
    # the second only what the rest of epoch 1 met: no sample twice, and nothing in epoch 2.
    assert 0 < dpo.scored_first < total and 0 < dpo.scored_on_resume < total
    assert dpo.scored_first + dpo.scored_on_resume == total
    assert dpo.forwards_on_resume == steps_per_epoch - 5  # one reference forward per step left in epoch 1
    at_5 = checkpoint_reference(dpo.root, dpo.run_id, "checkpoint-5")
    assert int(at_5["known"].sum()) == dpo.scored_first
    final = checkpoint_reference(dpo.root, dpo.run_id, f"checkpoint-{dpo.report['steps']}")
    assert bool(final["known"].all())
    # == an up-front pass within 1e-5 relative (|log p| ~ 190 here, where one float32 step is 1.5e-5)
    torch.testing.assert_close(final["logps"], dpo.up_front.float(), atol=0, rtol=1e-5)


def test_dpo_resumed_after_sigterm_equals_the_uninterrupted_run_exactly(dpo: DpoRun) -> None:
    resumed, straight = metrics(dpo.root, dpo.run_id), metrics(dpo.root, "dpo-straight")
    losses = {m["step"]: m["loss"] for m in straight if "loss" in m}
    assert {m["step"]: m["loss"] for m in resumed if "loss" in m} == losses  # bit for bit, every step
    evals = {m["step"]: m["eval_loss"] for m in straight if "eval_loss" in m}
    assert {m["step"]: m["eval_loss"] for m in resumed if "eval_loss" in m} == evals
    a = load_file(str(dpo.root.child("runs", dpo.run_id, "adapter").local_path() / "adapter_model.safetensors"))
    b = load_file(str(dpo.root.child("runs", "dpo-straight", "adapter").local_path() / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


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
