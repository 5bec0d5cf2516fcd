"""`ghoul tokenizer train/encode/decode`: learn our own BPE or char tokenizer from text files, and inspect ids.

Torch-free on purpose: training a tokenizer starts in a fraction of a second.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ghoul.config import option, refuse_set
from ghoul.data.sources import jsonl_records
from ghoul.errors import GhoulError
from ghoul.files import refuse_input_as_output, refuse_to_replace, require_file
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.tokenizer.bpe import BPETokenizer
from ghoul.tokenizer.char import CharTokenizer
from ghoul.tokenizer.gpt2 import EOT


@dataclass
class TrainConfig:
    input: list[Path] = option(help="training text: .txt, .txt.gz, or .jsonl (one JSON object per line)",
                               metavar="FILE")
    out: Path = option(help="tokenizer JSON file to write", metavar="TOKENIZER.json")
    vocab_size: int = option(4096, "tokens in all: 256 bytes + merges + special tokens (bpe only)")
    pattern: str = option("gpt2", "pre-split regex: GPT-2's, or GPT-4's (cl100k_base) (bpe only)",
                          choices=["gpt2", "gpt4"])
    kind: str = option("bpe", "byte-level BPE, or one token per character", choices=["bpe", "char"])
    text_field: str = option("text", "field of each .jsonl record that holds the text")
    special_tokens: list[str] = option([], f"special tokens besides {EOT} (bpe only)", metavar="TOKEN")
    progress: bool = option(True, "show a progress bar over the merges")

    def __post_init__(self) -> None:
        self.input = [Path(p) for p in self.input]
        self.out = Path(self.out)
        refuse_input_as_output(self.out, *self.input)
        refuse_to_replace(self.out, ("type", "vocab_size"))  # an earlier tokenizer file is replaced, nothing else
        if "" in self.special_tokens:
            raise GhoulError("--special-tokens holds an empty string: give each special token as text")
        if self.kind == "char":  # its vocabulary is the text's characters, and it splits nothing
            refuse_set(self, ("vocab_size", "pattern", "special_tokens"), "--kind bpe")
        n_special = len({EOT, *self.special_tokens})
        if self.kind == "bpe" and self.vocab_size < 256 + n_special:
            raise GhoulError(f"--vocab-size {self.vocab_size} is smaller than 256 byte tokens + {n_special} special "
                             f"token(s): use at least {256 + n_special}")


@dataclass
class EncodeConfig:
    text: str = option(help="the text to encode", positional=True)
    tokenizer: str = option("gpt2", "'gpt2', or a tokenizer JSON file (from `ghoul tokenizer train`)")
    special: bool = option(False, "encode special-token strings such as <|endoftext|> as their one id")


@dataclass
class DecodeConfig:
    ids: list[int] = option(help="token ids", positional=True, metavar="ID")
    tokenizer: str = option("gpt2", "'gpt2', or a tokenizer JSON file (from `ghoul tokenizer train`)")


def read_texts(paths: list[Path], text_field: str = "text") -> list[str]:
    """The documents in `paths`: a whole .txt/.txt.gz file is one, each .jsonl record's `text_field` is one."""
    texts: list[str] = []
    for path in paths:
        require_file(path, "input file", "give text files (.txt, .txt.gz) or JSON lines (.jsonl)")
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                if ".jsonl" in path.suffixes:
                    texts.extend(_jsonl_texts(f, path, text_field))
                else:
                    texts.append(f.read())
        except (UnicodeDecodeError, OSError, EOFError) as e:
            raise GhoulError(f"cannot read {path} as UTF-8 text: {e}") from None
    return texts


def _jsonl_texts(lines: Iterable[str], path: Path, text_field: str) -> Iterator[str]:
    for n, record in jsonl_records(lines, path):
        if not isinstance(record.get(text_field), str):
            raise GhoulError(f"{path}:{n}: no string field '{text_field}' (pick the field with --text-field)")
        yield record[text_field]


def train(cfg: TrainConfig) -> Tokenizer:
    """Learn a tokenizer from the input files and write it to `cfg.out`."""
    texts = read_texts(cfg.input, cfg.text_field)
    if cfg.kind == "char":
        tok: Tokenizer = CharTokenizer.train(texts)
    else:
        n_merges = cfg.vocab_size - 256 - len({EOT, *cfg.special_tokens})
        with tqdm(total=n_merges, desc="merges", unit="merge", mininterval=0.25, disable=not cfg.progress) as bar:
            tok = BPETokenizer.train(texts, cfg.vocab_size, cfg.pattern, [EOT, *cfg.special_tokens],
                                     progress=lambda n: bar.update(n) if n else bar.reset())
    tok.save(cfg.out)
    print(f"wrote {cfg.out}: {cfg.kind} tokenizer, {tok.vocab_size} tokens, <|endoftext|> = {tok.eot_id}")
    return tok


def encode(cfg: EncodeConfig) -> list[int]:
    """Print the token ids of `cfg.text`."""
    tok = load_tokenizer(cfg.tokenizer)
    if not cfg.special:
        ids = tok.encode(cfg.text)
    elif tok.name == "gpt2":  # GPT2Tokenizer.encode is ordinary-only; its tiktoken Encoding knows the special
        ids = tok.encoding.encode(cfg.text, allowed_special="all")
    else:
        ids = tok.encode(cfg.text, allowed_special="all")
    print(" ".join(map(str, ids)))
    return ids


def decode(cfg: DecodeConfig) -> str:
    """Print the text of `cfg.ids`."""
    tok = load_tokenizer(cfg.tokenizer)
    bad = [i for i in cfg.ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise GhoulError(f"token id {bad[0]} is out of range: this tokenizer has {tok.vocab_size} tokens")
    text = tok.decode(cfg.ids)
    print(text)
    return text
