"""A tiny ACE-Step 1.5 pipeline with random weights, built offline.

The same components and layout as `ACE-Step/acestep-v15-xl-turbo-diffusers` (an XL-style DiT wider than its
condition encoder, a Qwen3 text encoder, a stereo Oobleck VAE at 25 latent frames per second, a turbo schedule)
plus the audio tokenizer and detokenizer the `cover` task needs (in `cover/`), every width shrunk. The tokenizer is byte-level
BPE with no merges, built here, so nothing comes from a hub. Its outputs are noise.
"""

from __future__ import annotations

from pathlib import Path

SEED = 20260103
# 25 latent frames per second as in the real VAE (48 kHz / (2*4*4*6*10)), so durations, the 30 s timbre window and
# the silence latent behave as at full size; at 8 kHz (five strides, 2*2*4*2*10) the VAE, which runs at the audio
# rate, costs a sixth, and the reference audio of a cover is resampled in every test.
_VAE_DOWNSAMPLING = [2, 2, 4, 2, 10]
_SAMPLE_RATE = 8000
_ACOUSTIC_DIM = 4  # 64 in the real model; the VAE encoder runs 2x this many channels at 48 kHz
_ENCODER_WIDTH = 32  # the condition encoder (2048 in XL)
_DIT_WIDTH = 48  # the DiT (2560 in XL): wider than the encoder, as in XL
_TEXT_WIDTH = 16  # Qwen3-Embedding-0.6B: 1024
_HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
COVER = "cover"
_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def write_tokenizer(dest: Path) -> int:
    """A byte-level BPE tokenizer (Qwen's pre-tokenizer family) with no merges; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(_SPECIAL))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=_SPECIAL[0], pad_token=_SPECIAL[0], model_max_length=32768
    )
    wrapped.save_pretrained(dest)
    return len(wrapped)


def build(dest: Path) -> None:
    """Write the tiny pipeline in diffusers' folder layout (safetensors) into `dest`."""
    import torch
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    dest = Path(dest)
    torch.manual_seed(SEED)
    vocab_size = write_tokenizer(dest / "tokenizer")
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=_TEXT_WIDTH,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=4096,
            pad_token_id=vocab_size - len(_SPECIAL),
        )
    )
    shared = {"rope_theta": 1000000.0, "sliding_window": 16, "rms_norm_eps": 1e-6, **_HEADS}
    transformer = AceStepTransformer1DModel(
        hidden_size=_DIT_WIDTH,
        intermediate_size=96,
        num_hidden_layers=2,
        in_channels=3 * _ACOUSTIC_DIM,  # noisy latents + source latents + chunk mask
        audio_acoustic_hidden_dim=_ACOUSTIC_DIM,
        patch_size=2,
        encoder_hidden_size=_ENCODER_WIDTH,
        is_turbo=True,
        model_version="turbo",
        **shared,
    )
    condition_encoder = AceStepConditionEncoder(
        hidden_size=_ENCODER_WIDTH,
        intermediate_size=64,
        text_hidden_dim=_TEXT_WIDTH,
        timbre_hidden_dim=_ACOUSTIC_DIM,
        num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2,
        **shared,
    )
    codec = {
        "hidden_size": _ENCODER_WIDTH,
        "intermediate_size": 64,
        "audio_acoustic_hidden_dim": _ACOUSTIC_DIM,
    }
    audio_tokenizer = AceStepAudioTokenizer(fsq_dim=_ENCODER_WIDTH, **codec, **shared)
    audio_token_detokenizer = AceStepAudioTokenDetokenizer(**codec, **shared)
    vae = AutoencoderOobleck(
        encoder_hidden_size=2 * _ACOUSTIC_DIM,  # mean and scale of each latent channel
        downsampling_ratios=_VAE_DOWNSAMPLING,
        channel_multiples=[1, 2, 2, 4, 4],
        decoder_channels=4,
        decoder_input_channels=_ACOUSTIC_DIM,
        audio_channels=2,
        sampling_rate=_SAMPLE_RATE,
    )
    pipeline = AceStepPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=PreTrainedTokenizerFast.from_pretrained(dest / "tokenizer"),
        transformer=transformer,
        condition_encoder=condition_encoder,
        # ACE-Step computes its own shifted sigmas in [0, 1]; the scheduler must not rescale them
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
    )
    pipeline.save_pretrained(dest, safe_serialization=True)
    # beside the pipeline, where the production folder gets them from another repo (cache.catalog "ace-step")
    audio_tokenizer.save_pretrained(dest / COVER / "audio_tokenizer", safe_serialization=True)
    audio_token_detokenizer.save_pretrained(dest / COVER / "audio_token_detokenizer", safe_serialization=True)
