"""Model families: how a (prompt, sample) pair becomes model inputs and how its log-likelihood is computed.

Every objective (SFT, DPO, ranking) is written against this interface, so the same losses train causal
LMs on text and MusicGen on audio. `sequence_logprobs` is the one quantity they share: the sum of the
sample's token log-probabilities given the prompt, and the number of tokens summed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel


class Family(Protocol):
    name: str
    default_target_modules: list[str]

    def encode(self, prompt: str, sample: str) -> dict[str, Any]:
        """Model-ready features of one (prompt, sample) pair (lists or tensors, unpadded)."""

    def collate(self, encoded: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of `encode` outputs into one batch."""

    def sequence_logprobs(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of sample-token log-probs, number of sample tokens), each of shape (batch,)."""

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the model processed for this batch (throughput accounting)."""

    def sample_tokens(self, encoded: dict[str, Any]) -> int:
        """The token count `sequence_logprobs` gives one `encode` output, without running a model."""


class CausalLMFamily:
    """Decoder-only language models: `[bos] prompt sample [eos]`, loss on the sample tokens only."""

    name = "causal-lm"
    default_target_modules: ClassVar[list[str]] = ["q_proj", "k_proj", "v_proj", "o_proj"]

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, prompt: str, sample: str) -> dict[str, Any]:
        tok = self.tokenizer
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        sample_ids = tok(sample, add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:
            sample_ids = [*sample_ids, tok.eos_token_id]
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        # Keep the sample whole when possible: trim the prompt from the left, then the sample's tail.
        room = self.max_length - len(prefix) - len(sample_ids)
        if room < len(prompt_ids):
            prompt_ids = prompt_ids[max(0, len(prompt_ids) - max(room, 1)):]
        ids = (prefix + prompt_ids + sample_ids)[: self.max_length]
        n_prompt = len(prefix) + len(prompt_ids)
        return {"input_ids": ids, "sample_mask": [0] * n_prompt + [1] * (len(ids) - n_prompt)}

    def collate(self, encoded: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in encoded)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        sample = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            attention[i, :n] = 1
            sample[i, :n] = torch.tensor(e["sample_mask"])
        return {"input_ids": ids, "attention_mask": attention, "sample_mask": sample}

    def sequence_logprobs(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_logprobs(model, batch)

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def sample_tokens(self, encoded: dict[str, Any]) -> int:
        return sum(encoded["sample_mask"][1:])  # the first token is never predicted


def sample_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM's (sum of log-probs of the tokens where `sample_mask` is 1, their number) per row of `batch`
    (`input_ids`, `attention_mask`, `sample_mask`)."""
    # Only the sample's tokens are scored, so the LM head and the log-softmax over the vocabulary run on their
    # positions alone, not on the prompt's and the padding's: a pre-hook on the output embeddings hands the
    # head those rows of the hidden states. The model's forward stays in charge of the rest (e.g. Gemma's
    # logit soft-capping after the head). transformers' `logits_to_keep` cannot do this: it keeps the same
    # positions in every row of the batch.
    scored = batch["sample_mask"][:, 1:].bool()  # the hidden state at t predicts token t + 1
    head = extract_model_from_parallel(model).get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _head, args: (args[0][:, :-1][scored], *args[1:]))
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        hook.remove()
    token_logp = -F.cross_entropy(logits.float(), batch["input_ids"][:, 1:][scored], reduction="none")
    rows = scored.nonzero()[:, 0]
    sums = torch.zeros(scored.shape[0], dtype=token_logp.dtype, device=token_logp.device)
    return sums.index_add(0, rows, token_logp), scored.sum(-1).to(token_logp.dtype)
