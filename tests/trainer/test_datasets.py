"""Dataset import, ids, and the deterministic split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewright.data import synthetic
from tunewright.data.split import split_by_prompt
from tunewright.data.store import DatasetError, DatasetStore
from tunewright.ids import InvalidId
from tunewright.storage import open_storage


def _write(tmp: Path, lines: list) -> Path:
    path = tmp / "rows.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(open_storage(f"file://{tmp_path}/root"))


GOOD = {"prompt": "p", "completion": "c", "rating": 5}


@pytest.mark.parametrize(
    ("kind", "bad", "message"),
    [
        ("rated", {"prompt": "p", "completion": "c"}, "rows.jsonl:2: field 'rating': Field required"),
        ("rated", {"prompt": "p", "completion": "c", "rating": "great"}, "rows.jsonl:2: field 'rating'"),
        ("rated", {"prompt": "", "completion": "c", "rating": 1}, "rows.jsonl:2: field 'prompt'"),
        ("rated", {"prompt": "p", "completion": "  ", "rating": 1}, "field 'completion': must not be empty"),
        ("rated", {**GOOD, "score": 1}, "rows.jsonl:2: field 'score': unknown field"),
        ("rated", "{not json", "rows.jsonl:2: not valid JSON"),
        ("rated", "[1, 2]", "rows.jsonl:2: a row must be a JSON object"),
        ("preference", {"prompt": "p", "chosen": "a", "rejected": "a"}, "chosen and rejected are identical"),
        ("ranked", {"prompt": "p", "completions": ["only"]}, "field 'completions'"),
        ("ranked", {"prompt": "p", "completions": ["a", "a"]}, "completions must be distinct"),
        ("rated", '{"prompt": "p", "completion": "c", "rating": NaN}', "field 'rating': must be a finite number"),
        ("rated", '{"prompt": "p", "completion": "c", "rating": Infinity}', "field 'rating': must be a finite"),
        ("rated", '{"prompt": "p", "completion": "c", "rating": 1e999}', "field 'rating': must be a finite"),
        ("rated", {**GOOD, "rating": True}, "field 'rating': must be a number (not a boolean or string)"),
        ("rated", {**GOOD, "rating": "5"}, "field 'rating': must be a number (not a boolean or string)"),
        ("rated", {**GOOD, "prompt": 7}, "field 'prompt': must be a string"),
        ("rated", {**GOOD, "completion": "\u200b\u2060\ufeff"}, "field 'completion': must not be empty, "
         "whitespace or invisible characters only"),
        ("rated", {**GOOD, "tags": ["ok", 1]}, "field 'tags.1': must be a string"),
        ("ranked", {"prompt": "p", "completions": ["a", "\u200d"]}, "field 'completions': must not be empty"),
    ],
)
def test_malformed_row_is_rejected_with_file_line_and_field(store: DatasetStore, tmp_path: Path, kind: str,
                                                            bad: object, message: str) -> None:
    first = {"rated": GOOD, "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
             "ranked": {"prompt": "p", "completions": ["a", "b"]}}[kind]
    with pytest.raises(DatasetError) as err:
        store.import_file("ds", _write(tmp_path, [first, bad]), kind)  # type: ignore[arg-type]
    assert message in str(err.value)
    assert store.list() == []  # nothing half-imported


@pytest.mark.parametrize("bad_id", ["../escape", "nl\n", "nl\r\n", "\uff11a", "UPPER", "a/b", "-lead", "trail-", "",
                                    "x" * 64, "a_b", ".."])
def test_ids_that_are_not_dns1123_labels_are_refused(store: DatasetStore, tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(InvalidId):
        store.import_file(bad_id, _write(tmp_path, [GOOD]), "rated")
    assert not (tmp_path / "escape").exists()


def test_import_list_show_and_no_silent_overwrite(store: DatasetStore, tmp_path: Path) -> None:
    path = synthetic.write_jsonl(synthetic.rated_rows(prompts=4), tmp_path / "songs.jsonl")
    meta = store.import_file("songs", path, "rated")
    assert (meta.kind, meta.modality, meta.samples) == ("rated", "text", 4 * 2 * 3)
    assert meta.digest.startswith("sha256:")
    assert [m.id for m in store.list()] == ["songs"]
    assert store.meta("songs") == meta
    before = store.datasets.read_bytes("songs/samples.jsonl")
    with pytest.raises(DatasetError, match="already exists"):
        store.import_file("songs", _write(tmp_path, [GOOD]), "rated")
    assert store.datasets.read_bytes("songs/samples.jsonl") == before
    with pytest.raises(DatasetError, match=r"'nope' not found.*known: songs"):
        store.meta("nope")


def test_same_content_gives_the_same_digest(tmp_path: Path) -> None:
    rows = synthetic.rated_rows(prompts=3)
    a = DatasetStore(open_storage(f"file://{tmp_path}/a")).import_file("x", synthetic.write_jsonl(rows, tmp_path / "1"),
                                                                       "rated")
    b = DatasetStore(open_storage(f"file://{tmp_path}/b")).import_file("x", synthetic.write_jsonl(rows, tmp_path / "2"),
                                                                       "rated")
    assert a.digest == b.digest


def test_split_is_deterministic_by_prompt_and_keeps_prompts_apart() -> None:
    rows = synthetic.rated_rows(prompts=40)
    train, val = split_by_prompt(rows, 0.25)
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in val})
    assert len(train) + len(val) == len(rows)
    assert 0.1 < len(val) / len(rows) < 0.45
    shuffled = list(reversed(rows))
    _, val2 = split_by_prompt(shuffled, 0.25)
    assert {r.prompt for r in val2} == {r.prompt for r in val}


def test_split_gives_tiny_datasets_a_validation_prompt_but_never_all() -> None:
    rows = synthetic.rated_rows(prompts=2)
    train, val = split_by_prompt(rows, 0.01)
    assert train and val
    assert split_by_prompt(rows, 0) == (rows, [])
