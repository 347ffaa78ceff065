"""report.html: one self-contained page per run and per registered adapter, made from its report.json.

Everything is inlined (plots as PNG data URIs, clips as WAV data URIs, CSS in the page) and a
Content-Security-Policy forbids every other source, so the page works from a file, an S3 download or an
e-mail attachment, with no network. The page is a pure function of report.json and the clips it names:
`tunewright report` rebuilds it the same way the trainer first wrote it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from tunewright.reporting import plots
from tunewright.reporting.audio import read_wav
from tunewright.runs import REPORT, REPORT_PAGE
from tunewright.storage import Storage

CSP = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots img { max-width: 100%; display: block; margin-bottom: 1em; }
pre { background: #f8f8f8; padding: 1em; overflow-x: auto; }
code { word-break: break-all; }
"""
# Per-key labels for the evaluation and training metrics the objectives log.
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def series(history: Iterable[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], float(r[key])) for r in history if _finite(r.get(key)) and "step" in r]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _rows(pairs: Iterable[tuple[str, Any]]) -> str:
    out = []
    for label, value in pairs:
        cls = ' class="num"' if _finite(value) else ""
        out.append(f"<tr><th>{html.escape(label)}</th><td{cls}>{html.escape(_fmt(value))}</td></tr>")
    return "<table>" + "".join(out) + "</table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _plots(report: dict[str, Any]) -> list[str]:
    history = report.get("history") or []
    marks = {"checkpoints": [c["step"] for c in report.get("checkpoints") or []], "best_step": report.get("bestStep")}
    evals = series(history, "eval_loss")
    if _finite(report.get("initialEvalLoss")):
        evals = [(0, float(report["initialEvalLoss"])), *evals]
    images = [_img(plots.curves("Loss", {"train": series(history, "loss"), "validation": evals}, "loss",
                                **marks), "loss over steps")]
    for key, title in (("learning_rate", "Learning rate"), ("grad_norm", "Gradient norm (before clipping)")):
        if points := series(history, key):
            images.append(_img(plots.curves(title, {title.split(" (")[0].lower(): points}, key, **marks), title))
    if any(series(history, k) or series(history, "eval_" + k) for k in REWARD_KEYS):
        lines = {f"{k.split('/')[1]} ({split})": series(history, prefix + k)
                 for split, prefix in (("train", ""), ("validation", "eval_")) for k in REWARD_KEYS}
        images.append(_img(plots.curves("Implicit rewards", lines, "reward", **marks), "rewards over steps"))
    for key, title in (("rewards/accuracies", "Preference accuracy"), ("ranking/kendall_tau", "Kendall τ")):
        lines = {"train": series(history, key), "validation": series(history, "eval_" + key)}
        if any(lines.values()):
            images.append(_img(plots.curves(title, lines, title.lower(), **marks), title))
    return images


def _summary(report: dict[str, Any]) -> str:
    base, data, counts = report.get("baseModel") or {}, report.get("dataset") or {}, report.get("samples") or {}
    history = report.get("history") or []
    tokens = series(history, "tokens_per_second")
    pairs: list[tuple[str, Any]] = [
        ("method", report.get("method")),
        ("base model", " ".join(str(x) for x in (base.get("ref"), base.get("revision"), base.get("family")) if x)),
        ("dataset", f"{data.get('id') or data.get('uri')} ({data.get('kind')}, {data.get('modality')})"),
        ("dataset digest", data.get("digest")),
        ("train / validation examples", f"{counts.get('trainExamples')} / {counts.get('validationExamples')}"),
        ("steps", f"{report.get('steps')} of {report.get('maxSteps')}"),
        ("epochs", report.get("epochs")),
        ("validation loss before training", report.get("initialEvalLoss")),
        ("final train loss", report.get("finalTrainLoss")),
        ("final validation loss", report.get("finalEvalLoss")),
        ("best validation loss", report.get("bestEvalLoss")),
        ("best checkpoint", report.get("bestCheckpoint")),
        ("stopped early", report.get("stoppedEarly")),
        *sorted((report.get("finalTrainMetrics") or {}).items()),
        *sorted((report.get("finalEvalMetrics") or {}).items()),
        ("training seconds", report.get("trainingSeconds")),
        ("samples/s", report.get("samplesPerSecond")),
        ("tokens/s (mean of the logged intervals)", sum(v for _, v in tokens) / len(tokens) if tokens else None),
        ("processes × batch", f"{report.get('worldSize', 1)} × global batch {report.get('globalBatchSize')}"),
        ("resumed from", report.get("resumedFrom")),
        ("created", report.get("created")),
    ]
    return _rows(pairs)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _clip(name: str, label: str, read: Callable[[str], bytes]) -> str:
    data = read(name)
    samples, rate = read_wav(data)
    return (f'<div><audio controls preload="auto" src="{_data_uri("audio/wav", data)}"></audio>'
            f'<br><small>{html.escape(name)}, {len(samples) / rate:.1f} s at {rate} Hz</small>'
            f'{_img(plots.spectrogram(samples, rate, label), label + " spectrogram")}</div>')


def _listen(report: dict[str, Any], read: Callable[[str], bytes]) -> str:
    entry = report.get("listen")
    if not entry or not entry.get("prompts"):
        return "<p>No base vs adapter outputs: they are made for held-out prompts, and this run had none.</p>"
    rows = []
    for item in entry["prompts"]:
        if entry.get("kind") == "audio":
            cells = [_clip(item[side], f"{side}: {item['prompt'][:40]}", read) for side in ("base", "adapter")]
        else:
            cells = [f"<pre>{html.escape(item[side])}</pre>" if item[side] else
                     "<em>(nothing: the text ended at once)</em>" for side in ("base", "adapter")]
        rows.append(f"<tr><td>{html.escape(item['prompt'])}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    what = "Clips sampled" if entry.get("kind") == "audio" else "Greedy generations"
    return (f"<p>{what} for prompts held out of training, base model vs. adapter, seed {entry.get('seed')} "
            f"for both.</p><table><tr><th>prompt</th><th>base model</th><th>adapter</th></tr>{''.join(rows)}</table>")


def render(report: dict[str, Any], read: Callable[[str], bytes]) -> str:
    """The page for `report`; `read(relative path)` returns the bytes of a clip the report names."""
    adapter = report.get("adapter") or {}
    title = f"{adapter.get('name', report.get('runId'))} v{adapter.get('version', '?')}" if adapter \
        else str(report.get("runId"))
    config = json.dumps(report.get("config") or {}, indent=2, sort_keys=True)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>tunewright report: {html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Run <code>{html.escape(str(report.get('runId')))}</code>, {html.escape(str(report.get('method')))}.</p>
<h2>Summary</h2>{_summary(report)}
<h2>Curves</h2><div class="plots">{''.join(_plots(report))}</div>
<h2>Listen and compare</h2>{_listen(report, read)}
<h2>Configuration</h2><pre>{html.escape(config)}</pre>
<h2>Versions</h2>{_rows(sorted((report.get('versions') or {}).items()))}
</body></html>
"""


def rebuild(directory: Storage) -> str:
    """Render report.html from the report.json (and clips) in `directory`; returns the page's URI."""
    report = json.loads(directory.read_text(REPORT))
    directory.write_text(REPORT_PAGE, render(report, directory.read_bytes))
    return f"{directory.uri}/{REPORT_PAGE}"
