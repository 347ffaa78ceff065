"""The MusicGen family: (prompt, audio clip) pairs as cached codec tokens + text-encoder states.

The text encoder and the codec are frozen, so each clip is encoded to codebook tokens and each prompt to
encoder hidden states once, cached by content digest (in memory for the run, and in storage under the
dataset, where retries, resumes and later runs on the same base model find them), and the decoder trains
on the cached inputs alone: no training or evaluation step runs the codec or the text encoder.

A clip's log-likelihood is the sum over codebooks and frames of the decoder's token log-probs, with
MusicGen's delay pattern applied to the labels (codebook k is shifted k steps; the positions the pattern
leaves empty hold the pad token and are masked out).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tunewright.config import TrainingConfig
from tunewright.data.audio_files import AudioDecodeError, conform, decode_audio, read_manifest
from tunewright.models.musicgen import default_target_modules
from tunewright.storage import Storage
from tunewright.training.objectives.base import DataError

log = logging.getLogger(__name__)

CACHE_PREFIX = "cache"
# Forward passes of the frozen parts, by "text" / "codec". Training must leave these unchanged.
ENCODER_FORWARDS: Counter[str] = Counter()


def delayed_labels(codes: torch.Tensor, pad_id: int, audio_channels: int = 1) -> torch.Tensor:
    """Codes (codebooks, frames) -> labels (frames + delay, codebooks) in MusicGen's delay pattern.

    Codebook k of a mono model is delayed by k steps (a stereo model interleaves left/right codebooks and
    delays each pair together); the empty corners hold `pad_id`. This is what transformers'
    `build_delay_pattern_mask` builds at generation time (with the start token in front), without its
    generation-time arguments or a decoder instance, so it can run on cached codes.
    """
    n_codebooks, frames = codes.shape
    delays = [k // audio_channels for k in range(n_codebooks)]
    labels = codes.new_full((n_codebooks, frames + max(delays)), pad_id)
    for k, delay in enumerate(delays):
        labels[k, delay:delay + frames] = codes[k]
    return labels.T.contiguous()


def frozen_fingerprint(model: Any) -> str:
    """A digest of everything a cached encoding depends on: the codec and text-encoder weights + settings."""
    h = hashlib.sha256()
    decoder = model.config.decoder
    h.update(f"{model.config.audio_encoder.sampling_rate}:{decoder.audio_channels}:{decoder.num_codebooks}".encode())
    for part in (model.text_encoder, model.audio_encoder):
        for name, tensor in sorted(part.state_dict().items()):
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class EncodingCache:
    """Tensors by key: in memory for the run, persisted as safetensors files under `storage`.

    Persisting is an optimisation: a storage that refuses writes (a read-only dataset location) only costs
    re-encoding next time, so write errors are logged, never raised.
    """

    def __init__(self, storage: Storage):
        self.storage = storage
        self.memory: dict[str, torch.Tensor] = {}
        self.stats: Counter[str] = Counter()
        try:
            self.stored = set(storage.list())
        except Exception as err:  # an unreachable cache must not stop training
            log.warning("encoding cache %s not listed (%s); encoding from scratch", storage.uri, err)
            self.stored = set()
        self._write_failed = False

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self.memory:
            self.stats["memory"] += 1
            return self.memory[key]
        name = f"{key}.safetensors"
        value = None
        if name in self.stored:
            try:
                value = load_tensors(self.storage.read_bytes(name))["value"]
                self.stats["storage"] += 1
            except Exception as err:  # a damaged entry is recomputed and rewritten
                log.warning("encoding cache entry %s/%s unreadable (%s); recomputing", self.storage.uri, name, err)
        if value is None:
            value = compute()
            self.stats["computed"] += 1
            self._persist(name, value)
        self.memory[key] = value
        return value

    def _persist(self, name: str, value: torch.Tensor) -> None:
        try:
            self.storage.write_bytes(name, save_tensors({"value": value.contiguous()}))
            self.stored.add(name)
        except Exception as err:
            if not self._write_failed:
                log.warning("encoding cache %s not writable (%s); encodings are kept in memory only",
                            self.storage.uri, err)
            self._write_failed = True


def encoding_device() -> torch.device:
    """Where the frozen encoders run: this process's GPU if there is one (the Trainer moves the model
    there later anyway, and a codec encodes ~100x faster there than on CPU), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _count(kind: str) -> Callable[..., None]:
    def hook(module: Any, args: Any) -> None:
        ENCODER_FORWARDS[kind] += 1

    return hook


