"""A corpus of hostile but realistic inputs through both CLIs (in-process, so ~150 cases stay fast): each
asserts the exit code, exactly one line on stderr naming the culprit, nothing on stdout, and that the working
directory and the storage root are byte-for-byte as before (nothing stored, lost, changed, or left behind,
hidden temp files included). Cases that need a real process (a closed pipe, concurrent imports, a full
disk) are at the end."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunewright.cli import main as tw
from tunewright.cli import train as tw_train
from tunewright.data.store import DatasetStore
from tunewright.registry import AdapterRecord, DatasetProvenance, Registry, ReportSummary
from tunewright.storage import open_storage

GOOD_ROW = {"prompt": "p", "completion": "c", "rating": 5}
PREF_ROW = {"prompt": "p", "chosen": "a", "rejected": "b"}


def _snapshot(where: Path) -> dict[str, str]:
    return {p.relative_to(where).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(where.rglob("*"))}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLIs' main() configures logging (levels of noisy libraries, a root handler); in-process that
    would leak into later tests."""
    names = ("", "httpx", "botocore", "urllib3", "transformers", "accelerate")
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A working directory (the default storage root ./.tunewright would appear here) and a storage root
    holding dataset `songs` and adapter `songs-sft` v1."""
    monkeypatch.chdir(tmp_path)
    for name in ("TUNEWRIGHT_STORAGE", "TUNEWRIGHT_METRICS_PORT", "TUNEWRIGHT_TERMINATION_LOG"):
        monkeypatch.delenv(name, raising=False)
    root = open_storage(f"file://{tmp_path}/root")
    rows = tmp_path / "inputs" / "good.jsonl"
    rows.parent.mkdir()
    rows.write_text("".join(json.dumps({**GOOD_ROW, "completion": f"c{i}", "prompt": f"p{i % 5}"}) + "\n"
                            for i in range(20)))
    DatasetStore(root).import_file("songs", rows, "rated")
    Registry(root).register(AdapterRecord(name="songs-sft", version=1, base_model="tiny-llama", method="sft", uri="",
                                          dataset=DatasetProvenance(uri="file:///d", digest="sha256:0"),
                                          run_id="songs-sft-r1", config={}, report=ReportSummary()),
                            files={"adapter_model.safetensors": b"w"})
    (world_prefs := rows.parent / "prefs.jsonl").write_text(json.dumps(PREF_ROW) + "\n")
    DatasetStore(root).import_file("prefs", world_prefs, "preference")
    root.write_text("runs/empty-run/config.json", "{}")  # an aborted run: nothing committed
    return {"tmp": tmp_path, "root": root, "uri": root.uri, "inputs": tmp_path / "inputs"}


def _input(world: dict[str, Any], name: str, content: str | bytes) -> str:
    path = world["inputs"] / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def _call(entry: Any, argv: list[str]) -> int:
    try:
        return entry(argv)
    except SystemExit as done:  # argparse
        return int(done.code or 0)


def _check(world: dict[str, Any], capsys: pytest.CaptureFixture[str], entry: Any, argv: list[str],
           code: int, expected: str, prepare: Any = None, where: str = "") -> None:
    if prepare:
        prepare(world)
    capsys.readouterr()
    before = _snapshot(world["tmp"])
    got = _call(entry, argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert got == code, (got, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and where in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert _snapshot(world["tmp"]) == before


# -- tunewright dataset import ------------------------------------------------------------------------------

def _rated(**fields: Any) -> str:
    return json.dumps({**GOOD_ROW, **fields})


BAD_ROWS = [  # (kind, second line of the file, what the message says)
    ("rated", '{"prompt": "p", "completion": "c", "rating": NaN}', "'rating': must be a finite number"),
    ("rated", '{"prompt": "p", "completion": "c", "rating": Infinity}', "'rating': must be a finite number"),
    ("rated", '{"prompt": "p", "completion": "c", "rating": -Infinity}', "'rating': must be a finite number"),
    ("rated", '{"prompt": "p", "completion": "c", "rating": 1e999}', "'rating': must be a finite number"),
    ("rated", '{"prompt": "p", "completion": "c", "rating": -1e999}', "'rating': must be a finite number"),
    ("rated", _rated(rating=True), "'rating': must be a number (not a boolean or string)"),
    ("rated", _rated(rating=False), "'rating': must be a number"),
    ("rated", _rated(rating="5"), "'rating': must be a number"),
    ("rated", _rated(rating=None), "'rating': must be a number"),
    ("rated", _rated(rating=[5]), "'rating': must be a number"),
    ("rated", _rated(rating={"v": 5}), "'rating': must be a number"),
    ("rated", json.dumps({"prompt": "p", "completion": "c"}), "'rating': Field required"),
    ("rated", json.dumps({"completion": "c", "rating": 1}), "'prompt': Field required"),
    ("rated", _rated(prompt=""), "'prompt'"),
    ("rated", _rated(prompt=" \t "), "'prompt': must not be empty, whitespace or invisible"),
    ("rated", _rated(completion="\u200b"), "'completion': must not be empty, whitespace or invisible"),
    ("rated", _rated(completion="\u200b\u200c\u200d\u2060"), "'completion': must not be empty"),
    ("rated", _rated(completion="\ufeff"), "'completion': must not be empty"),
    ("rated", _rated(completion="\u200f\u200e"), "'completion': must not be empty"),
    ("rated", _rated(completion="\u00a0\u3000"), "'completion': must not be empty"),
    ("rated", _rated(completion=None), "'completion': must be a string"),
    ("rated", _rated(completion=5), "'completion': must be a string"),
    ("rated", _rated(prompt=["p"]), "'prompt': must be a string"),
    ("rated", _rated(tags="a,b"), "'tags': must be a list"),
    ("rated", _rated(tags=["ok", 1]), "'tags.1': must be a string"),
    ("rated", _rated(tags=["ok", " "]), "'tags': must not be empty"),
    ("rated", _rated(score=1), "'score': unknown field"),
    ("rated", '{"prompt": "p", "prompt": "q", "completion": "c", "rating": 1}', "duplicate key 'prompt'"),
    ("rated", "[1, 2]", "a row must be a JSON object"),
    ("rated", '"just a string"', "a row must be a JSON object"),
    ("rated", "42", "a row must be a JSON object"),
    ("rated", "{not json", "not valid JSON"),
    ("rated", _rated() + " trailing", "not valid JSON"),
    ("rated", "[" * 100_000, "rows.jsonl:2:"),
    ("preference", json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}), "chosen and rejected are identical"),
    ("preference", json.dumps({"prompt": "p", "chosen": "a"}), "'rejected': Field required"),
    ("preference", json.dumps({"prompt": "p", "chosen": "\u200b", "rejected": "b"}), "'chosen': must not be empty"),
    ("preference", json.dumps({"prompt": "p", "chosen": 1, "rejected": "b"}), "'chosen': must be a string"),
    ("ranked", json.dumps({"prompt": "p", "completions": ["only"]}), "'completions'"),
    ("ranked", json.dumps({"prompt": "p", "completions": ["a", "a"]}), "completions must be distinct"),
    ("ranked", json.dumps({"prompt": "p", "completions": "ab"}), "'completions': must be a list"),
    ("ranked", json.dumps({"prompt": "p", "completions": ["a", 2]}), "'completions.1': must be a string"),
    ("ranked", json.dumps({"prompt": "p", "completions": ["a", "\u2060"]}), "'completions': must not be empty"),
]
FIRST = {"rated": GOOD_ROW, "preference": PREF_ROW, "ranked": {"prompt": "p", "completions": ["a", "b"]}}


@pytest.mark.parametrize(("kind", "line", "expected"), BAD_ROWS)
def test_bad_row(world: dict[str, Any], capsys: pytest.CaptureFixture[str], kind: str, line: str,
                 expected: str) -> None:
    path = _input(world, "rows.jsonl", json.dumps(FIRST[kind]) + "\n" + line + "\n")
    _check(world, capsys, tw.main, ["--storage", world["uri"], "dataset", "import", "new", path, "--kind", kind],
           1, expected, where="rows.jsonl:2: ")


BAD_IMPORTS = [  # (argv after `dataset import`, file content or None, exit code, message)
    (["new", "{f}", "--kind", "rated"], "", 1, "rows.jsonl: no rows"),
    (["new", "{f}", "--kind", "rated"], "\n\n  \n", 1, "rows.jsonl: no rows"),
    (["new", "{f}", "--kind", "rated"], b'{"prompt": "p", "completion": "\xff", "rating": 1}\n', 1,
     "rows.jsonl:1: byte 0xff is not UTF-8"),
    (["new", "{f}", "--kind", "rated"], (_rated() + "\n").encode("utf-16"), 1, "is not UTF-8"),
    (["new", "missing.jsonl", "--kind", "rated"], None, 1, "cannot read missing.jsonl"),
    (["new", ".", "--kind", "rated"], None, 1, "cannot read ."),
    (["songs", "{f}", "--kind", "rated"], _rated() + "\n", 1, "dataset 'songs' already exists"),
    (["nl\n", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["UPPER", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["a_b", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["../escape", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["a b", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["trail ", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["tab\t", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["\uff11a", "{f}", "--kind", "rated"], _rated() + "\n", 1, "is not a DNS-1123 label"),
    (["-lead", "{f}", "--kind", "rated"], _rated() + "\n", 2, "the following arguments are required: file"),
    (["x" * 64, "{f}", "--kind", "rated"], _rated() + "\n", 1, "at most 63 are allowed"),
    (["", "{f}", "--kind", "rated"], _rated() + "\n", 1, "must be a non-empty string"),
    (["new", "{f}", "--kind", "scored"], _rated() + "\n", 2, "argument --kind: invalid choice: 'scored'"),
    (["new", "{f}"], _rated() + "\n", 2, "the following arguments are required: --kind"),
    (["new", "{f}", "--kind", "rated", "--modality", "video"], _rated() + "\n", 2, "argument --modality"),
    (["new", "{f}", "--kind", "rated", "--extra"], _rated() + "\n", 2, "unrecognized arguments: --extra"),
    (["new", "{f}", "--kind", "rated"], json.dumps(PREF_ROW) + "\n", 1, "rows.jsonl:1: field 'completion': Field"),
    (["new", "{f}", "--kind", "preference"], _rated() + "\n", 1, "rows.jsonl:1: field 'chosen': Field required"),
]


@pytest.mark.parametrize(("argv", "content", "code", "expected"), BAD_IMPORTS)
def test_bad_import(world: dict[str, Any], capsys: pytest.CaptureFixture[str], argv: list[str],
                    content: str | bytes | None, code: int, expected: str) -> None:
    path = _input(world, "rows.jsonl", content) if content is not None else ""
    argv = [a.replace("{f}", path) for a in argv]
    _check(world, capsys, tw.main, ["--storage", world["uri"], "dataset", "import", *argv], code, expected)


def _corrupt(key: str, data: bytes) -> Any:
    return lambda world: world["root"].write_bytes(key, data)


BAD_LOOKUPS = [  # (argv, prepare, exit code, message)
    (["dataset", "show", "nope"], None, 1, "dataset 'nope' not found"),
    (["dataset", "show", "nl\n"], None, 1, "is not a DNS-1123 label"),
    (["dataset", "show", "songs"], _corrupt("datasets/songs/meta.json", b"{oops"),
     1, "datasets/songs/meta.json is corrupt"),
    (["dataset", "show", "songs"], _corrupt("datasets/songs/meta.json", b'{"id": "songs"}'),
     1, "datasets/songs/meta.json is corrupt: kind: Field required"),
    (["dataset"], None, 2, "the following arguments are required: cmd"),
    (["dataset", "delete", "songs"], None, 2, "invalid choice: 'delete'"),
    (["adapter", "show", "nope"], None, 1, "no adapter named 'nope'"),
    (["adapter", "show", "songs-sft", "--version", "7"], None, 1, "has no version 7 (versions: [1])"),
    (["adapter", "show", "songs-sft", "--version", "x"], None, 2, "argument --version: invalid int value"),
    (["adapter", "show", "songs-sft"], _corrupt("adapters/songs-sft/1/record.json", b"[]"),
     1, "adapters/songs-sft/1/record.json is corrupt"),
    (["adapter", "show", "BAD"], None, 1, "is not a DNS-1123 label"),
    (["--storage", "s3://", "dataset", "list"], None, 1, "names no bucket"),
    (["--storage", "ftp://host/x", "dataset", "list"], None, 1, "unsupported storage URI 'ftp://host/x'"),
    ([], None, 2, "the following arguments are required: area"),
]


@pytest.mark.parametrize(("argv", "prepare", "code", "expected"), BAD_LOOKUPS)
def test_bad_lookup(world: dict[str, Any], capsys: pytest.CaptureFixture[str], argv: list[str], prepare: Any,
                    code: int, expected: str) -> None:
    storage = [] if argv[:1] == ["--storage"] else ["--storage", world["uri"]]
    _check(world, capsys, tw.main, [*storage, *argv], code, expected, prepare)


def test_a_corrupt_record_or_meta_is_skipped_with_a_warning_naming_it(world: dict[str, Any],
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    world["root"].write_bytes("adapters/songs-sft/2/record.json", b"{broken")
    world["root"].write_bytes("datasets/bad/meta.json", b"{broken")
    assert tw.main(["--storage", world["uri"], "adapter", "list"]) == 0
    assert tw.main(["--storage", world["uri"], "dataset", "list"]) == 0
    out = capsys.readouterr().out
    assert "songs-sft" in out and "songs " in out
    assert "adapters/songs-sft/2/record.json is corrupt" in caplog.text
    assert "datasets/bad/meta.json is corrupt" in caplog.text


# -- tunewright-train ---------------------------------------------------------------------------------------

_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True))

BAD_CONFIGS = [  # (file name, content, message)
    ("c.yaml", "", "c.yaml is empty"),
    ("c.yaml", "# only a comment\n", "c.yaml is empty"),
    ("c.json", "", "c.json is empty"),
    ("c.yaml", _BOMB, "aliases expand to more than 100000 values"),
    ("c.yaml", "a: &a [*a]\n", "c.yaml:1: not valid YAML: recursive alias"),
    ("c.yaml", "method: sft\nmethod: dpo\n", "c.yaml:2: not valid YAML: duplicate key 'method'"),
    ("c.yaml", "training:\n  epochs: 1\n  epochs: 2\n", "c.yaml:3: not valid YAML: duplicate key 'epochs'"),
    ("c.json", '{"method": "sft",\n "method": "dpo"}', "c.json:2: not valid JSON: duplicate key 'method'"),
    ("c.yaml", "[" * 100_000, "nesting deeper than 64 levels"),
    ("c.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("c.yaml", "- 1\n- 2\n", "the top level must be a mapping"),
    ("c.yaml", "just text\n", "the top level must be a mapping"),
    ("c.yaml", "training: [1, 2\n", "c.yaml:2: not valid YAML"),
    ("c.yaml", "training:\n\t epochs: 1\n", "c.yaml:2: not valid YAML"),
    ("c.YAML", "method: sft\nmethod: dpo\n", "c.YAML:2: not valid YAML: duplicate key"),
    ("c.json", '{"training": {"learningRate": NaN}}', "NaN is not a JSON number"),
    ("c.json", '{"training": {"learningRate": Infinity}}', "Infinity is not a JSON number"),
    ("c.json", '{"training": {"epochs": 1,}}', "c.json:1: not valid JSON"),
    ("c.yaml", "training: {learningRate: .nan}\n", "training.learningRate = NaN: must be a finite number"),
    ("c.yaml", "training: {learningRate: .inf}\n", "training.learningRate = Infinity: must be a finite"),
    ("c.yaml", "earlyStopping: {minDelta: 1e999}\n", "earlyStopping.minDelta = Infinity: must be a finite"),
    ("c.yaml", "training: {maxSteps: true}\n", "line 1: training.maxSteps = true: must be an integer"),
    ("c.yaml", "training: {epochs: '3'}\n", "training.epochs = \"3\": must be an integer"),
    ("c.yaml", "training: {epochs: 2.5}\n", "training.epochs = 2.5: must be an integer"),
    ("c.yaml", "training: {learningRate: yes}\n", "training.learningRate = true: must be a number"),
    ("c.json", '{"training": {\n"learningRate": "1e-3"}}', "line 2: training.learningRate = \"1e-3\": must be a"),
    ("c.yaml", "training: {learningRate: 0}\n", "training.learningRate = 0: must be > 0 and <= 1"),
    ("c.yaml", "training: {lr: 1}\n", "training.lr: unknown field"),
    ("c.yaml", "method: ppo\n", "method = \"ppo\""),
    ("c.yaml", "name: 2024-01-01\n", "name = \"2024-01-01\": must be a string"),
    ("c.yaml", "name: no\n", "name = false: must be a string"),
    ("c.yaml", "dataset: {id: \"songs\\n\"}\n", "dataset.id = \"songs\\n\""),
    ("c.yaml", "dataset: songs\n", "dataset = \"songs\": must be a mapping"),
    ("c.yaml", "lora: {targetModules: q_proj}\n", "lora.targetModules = \"q_proj\": must be a list"),
    ("c.yaml", "resources: {nodeSelector: {gpu: 1}}\n", "resources.nodeSelector.gpu = 1: must be a string"),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_CONFIGS)
def test_bad_config(world: dict[str, Any], capsys: pytest.CaptureFixture[str], name: str, content: str,
                    expected: str) -> None:
    path = _input(world, name, content)
    _check(world, capsys, tw_train.main, ["--config", path, "--storage", world["uri"]], 1, expected, where=name)


BAD_FLAGS = [  # (argv, exit code, message)
    ([], 1, "no dataset: set dataset.id (or --dataset) or dataset.uri"),  # and no runs/ left behind
    (["--config", "missing.yaml"], 1, "cannot read missing.yaml"),
    (["--config", "."], 1, "cannot read ."),
    (["--dataset", "songs", "--set", "training.learningRate"], 1, "--set expects KEY=VALUE"),
    (["--dataset", "songs", "--set", "=1"], 1, "--set expects KEY=VALUE"),
    (["--dataset", "songs", "--set", "training..epochs=1"], 1, "--set training..epochs: empty key part"),
    (["--dataset", "songs", "--set", "training.epochs=3", "--set", "training.epochs.x=1"], 1,
     "--set training.epochs.x: training.epochs is a int, not a mapping"),
    (["--dataset", "songs", "--set", "lora.targetModules=[q]", "--set", "lora.targetModules.x=1"], 1,
     "lora.targetModules is a list, not a mapping"),
    (["--dataset", "songs", "--set", "training.epochs=[1,"], 1, "--set training.epochs:1: not valid YAML"),
    (["--dataset", "songs", "--set", "training.epochs={a: 1, a: 2}"], 1, "duplicate key 'a'"),
    (["--dataset", "songs", "--set", "training.maxSteps=true"], 1, "training.maxSteps = true: must be an integer"),
    (["--dataset", "songs", "--set", "training.learningRate=.nan"], 1, "must be a finite number"),
    (["--dataset", "songs", "--set", "training.learningRate=abc"], 1, "training.learningRate = \"abc\""),
    (["--dataset", "songs", "--set", "name=Bad_Name"], 1, "name = \"Bad_Name\""),
    (["--dataset", "songs\n"], 1, "dataset.id = \"songs\\n\""),
    (["--dataset", "UPPER"], 1, "dataset.id = \"UPPER\""),
    (["--dataset", "songs", "--metrics-port", "70000"], 2, "argument --metrics-port: 70000 is not a TCP port"),
    (["--dataset", "songs", "--metrics-port", "-1"], 2, "argument --metrics-port: -1 is not a TCP port"),
    (["--dataset", "songs", "--metrics-port", "http"], 2, "argument --metrics-port: 'http' is not an integer"),
    (["--dataset", "songs", "--nproc-per-node", "0"], 2, "argument --nproc-per-node: 0: must be >= 1"),
    (["--dataset", "songs", "--nproc-per-node", "two"], 2, "argument --nproc-per-node: 'two' is not an integer"),
    (["--dataset", "songs", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["--dataset", "songs", "--storage", "s3://"], 1, "names no bucket"),
    (["--dataset", "songs", "--storage", "gs://bucket"], 1, "unsupported storage URI 'gs://bucket'"),
    (["--dataset", "nope"], 1, "dataset 'nope' not found"),
    (["--dataset", "prefs"], 1, "method sft needs a dataset of kind rated or ranked; dataset 'prefs' is preference"),
    (["--dataset", "songs", "--run-id", "bad id"], 1, "run id 'bad id' is not a DNS-1123 label"),
    (["--dataset", "songs", "--run-id", "run\n"], 1, "run id 'run\\n' is not a DNS-1123 label"),
    (["--dataset", "songs", "--resume", "latest"], 1, "--resume latest needs --run-id"),
    (["--dataset", "songs", "--run-id", "songs-sfy-1", "--resume", "latest"], 1,
     "--run-id songs-sfy-1: no such run"),
    (["--dataset", "songs", "--run-id", "nope", "--resume", "checkpoint-9"], 1, "--run-id nope: no such run"),
    (["--dataset", "songs", "--run-id", "empty-run", "--resume", "latest"], 1,
     "run empty-run has no committed checkpoint to resume from"),
    (["--dataset", "songs", "--run-id", "empty-run", "--resume", "checkpoint-9"], 1,
     "no checkpoint 'checkpoint-9'"),
]


@pytest.mark.parametrize(("argv", "code", "expected"), BAD_FLAGS)
def test_bad_flags(world: dict[str, Any], capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                   expected: str) -> None:
    storage = [] if "--storage" in argv or argv == [] else ["--storage", world["uri"]]
    _check(world, capsys, tw_train.main, [*argv, *storage, "--quiet"], code, expected)


DAMAGED = [  # (what is damaged, message)
    (_corrupt("datasets/songs/samples.jsonl", b'{"prompt": "p", "completion": "c", "rating": 5}\n'),
     "samples.jsonl does not match its meta.json"),
    (_corrupt("datasets/songs/samples.jsonl", b""), "samples.jsonl does not match its meta.json"),
    (_corrupt("datasets/songs/meta.json", b"\x00\x01"), "datasets/songs/meta.json is corrupt"),
    (lambda world: world["root"].delete("datasets/songs/samples.jsonl"), "samples.jsonl does not exist"),
    (_corrupt("runs/empty-run/config.json", b"{half"), "runs/empty-run/config.json is corrupt"),
    (_corrupt("runs/empty-run/result.json", b"{}"), "runs/empty-run/result.json is corrupt: adapterName"),
]


@pytest.mark.parametrize(("prepare", "expected"), DAMAGED)
def test_damaged_storage(world: dict[str, Any], capsys: pytest.CaptureFixture[str], prepare: Any,
                         expected: str) -> None:
    _check(world, capsys, tw_train.main, ["--dataset", "songs", "--storage", world["uri"], "--run-id", "empty-run",
                                          "--resume", "auto", "--quiet"], 1, expected, prepare)


def test_a_bad_field_found_after_the_model_loads_prints_one_line_and_stores_nothing(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """transformers is imported (by earlier tests here; by any host program) before main() runs, so the
    environment variable that turns its bars off is read too late: --quiet must still show no
    'Loading weights' bar."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    hf_logging.enable_progress_bar()
    try:
        _check(world, capsys, tw_train.main, ["--dataset", "songs", "--storage", world["uri"], "--metrics-port", "0",
                                              "--set", "lora.targetModules=[nope]", "--quiet"],
               1, "Target modules {'nope'} not found in the base model")
    finally:
        (hf_logging.enable_progress_bar if before[0] else hf_logging.disable_progress_bar)()
        (hub_utils.disable_progress_bars if before[1] else hub_utils.enable_progress_bars)()


