"""Tests of the character-level tokenizer: round trips, unknown characters, special tokens, the saved file."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.tokenizer.char import CharTokenizer

EOT = "<|endoftext|>"
FAST = settings(max_examples=60, deadline=None)
unicode_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)


@FAST
@given(train=unicode_text, text=st.data())
def test_round_trip_over_the_training_characters(train, text):
    tok = CharTokenizer.train([train])
    assert tok.vocab_size == len(set(train)) + 1 and tok.eot_id == tok.vocab_size - 1
    sample = text.draw(st.text(alphabet=st.sampled_from(sorted(set(train)))) if train else st.just(""))
    ids = tok.encode(sample)
    assert len(ids) == len(sample) and tok.decode(ids) == sample
    assert tok.encode_batch([train, sample]) == [tok.encode(train), ids]


def test_unknown_character_is_an_error_naming_it():
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(GhoulError, match=r"'😀' \(U\+1F600\)"):
        tok.encode("ab😀")
    with pytest.raises(GhoulError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_lone_surrogates_become_replacement_character():
    tok = CharTokenizer.train(["a\ud800b"])
    assert tok.chars == ["a", "b", "\ufffd"]
    assert tok.decode(tok.encode("\udfffab")) == "\ufffdab"


@FAST
@given(parts=st.lists(st.text(alphabet="ab<|>endoftx \n"), min_size=1, max_size=4))
def test_endoftext_is_one_token_only_when_allowed(parts):
    tok = CharTokenizer.train(["ab<|>endoftx \n"])
    text = EOT.join(parts)
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(tok.eot_id) == text.count(EOT) and tok.decode(ids) == text
    ordinary = tok.encode(text)
    assert tok.eot_id not in ordinary and tok.decode(ordinary) == text


def test_real_text_save_and_load(data, tmp_path):
    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.train([text])
    assert tok.vocab_size == len(set(text)) + 1
    path = tmp_path / "char.json"
    tok.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["type"] == "char" and saved["chars"] == sorted(set(text))
    assert saved["special_tokens"] == {EOT: len(set(text))}
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer) and isinstance(loaded, Tokenizer) and loaded.name == "char"
    assert loaded.encode(text[:5000]) == tok.encode(text[:5000]) and loaded.decode(tok.encode(text)) == text


def test_bad_file_is_an_error(tmp_path):
    path = tmp_path / "char.json"
    path.write_text(json.dumps({"type": "char", "chars": ["b", "a"]}), encoding="utf-8")
    with pytest.raises(GhoulError, match="sorted"):
        load_tokenizer(path)


def test_cli_trains_a_char_tokenizer(data, tmp_path, capsys):
    out = tmp_path / "char.json"
    assert main(["tokenizer", "train", "--kind", "char", "--input", str(data / "lovecraft" / "lovecraft.txt.gz"),
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "The Tomb"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert len(ids) == 8 and load_tokenizer(out).decode(ids) == "The Tomb"
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "Tomb 😀"]) == 2
    assert "U+1F600" in capsys.readouterr().err
