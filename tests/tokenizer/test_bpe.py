"""Tests of our byte-level BPE: round trips, exact vocabulary size, determinism, special tokens, the incremental
trainer against a naive recount, the saved file, and the `ghoul tokenizer` commands."""

from __future__ import annotations

import collections
import gzip
import json
import subprocess
import sys

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.tokenizer.bpe import PATTERNS, BPETokenizer, _PythonEncoder, tiktoken_compatible
from ghoul.tokenizer.gpt2 import _bytes_to_unicode

EOT = "<|endoftext|>"
FAST = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def shakespeare(data) -> str:
    return (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def horror(data) -> list[str]:
    with open(data / "creepypasta" / "reddit_horror_stories.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["selftext"] for line in f][:60]


@pytest.fixture(scope="module")
def tok(shakespeare, horror) -> BPETokenizer:
    return BPETokenizer.train([shakespeare[:100_000], *horror[:20]], 1024, special_tokens=[EOT, "<|pad|>"])


@pytest.fixture(scope="module")
def py_tok(tok) -> BPETokenizer:
    """The same tokenizer forced onto the pure-Python encoder."""
    other = BPETokenizer.from_dict(tok.to_dict())
    other._encoder = _PythonEncoder(other)
    return other


unicode_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)


@FAST
@given(text=unicode_text)
@example(text="👩‍👩‍👧 e\u0301 \u0000\u001b\t\r\n ﷽ 𝔘𝔫𝔦 1234567 I'M you'll")
def test_round_trip_any_unicode(tok, py_tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert py_tok.encode(text) == ids  # tiktoken and the merges applied in order agree
    assert tok.encode_batch([text, text[::-1]]) == [ids, tok.encode(text[::-1])]


def _replace_lone_surrogates(text: str) -> str:
    """The documented rule, written out: a high+low surrogate pair is its character, a lone one is U+FFFD."""
    out, i = [], 0
    while i < len(text):
        c = ord(text[i])
        if 0xD800 <= c < 0xDC00 and i + 1 < len(text) and 0xDC00 <= ord(text[i + 1]) < 0xE000:
            out.append(chr(0x10000 + ((c - 0xD800) << 10) + ord(text[i + 1]) - 0xDC00))
            i += 2
            continue
        out.append("\ufffd" if 0xD800 <= c < 0xE000 else text[i])
        i += 1
    return "".join(out)


@FAST
@given(text=st.text(alphabet=st.sampled_from(["a", " ", "é", "😀", "\ud800", "\udfff", "\ud83d", "\ude00"])))
def test_lone_surrogates_become_replacement_character(tok, py_tok, text):
    expected = _replace_lone_surrogates(text)
    assert tok.decode(tok.encode(text)) == expected
    assert tok.encode(text) == tok.encode(expected) == py_tok.encode(text)


def test_invalid_utf8_decodes_to_replacement_character(tok):
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # a truncated 3-byte sequence (the start of "€")
    assert tok.decode([ord("a"), 0xFF, ord("b")]) == "a\ufffdb"
    with pytest.raises(GhoulError, match="out of range"):
        tok.decode([tok.vocab_size])


@settings(max_examples=12, deadline=None)
@given(vocab_size=st.integers(258, 700), start=st.integers(0, 50_000), pattern=st.sampled_from(["gpt2", "gpt4"]))
def test_vocab_has_exactly_the_requested_size(shakespeare, vocab_size, start, pattern):
    tok = BPETokenizer.train([shakespeare[start:start + 20_000]], vocab_size, pattern)
    assert tok.vocab_size == vocab_size == 256 + len(tok.merges) + 1
    assert tok.eot_id == vocab_size - 1
    assert max(tok.encode(shakespeare[:2000])) < vocab_size


def test_unreachable_vocab_size_and_too_small_vocab_size_are_errors():
    with pytest.raises(GhoulError, match="at most 260"):
        BPETokenizer.train(["abcd"], 300)  # 3 merges make "abcd" one token; nothing is left to merge
    with pytest.raises(GhoulError, match="at least 258"):
        BPETokenizer.train(["abcd"], 257, special_tokens=[EOT, "<|pad|>"])


def test_training_is_deterministic_and_ignores_document_order(horror):
    first = BPETokenizer.train(horror, 600).merges
    assert BPETokenizer.train(horror, 600).merges == first
    assert BPETokenizer.train(horror[::-1], 600).merges == first


@FAST
@given(parts=st.lists(unicode_text, min_size=1, max_size=5), special=st.sampled_from([EOT, "<|pad|>"]))
def test_special_tokens_are_never_split(tok, py_tok, parts, special):
    text = special.join(parts)
    sid = tok.special_tokens[special]
    for t in (tok, py_tok):
        ids = t.encode(text, allowed_special="all")
        assert ids.count(sid) == len(parts) - 1 + sum(p.count(special) for p in parts)
        assert t.decode(ids) == text
        ordinary = t.encode(text)  # the protocol's encode: special-token strings are plain text
        assert sid not in ordinary and t.decode(ordinary) == text
    assert py_tok.encode(text, allowed_special={special}) == tok.encode(text, allowed_special={special})


def _naive_merges(chunks: collections.Counter, n_merges: int) -> list[tuple[int, int]]:
    """Reference trainer: recount every pair after every merge; most frequent pair, smallest pair on ties."""
    words = [(list(chunk.encode("utf-8")), freq) for chunk, freq in chunks.items()]
    merges = []
    for new in range(256, 256 + n_merges):
        counts: collections.Counter = collections.Counter()
        for ids, freq in words:
            for pair in zip(ids, ids[1:], strict=False):
                counts[pair] += freq
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, (ids, _) in enumerate(words):
            out, i = [], 0
            while i < len(ids):
                if tuple(ids[i:i + 2]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            words[w] = (out, words[w][1])
    return merges


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_trainer_matches_naive_recount(shakespeare, horror, pattern):
    text = shakespeare[5000:8000] + horror[1][:3000] + "aaaaaaa abababab 1111111 "  # runs test overlapping pairs
    chunks = collections.Counter(regex.findall(PATTERNS[pattern], text))
    tok = BPETokenizer.train([text], 256 + 250 + 1, pattern)
    assert tok.merges == _naive_merges(chunks, 250)


def test_gpt4_pattern_splits_like_cl100k():
    pieces = regex.findall(PATTERNS["gpt4"], "I'M 1234567 hello!!\n\n  world")
    assert pieces == ["I", "'M", " ", "123", "456", "7", " hello", "!!\n\n", " ", " world"]


def test_tiktoken_agrees_with_merge_order_on_real_text(tok, py_tok, horror):
    assert tiktoken_compatible(tok)
    assert tok.encode_batch(horror) == py_tok.encode_batch(horror)


def test_merges_that_tiktoken_would_reorder_use_the_python_encoder():
    a, b, c = b"abc"
    tok = BPETokenizer([(a, b), (b, c), (a, 257)])  # "abc" learned as a + bc, though a + b merges first
    assert not tiktoken_compatible(tok)
    assert tok.encode("abc bc") == [256, c, 32, 257]  # merge order, where tiktoken's ranks would give [258, ...]
    duplicate = BPETokenizer([(a, b), (256, c), (b, c), (a, 258)])  # two tokens with the bytes "abc"
    assert not tiktoken_compatible(duplicate)
    assert duplicate.decode(duplicate.encode("abcabc")) == "abcabc"


def test_save_and_load_give_identical_encodings(tok, tmp_path, horror):
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == "bpe" and data["pattern"] == "gpt2" and data["special_tokens"][EOT] == tok.eot_id
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    for (a, b), (left, right, readable) in zip(tok.merges, data["merges"], strict=True):
        assert (left, right) == (a, b)
        assert [bytes(byte_of[c] for c in part) for part in readable.split(" ")] == [tok.vocab[a], tok.vocab[b]]
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer) and isinstance(loaded, Tokenizer) and loaded.name == "bpe"
    assert (loaded.vocab_size, loaded.eot_id, loaded.merges) == (tok.vocab_size, tok.eot_id, tok.merges)
    assert loaded.encode_batch(horror) == tok.encode_batch(horror)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file behind


def test_cli_train_encode_decode(data, tmp_path, capsys):
    gz = tmp_path / "shakespeare.txt.gz"
    gz.write_bytes(gzip.compress((data / "tinyshakespeare" / "input.txt").read_bytes()[:30_000]))
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--input", str(gz), str(data / "creepypasta" / "reddit_horror_stories.jsonl"),
                 "--text-field", "selftext", "--vocab-size", "600", "--pattern", "gpt4", "--no-progress",
                 "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert tok.vocab_size == 600 and tok.pattern == "gpt4"
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--special", f"Hark!{EOT}"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids[-1] == tok.eot_id and tok.decode(ids) == f"Hark!{EOT}"
    assert main(["tokenizer", "decode", "--tokenizer", str(out), *map(str, ids)]) == 0
    assert capsys.readouterr().out == f"Hark!{EOT}\n"
    # an earlier tokenizer file is trained over; a user's file of another kind under that name never is
    assert main(["tokenizer", "train", "--input", str(gz), "--kind", "char", "--out", str(out)]) == 0
    assert load_tokenizer(out).name == "char"
    notes = tmp_path / "notes.json"
    notes.write_text('{"title": "The well behind the house"}\n')
    assert main(["tokenizer", "train", "--input", str(gz), "--out", str(notes)]) == 2
    assert "notes.json exists and is not an earlier output of this command" in capsys.readouterr().err
    assert notes.read_text() == '{"title": "The well behind the house"}\n'


@pytest.mark.parametrize("args, message", [
    (["--input", "missing.txt", "--out", "t.json"], "missing.txt does not exist"),
    (["--input", "{data}/tinyshakespeare/input.txt", "--vocab-size", "256", "--out", "t.json"], "at least 257"),
    (["--input", "{data}/creepypasta/reddit_horror_stories.jsonl", "--out", "t.json"], "--text-field"),
    (["--out", "t.json"], "--input"),
    (["--input", "t.json", "--out", "./t.json"], "is also an input"),
    # refused before the merges are trained, not when the file is written after them
    (["--input", "{data}/tinyshakespeare/input.txt", "--out", "."], "--out . is a directory: give the path of a file"),
    (["--input", "{data}/tinyshakespeare/input.txt", "--special-tokens", "", "--out", "t.json"], "empty string"),
    (["--input", "{data}/tinyshakespeare/input.txt", "--kind", "char", "--vocab-size", "300", "--out", "t.json"],
     "--vocab-size is only read with --kind bpe"),
    (["--input", "{data}/tinyshakespeare/input.txt", "--kind", "char", "--pattern", "gpt4", "--out", "t.json"],
     "--pattern is only read with --kind bpe"),
    (["--input", "{data}/tinyshakespeare/input.txt", "--kind", "char", "--special-tokens", "<x>", "--out", "t.json"],
     "--special-tokens is only read with --kind bpe"),
])
def test_cli_errors_exit_2_with_one_line(data, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["tokenizer", "train", *(a.format(data=data) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("ghoul tokenizer train: error:")
    assert not (tmp_path / "t.json").exists()


def test_cli_decode_rejects_unknown_ids(capsys):
    assert main(["tokenizer", "decode", "50257"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_tokenizer_train_does_not_import_torch(data, tmp_path):
    text = tmp_path / "small.txt"
    text.write_text((data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:5000], encoding="utf-8")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ghoul", "tokenizer", "train", "--input",
                           str(text), "--vocab-size", "300", "--out", str(tmp_path / "t.json")],
                          capture_output=True, text=True, check=True)
    assert "ghoul.tokenizer.bpe" in proc.stderr  # importtime writes one line per imported module to stderr
    assert "torch" not in proc.stderr