# -- faults that need a real process, a thread or the OS ---------------------------------------------------

def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunewright.cli.main", *args], text=True, capture_output=True,
                          timeout=60, **kwargs)


def test_output_to_a_closed_pipe_ends_quietly(world: dict[str, Any]) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head` that has already exited
    with os.fdopen(write, "w") as sink:
        proc = subprocess.run([sys.executable, "-m", "tunewright.cli.main", "--storage", world["uri"], "dataset",
                               "show", "songs"], stdout=sink, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_two_concurrent_cli_imports_of_one_id_one_wins(world: dict[str, Any]) -> None:
    files = [_input(world, f"{n}.jsonl", "".join(_rated(completion=f"{n}{i}") + "\n" for i in range(50 + k)))
             for k, n in enumerate("ab")]
    procs: list[subprocess.CompletedProcess[str]] = []

    def run(path: str) -> None:
        procs.append(_cli("--storage", world["uri"], "dataset", "import", "race", path, "--kind", "rated"))

    threads = [threading.Thread(target=run, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], [(p.returncode, p.stdout, p.stderr) for p in procs]
    loser = next(p for p in procs if p.returncode == 1)
    assert len(loser.stderr.splitlines()) == 1 and "'race'" in loser.stderr
    winner = next(p for p in procs if p.returncode == 0)
    rows = DatasetStore(world["root"]).rows("race")  # digest verified: nothing of the winner overwritten
    assert f"imported {len(rows)} rated rows as race" in winner.stdout


def test_a_full_disk_fails_in_one_line_and_leaves_no_temp_file(world: dict[str, Any],
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    path = _input(world, "rows.jsonl", _rated() + "\n")
    _check(world, capsys, tw.main, ["--storage", world["uri"], "dataset", "import", "new", path, "--kind", "rated"],
           1, "No space left on device")


def test_exact_duplicate_rows_are_imported_with_a_warning_and_a_count(world: dict[str, Any]) -> None:
    path = _input(world, "rows.jsonl", (_rated() + "\n") * 3 + _rated(completion="other") + "\n")
    proc = _cli("--storage", world["uri"], "dataset", "import", "dupes", path, "--kind", "rated")
    assert proc.returncode == 0 and proc.stderr.startswith("warning: ") and len(proc.stderr.splitlines()) == 1
    assert "rows.jsonl: 2 of 4 rows repeat an earlier row exactly" in proc.stderr, proc.stderr


# -- signals: a real process signals itself at a chosen point (before or after a named function) ----------

_SIGNAL_AT = """
import importlib, os, signal, sys
target, when, name, cli, *argv = sys.argv[1:]
module, _, qualname = target.partition(":")
owner = importlib.import_module(module)
*path, attr = qualname.split(".")
for part in path:
    owner = getattr(owner, part)
original, sent = getattr(owner, attr), []

def wrapper(*args, **kwargs):
    if when == "before" and not sent:
        sent.append(os.kill(os.getpid(), getattr(signal, name)))
    result = original(*args, **kwargs)
    if when == "after" and not sent:
        sent.append(os.kill(os.getpid(), getattr(signal, name)))
    return result

setattr(owner, attr, wrapper)
sys.exit(importlib.import_module(cli).main(argv))
"""


def _signalled(target: str, when: str, name: str, cli: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _SIGNAL_AT, target, when, name, cli, *argv], text=True,
                          capture_output=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess[str], code: int, expected: str) -> None:
    """The exit code, and the error as the last and only error line (log lines may come before it)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert errors == [proc.stderr.splitlines()[-1]] and expected in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "%|" not in proc.stderr


IMPORT_SIGNALS = [  # (where the signal arrives, signal, exit code, message)
    (("tunewright.data.store:DatasetStore._claim", "after"), "SIGINT", 130, "error: interrupted (SIGINT)"),
    (("tunewright.data.store:DatasetStore._claim", "after"), "SIGTERM", 1, "error: terminated (SIGTERM)"),
    (("os:fsync", "after"), "SIGTERM", 1, "error: terminated (SIGTERM)"),  # mid-write of samples.jsonl
    (("os:fsync", "after"), "SIGINT", 130, "error: interrupted (SIGINT)"),
]


@pytest.mark.parametrize(("point", "name", "code", "expected"), IMPORT_SIGNALS)
def test_a_signal_during_import_ends_in_one_line_and_the_same_import_then_finishes(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str], point: tuple[str, str], name: str, code: int,
        expected: str) -> None:
    path = _input(world, "rows.jsonl", "".join(_rated(completion=f"c{i}") + "\n" for i in range(30)))
    proc = _signalled(*point, name, "tunewright.cli.main", "--storage", world["uri"], "dataset", "import", "new",
                      path, "--kind", "rated")
    _one_error_line(proc, code, expected)
    datasets = world["tmp"] / "root" / "datasets"
    assert not (datasets / "new" / "meta.json").exists()  # not published, not half-published
    assert not [p for p in datasets.rglob(".*")], "a temp file was left behind"
    assert tw.main(["--storage", world["uri"], "dataset", "list"]) == 0
    assert " new " not in capsys.readouterr().out
    assert tw.main(["--storage", world["uri"], "dataset", "import", "new", path, "--kind", "rated"]) == 0
    assert len(DatasetStore(world["root"]).rows("new")) == 30  # digest checked
    assert [m.id for m in DatasetStore(world["root"]).list()] == ["new", "prefs", "songs"]


TRAIN = ["--dataset", "songs", "--run-id", "sig", "--metrics-port", "0", "--quiet"]
TRAIN_SIGNALS = [  # (where the signal arrives, signal, exit code, message, progress.json state afterwards)
    (("tunewright.training.run:load_base", "after"), "SIGTERM", 1, "error: terminated (SIGTERM)", None),
    (("tunewright.training.run:load_base", "after"), "SIGINT", 130, "error: interrupted (SIGINT)", None),
    (("tunewright.training.checkpoints:CheckpointStore.commit", "after"), "SIGINT", 130, "error: interrupted (SIGINT)",
     "failed"),
    (("tunewright.training.checkpoints:CheckpointStore.commit", "after"), "SIGTERM", 143,
     "; checkpoint committed", "interrupted"),
    (("tunewright.registry:Registry.register", "before"), "SIGINT", 130, "error: interrupted (SIGINT)", "failed"),
    (("tunewright.registry:Registry.register", "before"), "SIGTERM", 1, "error: terminated (SIGTERM)", "failed"),
]


@pytest.mark.parametrize(("point", "name", "code", "expected", "state"), TRAIN_SIGNALS)
def test_a_signal_during_training_ends_in_one_line_and_a_resume_publishes_once(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str], point: tuple[str, str], name: str, code: int,
        expected: str, state: str | None) -> None:
    proc = _signalled(*point, name, "tunewright.cli.train", "--storage", world["uri"], *TRAIN)
    _one_error_line(proc, code, expected)
    root, run = world["root"], world["tmp"] / "root" / "runs" / "sig"
    assert not (run / "result.json").exists()
    assert [r.run_id for r in Registry(root).list()] == ["songs-sft-r1"]  # nothing registered
    if state is None:  # before the run was recorded: nothing stored at all
        assert not run.exists()
    else:
        progress = json.loads((run / "progress.json").read_text())
        assert progress["state"] == state, progress
        assert state != "failed" or progress["message"] == expected.removeprefix("error: ")
    if "CheckpointStore.commit" in point[0]:  # the checkpoint being uploaded was committed before the exit
        assert list(run.glob("checkpoints/checkpoint-*/manifest.json")), proc.stderr[-3000:]
    capsys.readouterr()
    assert tw_train.main(["--storage", world["uri"], *TRAIN, "--resume", "auto"]) == 0
    assert capsys.readouterr().out.strip() == f"{world['uri']}/adapters/songs-sft/2"
    assert [(r.version, r.run_id) for r in Registry(root).list()] == [(1, "songs-sft-r1"), (2, "sig")]
    assert json.loads((run / "progress.json").read_text())["state"] == "completed"


def test_the_corpus_has_at_least_a_hundred_cases() -> None:
    assert len(BAD_ROWS) + len(BAD_IMPORTS) + len(BAD_LOOKUPS) + len(BAD_CONFIGS) + len(BAD_FLAGS) + len(DAMAGED) \
        + len(IMPORT_SIGNALS) + len(TRAIN_SIGNALS) + 6 >= 100
