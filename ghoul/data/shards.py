"""The token-shard format of llm.c and modded-nanogpt, and the `meta.json` that describes a directory of shards.

A shard is a 256 x int32 header (magic 20240520, version, token count, then zeros) followed by the tokens:
uint16 for version 1 (llm.c's format, so their pre-tokenised FineWeb shards load as they are), uint32 for version 2.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ghoul.errors import GhoulError
from ghoul.tokenizer import Tokenizer, load_tokenizer, same_tokenizer

MAGIC = 20240520  # llm.c's dev/data/data_common.py
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VERSION_DTYPES = {1: np.dtype(np.uint16), 2: np.dtype(np.uint32)}
META_FILE = "meta.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardHeader:
    version: int
    count: int  # tokens in the shard

    @property
    def dtype(self) -> np.dtype:
        return VERSION_DTYPES[self.version]


def shard_dtype(vocab_size: int) -> np.dtype:
    """The narrowest shard dtype holding ids 0..vocab_size-1: uint16 up to 65,536 tokens, else uint32."""
    for dtype in VERSION_DTYPES.values():
        if vocab_size <= np.iinfo(dtype).max + 1:
            return dtype
    raise GhoulError(f"a vocabulary of {vocab_size:,} tokens does not fit the uint32 shard format")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def write_shard(path: str | Path, tokens: np.ndarray, dtype: np.dtype | type | None = None) -> None:
    """Write `tokens` as one shard (to a temporary name, then renamed); `dtype` defaults to the array's own."""
    path = Path(path)
    dtype = np.dtype(dtype if dtype is not None else tokens.dtype)
    versions = {d: v for v, d in VERSION_DTYPES.items()}
    if dtype not in versions:
        raise GhoulError(f"{path}: shards hold uint16 or uint32 tokens, not {dtype}")
    if len(tokens) >= 2**31:
        raise GhoulError(f"{path}: {len(tokens):,} tokens is more than the int32 header can count; use smaller shards")
    if tokens.dtype != dtype and len(tokens):
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high > np.iinfo(dtype).max:
            raise GhoulError(f"{path}: token id {high if high > 0 else low} does not fit {dtype} shards: "
                             "the tokenizer's vocabulary is too large for this shard dtype")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = MAGIC, versions[dtype], len(tokens)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(np.ascontiguousarray(tokens, dtype=dtype).tobytes())
            f.flush()
            os.fsync(f.fileno())  # the rename below must not land before the data
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: no half-written shard left beside the complete ones
        tmp.unlink(missing_ok=True)
        raise


