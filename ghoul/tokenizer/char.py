"""A character-level tokenizer: one token per character of the training text, plus `<|endoftext|>`.

The tokenizer of char-rnn and of nanoGPT's shakespeare_char: tiny vocabulary, long sequences, easy to inspect.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from ghoul.errors import GhoulError
from ghoul.files import atomic_write_text
from ghoul.tokenizer.bpe import clean_text
from ghoul.tokenizer.gpt2 import EOT

FORMAT_VERSION = 1


class CharTokenizer:
    """Implements `ghoul.tokenizer.Tokenizer`: ids 0..n-1 are the training text's characters in code point order,
    id n is `<|endoftext|>`.

    A character that was not in the training text has no id: `encode` raises a GhoulError naming it (there is no
    unknown token). Lone surrogates become U+FFFD first, as in the BPE tokenizer.
    """

    name = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise GhoulError("a char tokenizer's vocabulary must be single characters")
        self.ids = {c: i for i, c in enumerate(self.chars)}
        self.eot_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1
        self.special_tokens = {EOT: self.eot_id}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """The tokenizer whose vocabulary is every character of `texts`."""
        return cls(char for text in texts for char in clean_text(text))

    def encode(self, text: str, allowed_special: Collection[str] | Literal["all"] = ()) -> list[int]:
        """Token ids of `text`; `<|endoftext|>` is ordinary text unless `allowed_special` holds it (or is "all")."""
        text = clean_text(text)
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        if allowed - {EOT}:
            raise GhoulError(f"not special tokens of this tokenizer: {', '.join(sorted(allowed - {EOT}))}")
        pieces = text.split(EOT) if EOT in allowed else [text]
        ids = self._encode_ordinary(pieces[0])
        for piece in pieces[1:]:
            ids += [self.eot_id, *self._encode_ordinary(piece)]
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self.ids[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise GhoulError(f"character {c!r} (U+{ord(c):04X}) is not in the char tokenizer's vocabulary: "
                             "it did not occur in the training text") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        ids = [int(t) for t in ids]  # also accepts numpy integers
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise GhoulError(f"token id {bad} is out of range for this char tokenizer (vocab size {self.vocab_size})")
        tokens = [*self.chars, EOT]  # id -> text
        return "".join(tokens[t] for t in ids)

    def token_byte_lengths(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.chars] + [0], dtype=np.int64)  # eot last: 0 bytes

    def to_dict(self) -> dict:
        return {"type": "char", "version": FORMAT_VERSION, "vocab_size": self.vocab_size,
                "special_tokens": self.special_tokens, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        """The tokenizer written by `save`; `chars` lists the characters in id order."""
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise GhoulError("not a valid char tokenizer file: 'chars' must be a list of characters")
        tok = cls(chars)
        if tok.chars != chars or data.get("special_tokens", tok.special_tokens) != tok.special_tokens:
            raise GhoulError("char tokenizer file: 'chars' must be distinct and sorted, with <|endoftext|> after them")
        return tok

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one JSON file (characters as themselves where printable), atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")
