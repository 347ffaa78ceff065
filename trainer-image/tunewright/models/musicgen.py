"""MusicGen base models: the tiny random-weight preset and loading any MusicGen through `from_pretrained`.

A MusicGen is three models: a T5 text encoder (the prompt's conditioning), an EnCodec audio codec (audio <->
codebook tokens) and a decoder that predicts codebook tokens. Adapters train the decoder only; the text
encoder and codec stay frozen (which is what lets training cache their outputs).
"""

from __future__ import annotations

from typing import Any

import torch

# LoRA defaults: the decoder's self-attention (what the music sounds like) and cross-attention (how it
# follows the prompt) projections, and its per-codebook output heads (without them a LoRA barely moves the
# token distributions: on tiny-musicgen held-out NLL plateaus at 4.06 instead of reaching 3.2). Suffixes
# are matched by PEFT against full module names; no T5 or EnCodec module ends in `self_attn.*`,
# `encoder_attn.*` or `lm_heads.<n>`, so the frozen parts stay untouched.
ATTENTION_MODULES = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
    "encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj", "encoder_attn.out_proj",
]


def default_target_modules(num_codebooks: int) -> list[str]:
    return [*ATTENTION_MODULES, *(f"lm_heads.{k}" for k in range(num_codebooks))]


TINY_SAMPLE_RATE = 8000


def load_musicgen(path: str, revision: str | None = None) -> tuple[Any, Any]:
    """(MusicgenForConditionalGeneration, MusicgenProcessor) from a directory or hub id, encoders frozen."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(path, revision=revision, dtype="float32")
    processor = AutoProcessor.from_pretrained(path, revision=revision)
    model.freeze_text_encoder()
    model.freeze_audio_encoder()
    return model, processor


def tiny_musicgen(codebooks: int = 4, codebook_size: int = 64, hidden: int = 64) -> tuple[Any, Any]:
    """A MusicGen with random weights built from configs: 8 kHz audio, 50 codec frames per second.

    The consistency rules (see transformers' MusicGen): decoder vocab == codebook size; decoder codebooks ==
    the codec's quantizers (set through `target_bandwidths`); pad == bos == decoder start == vocab size.
    """
    from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config

    tokenizer = word_tokenizer()
    text = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id)
    ratios = [5, 4, 4, 2]  # hop 160 samples: 50 frames/s at 8 kHz
    frame_rate = TINY_SAMPLE_RATE // 160
    bits = codebook_size.bit_length() - 1
    codec = EncodecConfig(sampling_rate=TINY_SAMPLE_RATE, codebook_size=codebook_size, codebook_dim=16,
                          hidden_size=16, num_filters=4, upsampling_ratios=ratios, num_lstm_layers=1,
                          target_bandwidths=[codebooks * frame_rate * bits / 1000])
    decoder = MusicgenDecoderConfig(vocab_size=codebook_size, hidden_size=hidden, num_hidden_layers=2,
                                    num_attention_heads=4, ffn_dim=hidden * 2, num_codebooks=codebooks,
                                    max_position_embeddings=2048, pad_token_id=codebook_size,
                                    bos_token_id=codebook_size, decoder_start_token_id=codebook_size)
    model, processor = assemble(text, codec, decoder, tokenizer)
    assert model.audio_encoder.quantizer.num_quantizers == codebooks
    return model, processor


def assemble(text: Any, codec: Any, decoder: Any, tokenizer: Any) -> tuple[Any, Any]:
    """A random-weight MusicGen from its text encoder, codec and decoder configs, with a codec that passes
    signal and has usable codebooks, and its processor (`tokenizer` + the codec's sampling rate)."""
    from transformers import (
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
    )

    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder))
    pass_signal(model.audio_encoder.encoder)
    init_codebooks(model.audio_encoder)
    processor = MusicgenProcessor(EncodecFeatureExtractor(feature_size=1, sampling_rate=codec.sampling_rate),
                                  tokenizer)
    return model, processor


def word_tokenizer() -> Any:
    """A word-level tokenizer over the synthetic prompts' words (T5 style: `</s>` appended, `<pad>` = 0).

    A tiny random text encoder reads a prompt far better as words than as bytes: a word is one embedding,
    where bytes would need layers to assemble. Unknown words become `<unk>`; this is a test model.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tunewright.data.synthetic_audio import vocabulary

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {word: i for i, word in enumerate([*specials, *sorted(set(vocabulary()) - set(specials))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@torch.no_grad()
def pass_signal(encoder: Any) -> None:
    """Make a random EnCodec encoder's output depend on its input.

    Freshly initialised, every weight-normed conv has a gain of ~0.6 and a bias, so after a dozen layers the
    embeddings are nearly constant (their variation over time is ~1 % of their size) and every clip gets
    the same codes. Unit gains and zero biases keep the signal's scale through the stack.
    """
    for name, param in encoder.named_parameters():
        if name.endswith("parametrizations.weight.original0"):  # weight norm's gain g
            param.fill_(1.0)
        elif name.endswith("bias"):
            param.zero_()


@torch.no_grad()
def init_codebooks(codec: Any, seed: int = 0) -> None:
    """Give a random EnCodec usable codebooks (a fresh one has all-zero codebooks, so every code is 0).

    Each quantizer's codebook becomes random frames of the residual it sees on synthetic audio (drawn with
    replacement when the codebook has more entries than the audio has frames), plus a little noise;
    deterministic for a seed, so every process builds the identical codec.
    """
    from tunewright.data.synthetic_audio import calibration_audio

    gen = torch.Generator().manual_seed(seed)
    audio = torch.from_numpy(calibration_audio(codec.config.sampling_rate, seed=seed))[:, None, :]
    residual = codec.encoder(audio).transpose(1, 2).reshape(-1, codec.config.codebook_dim)  # (frames, dim)
    spread = residual.std()
    for layer in codec.quantizer.layers:
        frames, size = residual.shape[0], codec.config.codebook_size
        picked = torch.randperm(frames, generator=gen)[:size] if frames >= size else \
            torch.randint(frames, (size,), generator=gen)
        embed = residual[picked] + 0.05 * spread * torch.randn(len(picked), residual.shape[1], generator=gen)
        layer.codebook.embed.copy_(embed)
        layer.codebook.embed_avg.copy_(embed)
        residual = residual - layer.codebook.decode(layer.codebook.encode(residual))
