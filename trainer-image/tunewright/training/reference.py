"""Reference log-probabilities for DPO and ranking: the base model (the adapter disabled, no second copy)
scores every sample once before training; the scores are cached in the run directory
(`runs/<run-id>/reference/<key>.pt`) so a retried or resumed run reuses them instead of scoring again.

The key hashes the encoded samples themselves (which covers the dataset's content, the split, the
tokenizer/processor and max length, exactly as the model sees them) together with the base model
reference, its revision and commit, the family and the compute precision. TRL does the same with a
datasets cache file keyed by data and model fingerprints; ours lives with the run in object storage.

Under data parallelism each process scores a contiguous share of the samples and the shares are gathered
(accelerate's split_between_processes and gather_object), so N processes take 1/N of the time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from accelerate.utils import gather_object

from tunewright.storage import Storage
from tunewright.training.family import Family

log = logging.getLogger(__name__)

REFERENCE_DIR = "reference"
# Batches scored by the reference model in this process (tests assert that a resume scores none).
reference_batches = 0


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value):
            _feed(digest, str(key))
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        digest.update(json.dumps(value, default=str).encode())


def fingerprint(value: Any) -> str:
    """A stable sha256 of nested dicts/lists/tensors/scalars (an encoded sample, a cache key)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _batches(samples: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(samples), size):
        yield samples[start:start + size]


def score(model: Any, family: Family, samples: list[dict[str, Any]], batch_size: int,
          to_device: Callable[[dict[str, Any]], dict[str, Any]] = lambda b: b,
          autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob sum, token count) of each encoded sample under the base model with the adapter disabled."""
    global reference_batches
    if not hasattr(model, "disable_adapter"):
        raise TypeError("the reference is the base model under a PEFT adapter; this model has no adapter")
    if not samples:  # a process's share is empty when there are fewer samples than processes
        return torch.zeros(0), torch.zeros(0)
    logps, tokens = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter(), autocast():
            for chunk in _batches(samples, batch_size):
                lp, n = family.sequence_logprobs(model, to_device(family.collate(chunk)))
                reference_batches += 1
                logps.append(lp.float().cpu())
                tokens.append(n.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(logps), torch.cat(tokens)


def shared(state: Any, samples: list[dict[str, Any]],
           score_share: Callable[[list[dict[str, Any]]], tuple[torch.Tensor, torch.Tensor]],
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_share` run by every process of `state` (an accelerate state) on its contiguous share of
    `samples`; every process gets all the scores, in the samples' order."""
    with state.split_between_processes(samples) as share:
        logps, tokens = score_share(share)
    log.info("reference: process %d of %d scored %d of %d samples", state.process_index, state.num_processes,
             len(share), len(samples))
    if state.num_processes == 1:
        return logps, tokens
    pairs = gather_object(list(zip(logps.tolist(), tokens.tolist(), strict=True)))
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def cached(store: Storage | None, key_parts: dict[str, Any], samples: list[dict[str, Any]],
           compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
           write: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`compute()`'s (logps, tokens) for `samples`, read from `store` when an earlier attempt saved them."""
    key = fingerprint({**key_parts, "samples": [fingerprint(s) for s in samples]})[:32]
    name = f"{key}.pt"
    if store is not None and store.exists(name):
        saved = torch.load(io.BytesIO(store.read_bytes(name)), weights_only=True)
        if saved["logps"].shape == (len(samples),):
            log.info("reference log-probs of %d samples reused from %s/%s", len(samples), store.uri, name)
            return saved["logps"], saved["tokens"]
        log.warning("ignoring %s/%s: it holds %d scores for %d samples", store.uri, name,
                    saved["logps"].numel(), len(samples))
    logps, tokens = compute()
    if store is not None and write:
        buffer = io.BytesIO()
        torch.save({"logps": logps, "tokens": tokens, "key": json.dumps(key_parts, default=str)}, buffer)
        store.write_bytes(name, buffer.getvalue())
        log.info("reference log-probs of %d samples cached at %s/%s", len(samples), store.uri, name)
    return logps, tokens


def attach(trainer: Any, datasets: list[list[dict[str, Any]]], family: Family, run_dir: Storage | None,
           key_parts: dict[str, Any]) -> int:
    """Give every example (`{"samples": [encoded, ...]}`) its reference scores as `ref` (a list of floats).

    Examples with a sample of no tokens (nothing to compare) are removed from the lists in place, which
    are the lists the Trainer's datasets hold; returns how many were removed.
    """
    samples = [s for ds in datasets for ex in ds for s in ex["samples"]]
    model = trainer.model
    key_parts = {**key_parts, "commit": getattr(getattr(model, "config", None), "_commit_hash", None),
                 "family": family.name}
    logps, tokens = cached(
        run_dir.child(REFERENCE_DIR) if run_dir is not None else None, key_parts, samples,
        lambda: shared(trainer.accelerator.state, samples, lambda share: score(
            model, family, share, trainer.args.per_device_eval_batch_size, trainer._prepare_inputs,
            trainer.accelerator.autocast)),
        write=trainer.is_world_process_zero(),
    )
    scores, counts = iter(logps.tolist()), iter(tokens.tolist())
    removed = 0
    for ds in datasets:
        kept = []
        for ex in ds:
            ex["ref"] = [next(scores) for _ in ex["samples"]]
            if min(next(counts) for _ in ex["samples"]) > 0:
                kept.append(ex)
        removed += len(ds) - len(kept)
        ds[:] = kept
    if removed:
        log.warning("skipped %d examples with an empty sample (no tokens to score)", removed)
    return removed