class MusicgenFamily:
    """`MusicgenForConditionalGeneration` trained on (prompt, clip path) pairs; clips live in `dataset_dir`."""

    name = "musicgen"

    def __init__(self, processor: Any, model: Any, config: TrainingConfig, dataset_dir: Storage):
        self.tokenizer = processor.tokenizer
        self.model = model
        self.dataset_dir = dataset_dir
        self.max_frames = config.data.max_length
        decoder = model.config.decoder
        self.pad_id = decoder.pad_token_id
        self.start_id = decoder.decoder_start_token_id if decoder.decoder_start_token_id is not None \
            else decoder.bos_token_id
        self.num_codebooks = decoder.num_codebooks
        self.default_target_modules = default_target_modules(decoder.num_codebooks)
        self.audio_channels = decoder.audio_channels
        self.sample_rate = model.config.audio_encoder.sampling_rate
        self.fingerprint = frozen_fingerprint(model)
        cache_root = dataset_dir.child(CACHE_PREFIX, f"musicgen-{self.fingerprint}")
        self.codes = EncodingCache(cache_root.child("codes"))
        self.text = EncodingCache(cache_root.child("text"))
        self.manifest = read_manifest(dataset_dir)
        self._checked_frozen: set[int] = set()  # ids of the models checked
        device = encoding_device()
        model.text_encoder.to(device)
        model.audio_encoder.to(device)
        if not getattr(model, "_tunewright_counted", False):
            model.text_encoder.register_forward_pre_hook(_count("text"))
            model.audio_encoder.encoder.register_forward_pre_hook(_count("codec"))
            model._tunewright_counted = True

    # -- encoding (once per clip / prompt) ------------------------------------------------------------
    def encode(self, prompt: str, sample: str) -> dict[str, Any]:
        codes = self.clip_codes(sample)[:, : self.max_frames]
        return {"labels": delayed_labels(codes, self.pad_id, self.audio_channels),
                "encoder_hidden_states": self.prompt_states(prompt)}

    def clip_codes(self, path: str) -> torch.Tensor:
        """Codebook tokens (codebooks, frames) of the clip at `path` in the dataset."""
        sha = self.manifest.get(path)
        data = None
        if sha is None:  # a dataset stored without a manifest: hash the content itself
            data = self._read(path)
            sha = hashlib.sha256(data).hexdigest()
        return self.codes.get(sha, lambda: self._encode_clip(path, data if data is not None else self._read(path)))

    def prompt_states(self, prompt: str) -> torch.Tensor:
        """Text-encoder hidden states (tokens, hidden) of `prompt`."""
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        key = hashlib.sha256(ids.numpy().astype("<i8").tobytes()).hexdigest()
        return self.text.get(key, lambda: self._encode_text(ids))

    def _read(self, path: str) -> bytes:
        try:
            return self.dataset_dir.read_bytes(path)
        except FileNotFoundError:
            raise DataError(f"audio file {path!r} is missing from dataset {self.dataset_dir.uri}") from None

    @torch.no_grad()
    def _encode_clip(self, path: str, data: bytes) -> torch.Tensor:
        try:
            wave, rate = decode_audio(data)
        except AudioDecodeError as err:
            raise DataError(f"audio file {path!r} in {self.dataset_dir.uri} {err}") from None
        wave = torch.from_numpy(conform(wave, rate, self.sample_rate, self.audio_channels))
        codec = self.model.audio_encoder
        with _eval(codec):
            # A stereo MusicGen encodes each channel on its own and interleaves the codebooks (as transformers'
            # generate does with an audio prompt).
            per_channel = [codec.encode(channel[None, None].to(codec.device)).audio_codes[0, 0]
                           for channel in wave]
        codes = torch.stack(per_channel, dim=1).reshape(-1, per_channel[0].shape[-1])
        if codes.shape[0] != self.num_codebooks:
            raise DataError(f"the codec gives {codes.shape[0]} codebooks but the decoder expects "
                            f"{self.num_codebooks}: the base model's configuration is inconsistent")
        return codes.cpu()

    @torch.no_grad()
    def _encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        encoder = self.model.text_encoder
        with _eval(encoder):
            out = encoder(input_ids=ids.to(encoder.device), attention_mask=torch.ones_like(ids).to(encoder.device))
        return out.last_hidden_state[0].float().cpu()

    # -- batches and log-likelihoods -----------------------------------------------------------------
    def collate(self, encoded: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = len(encoded)
        frames = max(e["labels"].shape[0] for e in encoded)
        tokens = max(e["encoder_hidden_states"].shape[0] for e in encoded)
        hidden = encoded[0]["encoder_hidden_states"].shape[1]
        labels = torch.full((n, frames, self.num_codebooks), self.pad_id, dtype=torch.long)
        states = torch.zeros((n, tokens, hidden))
        mask = torch.zeros((n, tokens), dtype=torch.long)
        for i, e in enumerate(encoded):
            length, count = e["labels"].shape[0], e["encoder_hidden_states"].shape[0]
            labels[i, :length] = e["labels"]
            states[i, :count] = e["encoder_hidden_states"]
            mask[i, :count] = 1
        return {"labels": labels, "encoder_hidden_states": states, "encoder_attention_mask": mask}

    def sequence_logprobs(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if id(model) not in self._checked_frozen:
            self._check_frozen(model)
        labels = batch["labels"]  # (batch, frames, codebooks)
        n, frames, codebooks = labels.shape
        # Decoder inputs are the labels shifted right behind the start token (transformers' shift_tokens_right).
        inputs = torch.cat([labels.new_full((n, 1, codebooks), self.start_id), labels[:, :-1]], dim=1)
        out = model(encoder_outputs=(batch["encoder_hidden_states"],), attention_mask=batch["encoder_attention_mask"],
                    decoder_input_ids=inputs.transpose(1, 2).reshape(n * codebooks, frames))
        logits = out.logits.reshape(n, codebooks, frames, -1).float()
        targets = labels.transpose(1, 2)  # (batch, codebooks, frames)
        valid = targets != self.pad_id
        # Flattened rows: cross_entropy over a permuted (batch, vocab, ...) view is ~5x slower on CPU.
        token_logp = -F.cross_entropy(logits.flatten(0, 2), targets.masked_fill(~valid, 0).flatten(),
                                      reduction="none").view_as(targets)
        mask = valid.to(token_logp.dtype)
        return (token_logp * mask).sum((1, 2)), mask.sum((1, 2))

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != self.pad_id).sum())

    def sample_tokens(self, encoded: dict[str, Any]) -> int:
        return int((encoded["labels"] != self.pad_id).sum())

    def _check_frozen(self, model: Any) -> None:
        """Cached encodings are only valid while the text encoder and codec are frozen."""
        trained = [name for name, p in model.named_parameters() if p.requires_grad
                   and (".text_encoder." in f".{name}" or ".audio_encoder." in f".{name}")]
        if trained:
            raise DataError(f"lora.targetModules/modulesToSave reach the frozen text encoder or codec "
                            f"({', '.join(trained[:3])}); MusicGen adapters train the decoder only")
        self._checked_frozen.add(id(model))


class _eval:
    """Run a module in eval mode (no dropout) and restore its mode afterwards."""

    def __init__(self, module: Any):
        self.module, self.was_training = module, module.training

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)
