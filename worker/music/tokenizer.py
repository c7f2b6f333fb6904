"""Prompt construction (docs/HEARTMULA.md §2.3): tags and lyrics to the `[L, 9]` token/mask grid of the LM.

Unlike the reference, a tags/lyrics string is always text: it is never resolved as a file path, so a
request cannot make the worker read server files (docs/HEARTMULA.md §7.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from worker.music.model_config import GenConfig

TEXT_SLOT = 8  # slots 0..7 are the audio codebooks, slot 8 the text


@dataclass(frozen=True)
class Prompt:
    tokens: torch.Tensor  # [L, 9] int64; text ids in slot 8
    mask: torch.Tensor  # [L, 9] bool; only the text slot is on
    muq_idx: int  # the all-zero row between tags and lyrics, filled with the MuQ embedding
    tags_ids: list[int]  # tokenizer output for the wrapped tags, before the BOS/EOS fix
    lyrics_ids: list[int]  # tokenizer output for the lower-cased lyrics, before the BOS/EOS fix

    @property
    def length(self) -> int:
        return self.tokens.shape[0]


def wrap_tags(tags: str) -> str:
    """Lower-cases and wraps in <tag>...</tag>; each end is checked on its own, after lower-casing."""
    tags = tags.lower()
    if not tags.startswith("<tag>"):
        tags = "<tag>" + tags
    if not tags.endswith("</tag>"):
        tags = tags + "</tag>"
    return tags


class PromptEncoder:
    def __init__(self, tokenizer: Tokenizer, gen: GenConfig) -> None:
        self.tokenizer = tokenizer
        self.gen = gen

    @classmethod
    def from_file(cls, path: str | Path, gen: GenConfig) -> PromptEncoder:
        return cls(Tokenizer.from_file(str(path)), gen)

    def encode(self, tags: str, lyrics: str) -> Prompt:
        tags_ids = self.tokenizer.encode(wrap_tags(tags)).ids
        lyrics_ids = self.tokenizer.encode(lyrics.lower()).ids
        t, lyr = self._bracket(tags_ids), self._bracket(lyrics_ids)
        length = len(t) + 1 + len(lyr)
        tokens = torch.zeros(length, TEXT_SLOT + 1, dtype=torch.long)
        tokens[: len(t), TEXT_SLOT] = torch.tensor(t)
        tokens[len(t) + 1 :, TEXT_SLOT] = torch.tensor(lyr)
        mask = torch.zeros(length, TEXT_SLOT + 1, dtype=torch.bool)
        mask[:, TEXT_SLOT] = True
        return Prompt(tokens, mask, len(t), tags_ids, lyrics_ids)

    def _bracket(self, ids: list[int]) -> list[int]:
        """Makes the ids start with BOS and end with EOS, adding each only where it is missing."""
        if not ids:  # a tokenizer without a BOS template gives nothing for empty text
            return [self.gen.text_bos_id, self.gen.text_eos_id]
        if ids[0] != self.gen.text_bos_id:
            ids = [self.gen.text_bos_id, *ids]
        if ids[-1] != self.gen.text_eos_id:
            ids = [*ids, self.gen.text_eos_id]
        return ids
