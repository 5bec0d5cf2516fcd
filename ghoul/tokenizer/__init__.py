"""The tokenizer protocol every stage relies on, and `load_tokenizer` to get one by name or path.

No torch here: data preparation workers and `ghoul tokenizer` import this package on their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ghoul.errors import GhoulError
from ghoul.layout import resolve_checkpoint
from ghoul.tokenizer.bpe import BPETokenizer
from ghoul.tokenizer.char import CharTokenizer
from ghoul.tokenizer.gpt2 import GPT2Tokenizer

if TYPE_CHECKING:
    import numpy as np

TOKENIZER_FILE = "tokenizer.json"
# tokenizer types stored in a JSON file, by its `type` field
_FILE_LOADERS = {"gpt2": lambda data: GPT2Tokenizer(), "bpe": BPETokenizer.from_dict, "char": CharTokenizer.from_dict}


@runtime_checkable
class Tokenizer(Protocol):
    """What data preparation, training, evaluation and sampling need of a tokenizer."""

    name: str  # "gpt2", or a type name ("bpe", "char") for tokenizers that live in a file
    vocab_size: int
    eot_id: int  # <|endoftext|>: separates documents

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it are encoded as ordinary text."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one JSON file that `load_tokenizer(path)` reads back."""

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of each token id (int64, indexed by id), special tokens 0: the denominator of bits per byte."""


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer by name (`gpt2`), by JSON file, or from a model directory (its tokenizer.json or config.json)."""
    if str(spec) == "gpt2":
        return GPT2Tokenizer()
    path = Path(spec)
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            return load_tokenizer(path / TOKENIZER_FILE)
        checkpoint = resolve_checkpoint(path)
        if checkpoint != path:  # a run directory: its newest checkpoint knows the tokenizer
            return load_tokenizer(checkpoint)
        config = path / "config.json"
        if config.is_file():
            return load_tokenizer(json.loads(config.read_text()).get("tokenizer", "gpt2"))
        raise GhoulError(f"{path} holds no {TOKENIZER_FILE} or config.json: give a tokenizer name or file")
    if path.is_file():
        return _load_file(path)
    raise GhoulError(f"unknown tokenizer '{spec}': use 'gpt2' or the path of a tokenizer JSON file "
                     "(made by `ghoul tokenizer train`)")


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether `a` and `b` give every text the same ids: the same kind, and the same contents for a kind that lives
    in a file (two BPEs of one size trained on other text give the same ids to other tokens)."""
    def contents(tokenizer: Tokenizer) -> dict:
        return tokenizer.to_dict() if isinstance(tokenizer, BPETokenizer | CharTokenizer) else {}
    return a.name == b.name and contents(a) == contents(b)


def _load_file(path: Path) -> Tokenizer:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GhoulError(f"tokenizer file {path} is not valid JSON: {e}") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in _FILE_LOADERS:
        raise GhoulError(f"tokenizer file {path} has type {kind!r}; known types: {', '.join(sorted(_FILE_LOADERS))}")
    return _FILE_LOADERS[kind](data)
