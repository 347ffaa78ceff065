"""Delay-pattern labels and clip log-likelihoods, checked against transformers' own MusicGen code."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

from tunewright.config import TrainingConfig
from tunewright.models.loading import load_base
from tunewright.storage import open_storage
from tunewright.training.musicgen import MusicgenFamily, delayed_labels
from tunewright.training.objectives import DataError

VOCAB = 64


def transformers_delay(codes: torch.Tensor, audio_channels: int) -> torch.Tensor:
    """Labels as transformers' generation builds them: start token + codes through build_delay_pattern_mask."""
    n_codebooks, frames = codes.shape
    decoder = MusicgenForCausalLM(MusicgenDecoderConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=16,
        num_codebooks=n_codebooks, audio_channels=audio_channels, pad_token_id=VOCAB, bos_token_id=VOCAB))
    with_start = torch.cat([torch.full((n_codebooks, 1), VOCAB), codes], dim=1)
    length = frames + n_codebooks // audio_channels  # start token + frames + the largest delay
    _, pattern = decoder.build_delay_pattern_mask(with_start, pad_token_id=VOCAB, max_length=length)
    return pattern[:, 1:].T  # drop the start position; (positions, codebooks) like our labels


# transformers skips the pattern when max_length < 2 * codebooks - 1, so frames >= codebooks here.
@pytest.mark.parametrize(("codebooks", "channels", "frames"), [(4, 1, 4), (4, 1, 25), (2, 1, 7), (8, 2, 9)])
def test_delayed_labels_match_transformers_delay_pattern(codebooks: int, channels: int, frames: int) -> None:
    codes = torch.randint(0, VOCAB, (codebooks, frames), generator=torch.Generator().manual_seed(frames))
    labels = delayed_labels(codes, VOCAB, channels)
    assert torch.equal(labels, transformers_delay(codes, channels))
    # Every code appears exactly once; everything else is padding.
    assert int((labels != VOCAB).sum()) == codebooks * frames


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, musicgen_config: Callable[..., TrainingConfig]) -> MusicgenFamily:
    model, processor, _ = load_base("tiny-musicgen")
    dataset_dir = open_storage(f"file://{tmp_path_factory.mktemp('dataset')}")
    return MusicgenFamily(processor, model, musicgen_config("unused"), dataset_dir)


def _example(family: MusicgenFamily, frames: int, prompt: str, seed: int) -> dict:
    codes = torch.randint(0, VOCAB, (family.num_codebooks, frames), generator=torch.Generator().manual_seed(seed))
    return {"labels": delayed_labels(codes, family.pad_id), "encoder_hidden_states": family.prompt_states(prompt)}


def test_clip_logprob_is_the_models_own_loss_summed_over_codebooks_and_frames(family: MusicgenFamily) -> None:
    model = family.model.eval()
    example = _example(family, 12, "a bright whistle", seed=1)
    batch = family.collate([example])
    logp, tokens = family.sequence_logprobs(model, batch)
    assert int(tokens) == family.num_codebooks * 12  # delay-pattern padding is not counted
    with torch.no_grad():
        loss = model(encoder_outputs=(batch["encoder_hidden_states"],), attention_mask=batch["encoder_attention_mask"],
                     labels=batch["labels"]).loss  # mean CE per codebook, averaged over codebooks
    torch.testing.assert_close(-logp / tokens, loss.reshape(1), atol=1e-5, rtol=1e-5)


def test_padding_in_a_batch_changes_no_clip_logprob(family: MusicgenFamily) -> None:
    model = family.model.eval()
    short, long = _example(family, 5, "a dark hum", seed=2), _example(family, 17, "a high chime", seed=3)
    together, _ = family.sequence_logprobs(model, family.collate([short, long]))
    alone = torch.cat([family.sequence_logprobs(model, family.collate([e]))[0] for e in (short, long)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-5)


def test_training_the_text_encoder_is_refused(family: MusicgenFamily) -> None:
    model, _, _ = load_base("tiny-musicgen")
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q", "self_attn.q_proj"]))  # T5's q too
    with pytest.raises(DataError, match="frozen text encoder or codec"):
        family.sequence_logprobs(peft, family.collate([_example(family, 4, "a tone", seed=4)]))
