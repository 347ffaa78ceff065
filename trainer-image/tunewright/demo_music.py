"""`make demo-music`: text to music on CPU — SFT and DPO adapters on `tiny-musicgen` from one rated audio dataset.

A synthetic rated dataset (see data/synthetic_audio.py: a caption asks for a high or a low sound; a clip in
the asked register is rated 5, noise 3, the other register 1) is imported as `demo-tones` into the storage
root (./.tunewright unless --storage / TUNEWRIGHT_STORAGE), an SFT adapter (`demo-tones-sft`) and a DPO
adapter (`demo-tones-dpo`, pairs formed from the same ratings) are trained and registered, and what they
learned is measured on captions neither saw:

- held-out NLL of the high-rated clips (mean per codec token), base → SFT adapter;
- held-out preference accuracy: for pairs (clip rated 5, clip rated 1) of held-out captions, the share in
  which a model's log-likelihood prefers the clip rated 5 (base, SFT, DPO), and the share in which DPO's
  implicit reward (adapter minus base log-likelihood) does.

Clips for the same held-out captions and sampling seed are written as WAV, base vs each adapter. The
preset's codec has random weights, so the clips sound like noise whatever the tokens: the numbers are
the evidence; the clips show the files a studio gets.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunewright.config import validate
from tunewright.data.rows import RatedRow
from tunewright.data.split import split_by_prompt
from tunewright.data.store import DatasetStore
from tunewright.storage import Storage, open_storage

DATASET = "demo-tones"
COMMON: dict[str, Any] = {
    "baseModel": "tiny-musicgen",
    "dataset": {"id": DATASET},
    "data": {"validationFraction": 0.25},
    "checkpointing": {"keepLast": 1},
}
SFT: dict[str, Any] = COMMON | {
    "name": "demo-tones-sft", "method": "sft",
    "training": {"learningRate": 5e-3, "epochs": 4, "batchSize": 8, "logEverySteps": 5},
}
DPO: dict[str, Any] = COMMON | {
    "name": "demo-tones-dpo", "method": "dpo",
    "training": {"learningRate": 5e-3, "epochs": 3, "batchSize": 8, "logEverySteps": 5, "lrScheduler": "constant"},
    "dpo": {"minRatingGap": 4},  # the clip rated 5 over the one rated 1 of the same caption
}
SEED = 0
CLIP_FRAMES = 100  # codec frames per generated clip: 2 s at the preset's 50 frames/s


@dataclass
class DemoResult:
    heldout_nll: dict[str, float]  # "base" / "sft": mean NLL per codec token of held-out clips rated 5
    likelihood_accuracy: dict[str, float]  # "base" / "sft" / "dpo": held-out pairs the likelihood orders right
    reward_accuracy: float  # DPO's implicit reward on the same pairs
    heldout_pairs: int
    clips: dict[str, list[Path]] = field(default_factory=dict)  # caption -> [base, sft, dpo] WAV files


def import_dataset(store: DatasetStore, console: Console) -> None:
    if any(m.id == DATASET for m in store.list()):
        console.print(f"dataset {DATASET} already imported: reusing it")
        return
    from tunewright.data.synthetic_audio import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        jsonl = write_dataset(tmp, "rated", prompts=24, per_prompt=2)
        meta = store.import_file(DATASET, jsonl, "rated", modality="audio")
    console.print(f"imported {meta.samples} rated clips (rated 5 / 3 / 1: asked register / noise / the other "
                  f"register) as dataset {meta.id} ({meta.digest[:19]}…)")


def train(config: dict[str, Any], root: Storage) -> Any:
    from tunewright.training.run import Run

    return Run(validate(config), root, metrics_port=None).execute()


def heldout_rows(store: DatasetStore) -> list[RatedRow]:
    """The rated rows of the captions both runs held out (the split is by caption and deterministic)."""
    rows = [r for r in store.rows(DATASET) if isinstance(r, RatedRow)]
    return split_by_prompt(rows, COMMON["data"]["validationFraction"])[1]


def score(models: dict[str, Any], family: Any, rows: list[RatedRow]) -> DemoResult:
    """Held-out NLL of the clips rated 5 and preference accuracies on (rated 5, rated 1) pairs."""
    import torch

    best = [r for r in rows if r.rating == 5]
    pairs = [(b, w) for b in best for w in rows if w.prompt == b.prompt and w.rating == 1]

    def logps(name: str, samples: list[RatedRow]) -> tuple[Any, Any]:
        """Summed log-likelihood and token count of each sample under "base", "sft" or "dpo"."""
        model = models["sft" if name == "base" else name].eval()
        batch = family.collate([family.encode(r.prompt, r.completion) for r in samples])
        with torch.no_grad():
            if name != "base":
                return family.sequence_logprobs(model, batch)
            with model.disable_adapter():
                return family.sequence_logprobs(model, batch)

    nll = {}
    for name in ("base", "sft"):
        total, tokens = logps(name, best)
        nll[name] = float(-total.sum() / tokens.sum())
    chosen = {name: logps(name, [b for b, _ in pairs])[0] for name in ("base", "sft", "dpo")}
    rejected = {name: logps(name, [w for _, w in pairs])[0] for name in ("base", "sft", "dpo")}
    accuracy = {name: float((chosen[name] > rejected[name]).float().mean()) for name in chosen}
    # DPO's implicit reward: log-likelihood under the adapter minus under its reference (the base model).
    reward_right = (chosen["dpo"] - chosen["base"]) > (rejected["dpo"] - rejected["base"])
    return DemoResult(nll, accuracy, float(reward_right.float().mean()), len(pairs))


def write_clips(models: dict[str, Any], processor: Any, captions: list[str], out: Path) -> dict[str, list[Path]]:
    """Base, SFT and DPO clips for each caption, all sampled from the same seed, as WAV files in `out`."""
    import soundfile as sf
    import torch

    out.mkdir(parents=True, exist_ok=True)
    inputs = processor(text=captions, padding=True, return_tensors="pt")
    rate = models["sft"].config.audio_encoder.sampling_rate
    clips: dict[str, list[Path]] = {c: [] for c in captions}
    for name, model, adapter in (("base", models["sft"], False), ("sft", models["sft"], True),
                                 ("dpo", models["dpo"], True)):
        torch.manual_seed(SEED)
        with torch.no_grad():
            if adapter:
                audio = model.generate(**inputs, do_sample=True, max_new_tokens=CLIP_FRAMES)
            else:
                with model.disable_adapter():
                    audio = model.generate(**inputs, do_sample=True, max_new_tokens=CLIP_FRAMES)
        for caption, wave in zip(captions, audio, strict=True):
            path = out / f"{caption.replace(' ', '-')}-{name}.wav"
            sf.write(path, wave.T.float().numpy(), rate)  # (samples, channels)
            clips[caption].append(path)
    return clips


def run_demo(root: Storage, out: Path, console: Console) -> DemoResult:
    from tunewright.training.musicgen import MusicgenFamily

    store = DatasetStore(root)
    import_dataset(store, console)
    console.rule("[bold]SFT on the clips rated 4 or higher")
    sft = train(SFT, root)
    console.rule("[bold]DPO on pairs of the same ratings (5 over 1, per caption)")
    dpo = train(DPO, root)
    models = {"sft": sft.model, "dpo": dpo.model}
    family = MusicgenFamily(sft.processor, sft.model.base_model.model, validate(SFT),
                            store.datasets.child(DATASET))
    rows = heldout_rows(store)
    result = score(models, family, rows)
    captions = sorted({r.prompt for r in rows})[:2]
    result.clips = write_clips(models, sft.processor, captions, out)
    return result


def show(result: DemoResult, console: Console) -> None:
    console.rule("[bold]what the adapters learned (captions neither run saw)")
    nll, acc = result.heldout_nll, result.likelihood_accuracy
    console.print(f"held-out NLL of the clips rated 5 (per codec token): base {nll['base']:.3f} → "
                  f"SFT adapter {nll['sft']:.3f}")
    console.print(f"held-out preference accuracy, {result.heldout_pairs} pairs (clip rated 5 vs rated 1):")
    console.print(f"  likelihood prefers the clip rated 5: base {acc['base']:.2f}, SFT {acc['sft']:.2f}, "
                  f"DPO {acc['dpo']:.2f}")
    console.print(f"  DPO implicit reward (adapter − base log-likelihood) prefers it: {result.reward_accuracy:.2f}")
    console.print("clips (same caption, same sampling seed; the preset's codec has random weights, so they "
                  "sound like noise — the numbers above are the evidence):")
    for caption, paths in result.clips.items():
        console.print(f"  {caption!r}: " + ", ".join(str(p) for p in paths))
    console.print("Next: `tunewright adapter list`; README 'Text to music' loads an adapter and writes a WAV.")


def main(argv: list[str] | None = None) -> DemoResult:
    p = argparse.ArgumentParser(prog="python -m tunewright.demo_music", description=__doc__.splitlines()[0])
    p.add_argument("--storage", help="storage root URI (default $TUNEWRIGHT_STORAGE or file://./.tunewright)")
    p.add_argument("--out", type=Path, default=Path(".tunewright/demo-music"), help="folder for the WAV clips")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    # The preset's matrices are too small to split across threads: on 2 busy cores one thread ran the demo
    # in 25 s, the default (one per core) in 2.5 min.
    torch.set_num_threads(1)
    console = Console()
    root = open_storage(args.storage)
    console.rule(f"[bold]tunewright text-to-music demo — storage {root.uri}")
    result = run_demo(root, args.out, console)
    show(result, console)
    return result


if __name__ == "__main__":
    main()
