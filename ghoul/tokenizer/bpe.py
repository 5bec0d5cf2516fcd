"""Our own byte-level BPE tokenizer: fast incremental training on any text, GPT-2 or GPT-4 style pre-splitting,
special tokens, and one human-readable JSON file; encoding runs on tiktoken built from the learned merges.

No torch here: `ghoul tokenizer train` needs only this module, `regex` and tiktoken.
"""

from __future__ import annotations

import collections
import gc
import heapq
import json
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import regex
import tiktoken

from ghoul.errors import GhoulError
from ghoul.files import atomic_write_text
from ghoul.tokenizer.gpt2 import EOT, GPT2_PATTERN, _bytes_to_unicode

# GPT-4's pre-split pattern, exactly as tiktoken's cl100k_base (tiktoken_ext/openai_public.py): case-insensitive
# contractions, letters with one leading non-letter, numbers in groups of at most 3 digits.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
FORMAT_VERSION = 1
_SHIFT = 32  # a pair (left, right) of token ids is one int, left << 32 | right: cheaper to hash than a tuple
_LOW = (1 << _SHIFT) - 1
_BYTE_CHARS = _bytes_to_unicode()  # byte -> printable character, for the readable merges in the JSON file


def clean_text(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD, as tiktoken does (a valid high+low pair is joined)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def count_chunks(texts: Iterable[str], pat_str: str, special_tokens: Collection[str] = (EOT,)) -> dict[str, int]:
    """How often each pre-split chunk occurs; special-token strings in the text only separate chunks."""
    pattern = regex.compile(pat_str)
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        text = clean_text(text)
        pieces = [text]
        for special in special_tokens:
            if special in text:
                pieces = [part for piece in pieces for part in piece.split(special)]
        for piece in pieces:
            counts.update(pattern.findall(piece))
    return counts


def train_merges(chunk_counts: dict[str, int], n_merges: int,
                 progress: Callable[[int], object] | None = None) -> list[tuple[int, int]]:
    """Learn up to `n_merges` byte-pair merges; merge i makes token 256 + i.

    Each step merges the most frequent adjacent pair (counted over all chunks, overlapping pairs included, as
    a naive recount would); ties go to the smallest (left id, right id). Pair counts are kept up to date
    incrementally: only the chunks that hold the merged pair are visited, and the best pair comes from a lazy
    max-heap whose stale entries are skipped when popped. Returns fewer merges when no pair is left.
    `progress(n)` is called with 0 when merging starts, then with 1 after each merge.
    """
    words, freqs = [], []
    for chunk, freq in chunk_counts.items():
        ids = list(chunk.encode("utf-8"))
        if len(ids) > 1:  # a single byte has no pair: it can never take part in a merge
            words.append(ids)
            freqs.append(freq)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many new lists and no cycles: the cyclic collector only costs time here (~10%)
    try:
        return _merge_loop(words, freqs, n_merges, progress or (lambda n: None))
    finally:
        if gc_was_enabled:
            gc.enable()


def _merge_loop(words: list[list[int]], freqs: list[int], n_merges: int,
                progress: Callable[[int], object]) -> list[tuple[int, int]]:
    counts, where = _count_pairs(words, freqs)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    progress(0)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        pair = _pop_best(heap, counts)
        if pair is None:
            break
        new_pairs = _apply_merge(pair, 256 + len(merges), words, freqs, counts, where)
        merges.append((pair >> _SHIFT, pair & _LOW))
        for new_pair in new_pairs:
            # Only pairs that hold the new token can have grown; all others only shrink, and the heap keeps an
            # upper bound for them that _pop_best corrects when it surfaces.
            if counts[new_pair] > 0:
                heapq.heappush(heap, (-counts[new_pair], new_pair))
        progress(1)
    return merges


def _count_pairs(words: list[list[int]], freqs: list[int]) -> tuple[dict[int, int], dict[int, list[int]]]:
    """Weighted count of each adjacent pair, and the indices of the words that hold it (each index once)."""
    counts: dict[int, int] = collections.defaultdict(int)
    where: dict[int, list[int]] = collections.defaultdict(list)
    for wi, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for left, right in zip(word, word[1:], strict=False):
            pair = left << _SHIFT | right
            counts[pair] += freq
            holders = where[pair]
            if not holders or holders[-1] != wi:
                holders.append(wi)
    return counts, where


def _pop_best(heap: list[tuple[int, int]], counts: dict[int, int]) -> int | None:
    """The most frequent pair (smallest pair on ties); entries whose count went down are pushed back corrected."""
    while heap:
        neg_count, pair = heapq.heappop(heap)
        count = counts[pair]
        if count == -neg_count:
            return pair
        if count > 0:
            heapq.heappush(heap, (-count, pair))
    return None


def _apply_merge(pair: int, new: int, words: list[list[int]], freqs: list[int], counts: dict[int, int],
                 where: dict[int, list[int]]) -> set[int]:
    """Replace `pair` by token `new` in every word that holds it, left to right; return the pairs created."""
    a, b = pair >> _SHIFT, pair & _LOW
    new_high = new << _SHIFT
    created: set[int] = set()
    for wi in where.pop(pair):  # stale indices (the pair vanished from that word) find nothing and cost little
        word, freq = words[wi], freqs[wi]
        n, i, out = len(word), 0, []
        while i < n:
            if word[i] == a and i + 1 < n and word[i + 1] == b:
                counts[pair] -= freq
                if out:  # left neighbour x: (x, a) becomes (x, new)
                    x = out[-1]
                    counts[x << _SHIFT | a] -= freq
                    _add(x << _SHIFT | new, freq, wi, counts, where, created)
                if i + 2 < n:  # right neighbour y: (b, y) becomes (new, y)
                    y = word[i + 2]
                    counts[b << _SHIFT | y] -= freq
                    _add(new_high | y, freq, wi, counts, where, created)
                out.append(new)
                i += 2
            else:
                out.append(word[i])
                i += 1
        words[wi] = out  # a copy equal to the word where the pair had vanished
    return created


def _add(pair: int, freq: int, wi: int, counts: dict[int, int], where: dict[int, list[int]], created: set[int]) -> None:
    counts[pair] += freq
    created.add(pair)
    holders = where[pair]
    if not holders or holders[-1] != wi:
        holders.append(wi)


class BPETokenizer:
    """A byte-level BPE tokenizer implementing `ghoul.tokenizer.Tokenizer`.

    Ids: 0-255 are the raw bytes, 256 + i is merge i, then the special tokens (`<|endoftext|>` first).
    Encoding applies the merges in training order. It runs on tiktoken (ranks = ids) when `tiktoken_compatible`
    says its rank-based merging matches that, otherwise on a cached pure-Python merge loop.
    Lone surrogates in the input become U+FFFD (as in tiktoken); invalid UTF-8 decodes to U+FFFD.
    """

    name = "bpe"

    def __init__(self, merges: list[tuple[int, int]], pat_str: str = GPT2_PATTERN,
                 special_tokens: Iterable[str] = (EOT,), pattern: str = "custom") -> None:
        specials = list(dict.fromkeys([EOT, *special_tokens]))  # <|endoftext|> first, each token once
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pat_str, self.pattern = pat_str, pattern
        self.vocab = [bytes([i]) for i in range(256)]
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise GhoulError(f"BPE merge {i} ({a}, {b}) names a token that does not exist yet")
            self.vocab.append(self.vocab[a] + self.vocab[b])
        first_special = len(self.vocab)
        self.special_tokens = {s: first_special + j for j, s in enumerate(specials)}
        self.eot_id = self.special_tokens[EOT]
        self.vocab_size = first_special + len(specials)
        self._id_bytes = self.vocab + [s.encode("utf-8") for s in specials]  # id -> bytes, for decode
        self._encoder: _TiktokenEncoder | _PythonEncoder | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, pattern: str = "gpt2",
              special_tokens: Iterable[str] = (EOT,), progress: Callable[[int], object] | None = None,
              ) -> BPETokenizer:
        """Learn a tokenizer of exactly `vocab_size` tokens (256 bytes + merges + special tokens) from `texts`."""
        specials = list(dict.fromkeys([EOT, *special_tokens]))
        if pattern not in PATTERNS:
            raise GhoulError(f"unknown pre-split pattern '{pattern}': use one of {', '.join(PATTERNS)}")
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise GhoulError(f"vocab size {vocab_size} is smaller than 256 byte tokens + {len(specials)} special "
                             f"token(s): use a vocab size of at least {256 + len(specials)}")
        merges = train_merges(count_chunks(texts, PATTERNS[pattern], specials), n_merges, progress)
        if len(merges) < n_merges:
            raise GhoulError(f"the training text runs out of pairs to merge after {len(merges)} merges, so vocab "
                             f"size {vocab_size} is out of reach: give more text or a vocab size of at most "
                             f"{256 + len(merges) + len(specials)}")
        return cls(merges, PATTERNS[pattern], specials, pattern)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None}  # workers rebuild the encoder rather than unpickle it

    @property
    def encoder(self) -> _TiktokenEncoder | _PythonEncoder:
        if self._encoder is None:
            self._encoder = _TiktokenEncoder(self) if tiktoken_compatible(self) else _PythonEncoder(self)
        return self._encoder

    @property
    def encoding(self) -> tiktoken.Encoding | None:
        """The tiktoken Encoding behind `encode` (data preparation uses its numpy output), or None."""
        return self.encoder.encoding if isinstance(self.encoder, _TiktokenEncoder) else None

    def encode(self, text: str, allowed_special: Collection[str] | Literal["all"] = ()) -> list[int]:
        """Token ids of `text`. Special-token strings are ordinary text unless named in `allowed_special`
        (or "all"): those become their one special id and are never split."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise GhoulError(f"not special tokens of this tokenizer: {', '.join(sorted(unknown))}")
        return self.encoder.encode(text, allowed)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoder.encode_batch(texts)

    def decode(self, ids: list[int]) -> str:
        ids = [int(t) for t in ids]  # also accepts numpy integers
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            bad = next(t for t in ids if not 0 <= t < self.vocab_size)
            raise GhoulError(f"token id {bad} is out of range for this BPE tokenizer (vocab size {self.vocab_size})")
        return b"".join([self._id_bytes[t] for t in ids]).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.vocab] + [0] * len(self.special_tokens), dtype=np.int64)

    def to_dict(self) -> dict:
        return {"type": "bpe", "version": FORMAT_VERSION, "pattern": self.pattern, "pat_str": self.pat_str,
                "vocab_size": self.vocab_size, "special_tokens": self.special_tokens,
                "merges": [[a, b, f"{_readable(self.vocab[a])} {_readable(self.vocab[b])}"] for a, b in self.merges]}

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        """The tokenizer saved by `to_dict`/`save`; each merge is [left id, right id, "left right"] where the
        text shows the two tokens' bytes in GPT-2's printable byte alphabet (a space is Ġ, a newline Ċ)."""
        if data.get("version", FORMAT_VERSION) > FORMAT_VERSION:
            raise GhoulError(f"BPE tokenizer file version {data['version']} is newer than this ghoul reads "
                             f"({FORMAT_VERSION}): update ghoul")
        try:
            specials = sorted(data["special_tokens"], key=data["special_tokens"].get)
            tok = cls([(a, b) for a, b, _ in data["merges"]], data["pat_str"], specials, data.get("pattern", "custom"))
        except (KeyError, TypeError, ValueError) as e:
            raise GhoulError(f"not a valid BPE tokenizer file ({type(e).__name__}: {e})") from None
        if tok.special_tokens != data["special_tokens"] or tok.vocab_size != data.get("vocab_size", tok.vocab_size):
            raise GhoulError("BPE tokenizer file: special token ids or vocab size do not match its merges")
        for i, (saved, ours) in enumerate(zip(data["merges"], tok.to_dict()["merges"], strict=True)):
            if saved[2] != ours[2]:  # the readable text and the ids were edited apart
                raise GhoulError(f"BPE tokenizer file: merge {i} reads {saved[2]!r} but its ids make {ours[2]!r}")
        return tok

    def gpt2_vocab_and_merges(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """The vocabulary (special tokens included) and the merges in training order, in the form of GPT-2's
        vocab.json and merges.txt: each token's bytes as printable characters (a space is Ġ). Two tokens with
        the same bytes make the vocabulary shorter than `vocab_size`."""
        vocab = {_readable(token): i for i, token in enumerate(self.vocab)} | self.special_tokens
        return vocab, [(_readable(self.vocab[a]), _readable(self.vocab[b])) for a, b in self.merges]

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one JSON file, one merge per line, atomically."""
        data = self.to_dict()
        merges = data.pop("merges")
        head = json.dumps(data, ensure_ascii=False, indent=2)[:-2]  # drop the closing "\n}" to append merges
        lines = ",\n".join("    " + json.dumps(m, ensure_ascii=False) for m in merges)
        atomic_write_text(path, f'{head},\n  "merges": [\n{lines}\n  ]\n}}\n')


