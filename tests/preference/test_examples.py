"""Rows → preference examples (pairs from ratings, tie-free lists), bad inputs, and the reference cache.

No model is trained here: a byte tokenizer encodes, and a counting stand-in plays the reference model.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate import PartialState

from tunewright.config import TrainingConfig
from tunewright.data.rows import PreferenceRow, RankedRow, RatedRow
from tunewright.data.store import DatasetError, DatasetStore
from tunewright.models.tokenizer import byte_tokenizer
from tunewright.storage import open_storage
from tunewright.training import reference
from tunewright.training.family import CausalLMFamily
from tunewright.training.objectives import DataError, objective_for


def family(max_length: int = 64) -> CausalLMFamily:
    return CausalLMFamily(byte_tokenizer(), max_length)


def config(max_length: int = 64, **dpo: Any) -> TrainingConfig:
    return TrainingConfig.model_validate({"data": {"maxLength": max_length}, "dpo": dpo})


def texts(example: dict[str, Any], fam: CausalLMFamily) -> list[str]:
    return [fam.tokenizer.decode([t for t, m in zip(s["input_ids"], s["sample_mask"], strict=True) if m],
                                 skip_special_tokens=True) for s in example["samples"]]


def rated(prompt: str, *samples: tuple[str, float]) -> list[RatedRow]:
    return [RatedRow(prompt=prompt, completion=c, rating=r) for c, r in samples]


def test_dpo_pairs_from_ratings_respect_the_gap_and_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    rows = rated("p1", ("great", 5), ("fine", 4), ("poor", 2), ("again great", 5)) + rated("p2", ("alone", 3))
    fam = family()
    with caplog.at_level(logging.INFO):
        examples = objective_for("dpo").examples(rows, fam, config(minRatingGap=2))
    assert sorted(tuple(texts(e, fam)) for e in examples) == [
        ("again great", "poor"), ("fine", "poor"), ("great", "poor")]
    assert "formed 3 preference pairs from 5 rated samples of 2 prompts (rating gap >= 2)" in caplog.text


def test_dpo_on_ratings_without_any_gap_is_a_clear_error() -> None:
    rows = rated("p1", ("a", 3), ("b", 3.5)) + rated("p2", ("c", 1))
    with pytest.raises(DataError, match=r"minRatingGap \(1\); ratings present: \[1.0, 3.0, 3.5\]"):
        objective_for("dpo").examples(rows, family(), config())


def test_pairs_identical_once_encoded_are_skipped_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    # maxLength 12 keeps "the same start" of both samples: the pair no longer says anything.
    rows = [PreferenceRow(prompt="p", chosen="the same start, good end", rejected="the same start, bad end"),
            PreferenceRow(prompt="p", chosen="yes", rejected="no")]
    objective = objective_for("dpo")
    with caplog.at_level(logging.WARNING):
        examples = objective.examples(rows, family(12), config(12))
    assert len(examples) == 1
    assert "skipped 1 pairs whose chosen and rejected samples are identical once encoded" in caplog.text
    with pytest.raises(DataError, match="no usable preference pairs in 1 rows"):
        objective.examples(rows[:1], family(12), config(12))


def test_ranking_lists_from_ratings_never_hold_ties() -> None:
    rows = rated("p", ("a1", 5), ("a2", 5), ("a3", 5), ("b1", 3), ("c1", 1), ("c2", 1)) + rated("q", ("x", 2))
    fam = family()
    examples = objective_for("ranking").examples(rows, fam, config())
    # One list per sample of the largest rating group; smaller groups are cycled; "q" has one rating: no list.
    assert [texts(e, fam) for e in examples] == [["a1", "b1", "c1"], ["a2", "b1", "c2"], ["a3", "b1", "c1"]]


def test_ranked_lists_drop_repeats_and_skip_lists_of_one(caplog: pytest.LogCaptureFixture) -> None:
    rows = [RankedRow(prompt="p", completions=["long shared head A", "long shared head B", "other"]),
            RankedRow(prompt="p", completions=["long shared head C", "long shared head D"])]
    fam = family(14)  # every "long shared head …" sample is cut to the same bytes
    with caplog.at_level(logging.WARNING):
        examples = objective_for("ranking").examples(rows, fam, config(14))
    assert [len(e["samples"]) for e in examples] == [2]
    assert "skipped 1 lists with fewer than two distinct samples" in caplog.text
    with pytest.raises(DataError, match="no rankings of two or more distinct samples"):
        objective_for("ranking").examples(rows[1:], fam, config(14))


@pytest.mark.parametrize(("kind", "row", "message"), [
    ("preference", {"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen and rejected are identical"),
    ("ranked", {"prompt": "p", "completions": ["only one"]}, "at least 2 items"),
    ("rated", {"prompt": "p", "completion": "  ", "rating": 3}, "field 'completion': must not be empty"),
    ("preference", {"prompt": "p", "chosen": "", "rejected": "b"}, "field 'chosen'"),
])
def test_bad_rows_are_refused_at_import_with_line_and_field(tmp_path: Path, kind: str, row: dict,
                                                             message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    store = DatasetStore(open_storage(f"file://{tmp_path}/store"))
    with pytest.raises(DatasetError, match=f"bad.jsonl:1: .*{message}"):
        store.import_file("bad", path, kind)  # type: ignore[arg-type]
    assert store.list() == []


class CountingReference:
    """Stands in for a PEFT model: log π_ref of a sample is −(its length); counts scoring passes."""

    def __init__(self) -> None:
        self.training = True
        self.disabled = False
        self.calls = 0

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        self.disabled = True
        yield
        self.disabled = False

    def eval(self) -> None:
        self.training = False

    def train(self, mode: bool = True) -> None:
        self.training = mode


class LengthFamily:
    name = "length"

    def encode(self, prompt: str, sample: str) -> dict[str, Any]:
        return {"ids": [ord(c) for c in sample if c != "x"]}

    def sample_tokens(self, encoded: dict[str, Any]) -> int:
        return len(encoded["ids"])

    def collate(self, encoded: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {"n": torch.tensor([len(e["ids"]) for e in encoded])}

    def sequence_logprobs(self, model: CountingReference, batch: dict[str, torch.Tensor]) -> Any:
        assert model.disabled and not model.training, "the reference runs with the adapter disabled, in eval mode"
        model.calls += 1
        return -batch["n"].float(), batch["n"]


def stub_trainer(model: CountingReference) -> Any:
    return SimpleNamespace(model=model, add_callback=lambda cb: None,
                           accelerator=SimpleNamespace(autocast=contextlib.nullcontext, state=PartialState()))


def test_reference_scores_are_computed_when_first_met_cached_and_restored_from_a_checkpoint(tmp_path: Path) -> None:
    fam = LengthFamily()

    def datasets() -> list[list[dict[str, Any]]]:
        enc = fam.encode
        return [[{"samples": [enc("p", "aaa"), enc("p", "b")]}, {"samples": [enc("p", "cc"), enc("p", "ffffff")]}],
                [{"samples": [enc("q", "dddd"), enc("q", "ee")]}]]

    def batch(examples: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        flat = [s for e in examples for s in e["samples"]]
        return fam.collate(flat), torch.tensor([i for e in examples for i in e["ids"]])

    first, model = datasets(), CountingReference()
    scores = reference.attach(stub_trainer(model), first, fam, {"baseModel": "m"})
    assert [e["ids"] for ds in first for e in ds] == [[0, 1], [2, 3], [4, 5]]  # training samples first
    assert model.calls == 0  # nothing is scored before training
    before = reference.reference_batches
    assert scores.scores(*batch(first[0][:1])).tolist() == [-3.0, -1.0]
    assert (model.calls, reference.reference_batches - before) == (1, 1)
    assert model.training  # training mode restored
    assert not scores.train_complete
    # A batch of a known and a new example scores only the new one's samples, in one forward.
    assert scores.scores(*batch(first[0][::-1])).tolist() == [-2.0, -6.0, -3.0, -1.0]
    assert (model.calls, scores.scored) == (2, 4) and scores.train_complete
    scores.scores(*batch(first[0]))  # a later epoch
    assert model.calls == 2
    scores.save(tmp_path)

    again, model = datasets(), CountingReference()
    resumed = reference.attach(stub_trainer(model), again, fam, {"baseModel": "m"})
    resumed.restore(tmp_path)
    assert resumed.scores(*batch(again[0])).tolist() == [-3.0, -1.0, -2.0, -6.0]
    assert model.calls == 0  # a resume scores nothing it has
    assert resumed.scores(*batch(again[1])).tolist() == [-4.0, -2.0] and model.calls == 1

    # Another base model (or other data, tokenization, max length) is another key: the checkpoint's are not used.
    third, model = datasets(), CountingReference()
    other = reference.attach(stub_trainer(model), third, fam, {"baseModel": "other"})
    other.restore(tmp_path)
    other.scores(*batch(third[0]))
    assert model.calls == 1


def test_pairs_and_lists_with_an_empty_sample_are_skipped() -> None:
    fam = LengthFamily()  # "x" encodes to nothing, like a clip too short for one frame
    pairs = objective_for("dpo").examples([PreferenceRow(prompt="p", chosen="a", rejected="bb"),
                                           PreferenceRow(prompt="q", chosen="a", rejected="xx")], fam, config())
    assert [[len(s["ids"]) for s in e["samples"]] for e in pairs] == [[1, 2]]
    lists = objective_for("ranking").examples([RankedRow(prompt="p", completions=["a", "xx", "bb"])], fam, config())
    assert [[len(s["ids"]) for s in e["samples"]] for e in lists] == [[1, 2]]


def test_examples_without_reference_scores_are_refused_by_collate() -> None:
    fam = family()
    for method in ("dpo", "ranking"):
        objective = objective_for(method)
        examples = objective.examples([RankedRow(prompt="p", completions=["a", "b"])] if method == "ranking"
                                      else [PreferenceRow(prompt="p", chosen="a", rejected="b")], fam, config())
        with pytest.raises(RuntimeError, match="prepare"):
            objective.collate(examples, fam)
