"""The Qwen3 text side both tiny transformer families share: a byte-level Qwen2 tokenizer built offline with the
chat template's structure, and a shrunk Qwen3 config (Z-Image and FLUX.2 [klein] both condition on Qwen3-4B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cache.tiny.sdxl import _bytes_to_unicode

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
# Qwen3's template, reduced to what the image pipelines use: user turns, the generation prompt, and the empty
# think block `enable_thinking=False` adds (FLUX.2 [klein] passes False, Z-Image True)
CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
    "{%- endif %}"
)
# Qwen/Qwen3-4B's text config; the tiny keeps its grouped-query ratio (4 query heads per key/value head) and its
# tied embeddings
QWEN3_4B = {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}


def write_qwen_tokenizer(dest: Path) -> Any:
    """A byte-level Qwen2 tokenizer with no merges (every byte a token) and Qwen's special tokens."""
    from transformers import Qwen2Tokenizer

    symbols = sorted(_bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 1024
    tokenizer.save_pretrained(dest)
    return tokenizer


def tiny_qwen3_config(vocab_size: int, num_hidden_layers: int) -> Any:
    """Qwen3-4B's structure at width 32: enough layers for the pipeline's hidden-state picks."""
    from transformers import Qwen3Config

    return Qwen3Config(
        **{
            **QWEN3_4B,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 8,
        },
        vocab_size=vocab_size,
        max_position_embeddings=1024,
    )