def _readable(token: bytes) -> str:
    return "".join(_BYTE_CHARS[b] for b in token)


def tiktoken_compatible(tok: BPETokenizer) -> bool:
    """Whether to encode with tiktoken (ranks = ids): every token's bytes must be unique, and rank-based BPE on a
    token's bytes with only lower ranks must end in exactly that token's merge pair (the check minbpe relies on to
    recover GPT-4's merges from tiktoken's ranks). tests/tokenizer/test_bpe.py checks that tiktoken and the merges
    applied in order then give the same ids on real text."""
    ranks = {token: i for i, token in enumerate(tok.vocab)}
    if len(ranks) != len(tok.vocab):
        return False
    return all(_rank_bpe(tok.vocab[256 + i], ranks, 256 + i) == [tok.vocab[a], tok.vocab[b]]
               for i, (a, b) in enumerate(tok.merges))


def _rank_bpe(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


class _TiktokenEncoder:
    """Encoding in Rust: a tiktoken.Encoding whose ranks are the token ids (merge order)."""

    def __init__(self, tok: BPETokenizer) -> None:
        ranks = {token: i for i, token in enumerate(tok.vocab)}
        self.encoding = tiktoken.Encoding(name=f"ghoul-bpe-{tok.vocab_size}", pat_str=tok.pat_str,
                                          mergeable_ranks=ranks, special_tokens=tok.special_tokens)

    def encode(self, text: str, allowed: set[str]) -> list[int]:
        if not allowed:
            return self.encoding.encode_ordinary(text)
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)


