"""A tiny BLIP captioner with random weights, built offline: Salesforce/blip-image-captioning-base's config
(a ViT image encoder, a BERT-style text decoder that cross-attends to it, a BERT WordPiece tokenizer with BLIP's
`[DEC]` start token) shrunk to a few thousand parameters. `BlipForConditionalGeneration` and `BlipProcessor` load
it exactly as the real one, so the captioning path is real; its captions are random words.
"""

from __future__ import annotations

import json
from pathlib import Path

SEED = 20260103
IMAGE_SIZE = 32  # the real model's 384, shrunk: 2x2 patches of 16 pixels
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORDS = ("a", "photo", "of", "the", "person", "woman", "man", "dog", "red", "blue", "small", "sitting", "on")
# BLIP appends its decoder's start token and the encoder token after BERT's vocabulary
_BLIP_TOKENS = ("[DEC]", "[ENC]")
# the real processor's normalisation (OpenAI CLIP's mean and std)
_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]


def build(dest: Path) -> None:
    """Write the tiny model, its tokenizer and its image processor into `dest` (save_pretrained layouts)."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokens = [*_SPECIAL, *_WORDS, *_BLIP_TOKENS]
    vocab = dest / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(
        str(vocab), do_lower_case=True, bos_token="[DEC]", additional_special_tokens=["[ENC]"]
    )
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=_MEAN, image_std=_STD
        ),
        tokenizer=tokenizer,
    )
    width = 32
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokens),
            "hidden_size": width,
            "encoder_hidden_size": width,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": tokens.index("[DEC]"),
            "sep_token_id": tokens.index("[SEP]"),
            "pad_token_id": tokens.index("[PAD]"),
            "eos_token_id": tokens.index("[SEP]"),
        },
        vision_config={
            "hidden_size": width,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
        },
        projection_dim=width,
    )
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(dest, safe_serialization=True)
    processor.save_pretrained(dest)
    (dest / "tiny.json").write_text(json.dumps({"seed": SEED, "of": "Salesforce/blip-image-captioning-base"}))