def read_header(path: str | Path) -> ShardHeader:
    """Check a shard's header against the file and return it; any mismatch is a GhoulError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GhoulError(f"shard {path} does not exist")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise GhoulError(f"{path}: truncated shard: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype=np.int32)
    magic, version, count = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise GhoulError(f"{path}: not a token shard (magic number {magic}, expected {MAGIC})")
    if version not in VERSION_DTYPES:
        raise GhoulError(f"{path}: unknown shard version {version} (known: 1 = uint16, 2 = uint32)")
    expected = HEADER_BYTES + count * VERSION_DTYPES[version].itemsize
    if size < expected:
        raise GhoulError(f"{path}: truncated shard: the header counts {count:,} tokens ({expected:,} bytes) "
                         f"but the file has {size:,} bytes")
    if size > expected:
        raise GhoulError(f"{path}: corrupt shard: {size - expected:,} bytes follow the {count:,} tokens "
                         "its header counts")
    return ShardHeader(version, count)


def read_shard(path: str | Path) -> np.ndarray:
    """The tokens of a shard as a read-only memory map (nothing is read until it is indexed)."""
    header = read_header(path)
    if header.count == 0:
        return np.empty(0, dtype=header.dtype)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.count,))


def read_meta(directory: str | Path) -> dict[str, Any] | None:
    """The `meta.json` of a shard directory, or None where there is none (llm.c's directories have none)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GhoulError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise GhoulError(f"{path}: expected a JSON object")
    for key, ok, what in META_FIELDS:
        if key in meta and not ok(meta[key]):
            raise GhoulError(f"{path}: \"{key}\" is {json.dumps(meta[key])[:40]}, not {what}: the file was edited or "
                             "damaged; prepare the data again")
    return meta


def is_count(value: Any) -> bool:
    """Whether `value` is a non-negative int (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# the fields of meta.json that readers use, checked when it is read: (key, check, what it must be)
META_FIELDS = (
    ("vocab_size", lambda v: is_count(v) and v > 0, "a positive token count"),
    ("eot_id", is_count, "a token id"),
    ("tokenizer", lambda v: isinstance(v, str), "a tokenizer name or path"),
    ("shards", lambda v: isinstance(v, dict) and all(isinstance(c, list) and all(map(is_count, c)) for c in v.values()),
     "an object of token counts per split, e.g. {\"train\": [100000], \"val\": [20000]}"),
)


def find_shards(spec: str | Path, split: str = "train") -> list[Path]:
    """The shards of `split` in a directory (as listed in its meta.json, else `*{split}_*.bin` as llm.c names
    them, e.g. fineweb_train_000001.bin), or the files matching a glob, in order."""
    text = str(spec)
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text))
        if not files:
            raise GhoulError(f"no shards match {text}")
        return files
    directory = shard_directory(text)
    if split not in SPLITS:
        raise GhoulError(f"unknown split '{split}'; splits: {', '.join(SPLITS)}")
    meta = read_meta(directory)
    if meta is not None and "shards" in meta:
        files = [directory / shard_name(split, i) for i in range(len(meta["shards"].get(split, [])))]
    else:
        files = sorted(directory.glob(f"*{split}_*.bin"))
    if not files:
        raise GhoulError(f"{directory} holds no {split} shards" +
                         (": prepare with --val-tokens N to make a validation split" if split == "val" else ""))
    return files


def shard_directory(text: str | Path) -> Path:
    """`text` as a shard directory that exists (a one-line error for a missing one, or a file)."""
    directory = Path(text)
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise GhoulError(f"shard directory {directory} {what}: make one with `ghoul prepare`")
    return directory


def dataset_tokenizer(dataset: str | Path) -> Tokenizer:
    """The tokenizer a shard directory was made with (GPT-2's for shards without meta.json, as llm.c's, and for a
    glob of shard files)."""
    path = Path(dataset)
    meta = None if glob.has_magic(str(dataset)) else read_meta(shard_directory(path))
    if meta is None and path.is_dir() and not any(path.glob("*.bin")):  # e.g. a model directory
        raise GhoulError(f"{path} holds no token shards (no meta.json, no .bin files): make them with `ghoul prepare`")
    spec = (meta or {}).get("tokenizer", "gpt2")
    if spec != "gpt2" and (path / spec).exists():  # relative to the directory; an absolute path stays as it is
        spec = str(path / spec)
    return load_tokenizer(spec)


def check_data_tokenizer(dataset: str | Path, tokenizer: Tokenizer, model: str | Path) -> None:
    """Shards made with another tokenizer than the model's are an error: their ids name other tokens, so a loss
    on them (or training on them) looks plausible and means nothing. Training and evaluation both call this."""
    made_with = dataset_tokenizer(dataset)
    if same_tokenizer(made_with, tokenizer):
        return
    alike = (made_with.name, made_with.vocab_size) == (tokenizer.name, tokenizer.vocab_size)
    raise GhoulError(f"{dataset} was tokenized with {made_with.name} ({made_with.vocab_size:,} tokens) but {model} "
                     f"uses {tokenizer.name} ({tokenizer.vocab_size:,})" + (", another of that size" if alike else "")
                     + ": prepare the data with the model's tokenizer (--tokenizer)")