class _PythonEncoder:
    """Encoding in Python: the merges applied in order to each chunk, with a cache of chunks seen before."""

    def __init__(self, tok: BPETokenizer, cache_size: int = 100_000) -> None:
        self.ranks = {pair: 256 + i for i, pair in enumerate(tok.merges)}  # the merged token is the rank too
        self.pattern = regex.compile(tok.pat_str)
        self.special_tokens = tok.special_tokens
        self.cache: dict[str, list[int]] = {}
        self.cache_size = cache_size

    def encode(self, text: str, allowed: set[str]) -> list[int]:
        text = clean_text(text)
        if not allowed:
            return self._encode_ordinary(text)
        splitter = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        ids: list[int] = []
        for i, piece in enumerate(splitter.split(text)):  # odd pieces are the special tokens themselves
            ids.extend([self.special_tokens[piece]] if i % 2 else self._encode_ordinary(piece))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text, set()) for text in texts]

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in self.pattern.findall(text):
            cached = self.cache.get(chunk)
            if cached is None:
                cached = self._bpe(list(chunk.encode("utf-8")))
                if len(self.cache) >= self.cache_size:
                    self.cache.clear()
                self.cache[chunk] = cached
            ids.extend(cached)
        return ids

    def _bpe(self, ids: list[int]) -> list[int]:
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:], strict=False), key=lambda p: self.ranks.get(p, 1 << 62))
            new = self.ranks.get(pair)
            if new is None:
                break
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids
