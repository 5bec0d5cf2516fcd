"""Each tokenizer's UTF-8 byte length per token id (the denominator of bits per byte) against real text."""

from __future__ import annotations

import json

import pytest

from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.tokenizer.bpe import BPETokenizer
from ghoul.tokenizer.char import CharTokenizer

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def horror(data) -> list[str]:
    with open(data / "creepypasta" / "reddit_horror_stories.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["selftext"] for line in f][:40]


def make(kind: str, docs: list[str]) -> Tokenizer:
    if kind == "gpt2":
        return load_tokenizer("gpt2")
    if kind == "bpe":  # a second special token: every special id must count no bytes
        return BPETokenizer.train(docs, 400, special_tokens=[EOT, "<|pad|>"])
    return CharTokenizer.train(docs)


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_byte_lengths_of_the_tokens_add_up_to_the_text(kind, horror):
    tok = make(kind, horror)
    lengths = tok.token_byte_lengths()
    assert isinstance(tok, Tokenizer) and lengths.shape == (tok.vocab_size,) and lengths[tok.eot_id] == 0
    assert any(len(doc.encode("utf-8")) > len(doc) for doc in horror)  # multi-byte characters are in the text
    for doc in horror:
        ids = tok.encode(doc) + [tok.eot_id]  # a document boundary, as in the shards: no bytes of text
        assert lengths[ids].sum() == len(doc.encode("utf-8"))
    if kind == "bpe":
        assert lengths[tok.special_tokens["<|pad|>"]] == 0 and lengths[:256].tolist() == [1] * 256
