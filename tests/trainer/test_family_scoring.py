"""CausalLMFamily.sequence_logprobs scores the sample's tokens only: equal to the log-softmax over the full
logits, the LM head fed the sample's positions alone, and the model's own processing after the head kept."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from tunewright.models.tokenizer import byte_tokenizer
from tunewright.training.family import CausalLMFamily

PAIRS = [("a calm song about rain:", "soft drops on the window"), ("loud:", "drums"),
         ("a very long prompt that the model conditions on before the sample:", "short")]


def _full_logits_score(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain computation: every position's logits, then the sample's tokens picked by the mask."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["sample_mask"][:, 1:].float()
    token_logp = -F.cross_entropy(logits.float().transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    return (token_logp * mask).sum(-1), mask.sum(-1)


def _model(kind: str) -> Any:
    torch.manual_seed(0)
    tok = byte_tokenizer()
    common = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "pad_token_id": tok.pad_token_id}
    if kind == "llama":
        base = LlamaForCausalLM(LlamaConfig(**common))
    else:  # soft-caps its logits after the LM head (final_logit_softcapping)
        base = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5))
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_scores_equal_the_full_logits_computation_and_the_head_sees_sample_positions_only(kind: str) -> None:
    model = _model(kind)
    family = CausalLMFamily(byte_tokenizer(), max_length=64)
    batch = family.collate([family.encode(p, s) for p, s in PAIRS])
    rows_seen: list[int] = []
    probe = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        logps, tokens = family.sequence_logprobs(model, batch)
    finally:
        probe.remove()
    expected_logps, expected_tokens = _full_logits_score(model, batch)

    assert rows_seen == [int(batch["sample_mask"][:, 1:].sum())]
    assert rows_seen[0] < int(batch["attention_mask"].sum())  # prompts and padding were not scored
    assert torch.equal(tokens, expected_tokens)
    assert torch.allclose(logps, expected_logps, rtol=1e-5, atol=1e-4)
    with model.disable_adapter():  # the reference path: the same hook, the base model
        ref, _ = family.sequence_logprobs(model, batch)
        expected_ref, _ = _full_logits_score(model, batch)
    assert torch.allclose(ref, expected_ref, rtol=1e-5, atol=1e-4) and not torch.allclose(ref, logps)


def test_gradients_flow_to_the_adapter_as_through_the_full_logits() -> None:
    model, family = _model("llama"), CausalLMFamily(byte_tokenizer(), max_length=64)
    batch = family.collate([family.encode(p, s) for p, s in PAIRS])
    grads = []
    for score in (family.sequence_logprobs, _full_logits_score):
        model.zero_grad()
        logps, tokens = score(model, batch)
        (-logps.sum() / tokens.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
