"""The shard format: llm.c compatibility, round trips, and a clear error for every kind of broken file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ghoul.data.shards import (
    HEADER_BYTES,
    MAGIC,
    find_shards,
    read_header,
    read_meta,
    read_shard,
    shard_dtype,
    write_shard,
)
from ghoul.errors import GhoulError
from ghoul.files import write_json


def llmc_write(path: Path, tokens: list[int], version: int = 1) -> None:
    """A minimal writer as in llm.c's dev/data/data_common.py: 256 int32 header, then the raw tokens."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, version, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array(tokens, dtype=np.uint16 if version == 1 else np.uint32).tobytes())


def test_llmc_shard_reads_back_identically(tmp_path: Path) -> None:
    tokens = np.random.default_rng(0).integers(0, 50257, size=10_001).tolist()
    llmc_write(tmp_path / "fineweb_train_000001.bin", tokens)
    header = read_header(tmp_path / "fineweb_train_000001.bin")
    assert (header.version, header.count, header.dtype) == (1, 10_001, np.uint16)
    assert read_shard(tmp_path / "fineweb_train_000001.bin").tolist() == tokens
    big = [0, 65_535, 65_536, 100_000, 2**32 - 1]
    llmc_write(tmp_path / "v2.bin", big, version=2)
    assert read_shard(tmp_path / "v2.bin").tolist() == big


def test_write_shard_is_llmc_format(tmp_path: Path) -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    write_shard(tmp_path / "a.bin", tokens)
    raw = (tmp_path / "a.bin").read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * 1000
    assert np.frombuffer(raw[:12], dtype=np.int32).tolist() == [MAGIC, 1, 1000]
    assert raw[HEADER_BYTES:] == tokens.tobytes()
    assert not list(tmp_path.glob("*.tmp"))  # written to a temporary name, then renamed
    write_shard(tmp_path / "b.bin", np.array([70_000, 5], dtype=np.int64), dtype=np.uint32)
    assert read_header(tmp_path / "b.bin").version == 2
    assert read_shard(tmp_path / "b.bin").tolist() == [70_000, 5]
    write_shard(tmp_path / "empty.bin", np.array([], dtype=np.uint16))
    assert len(read_shard(tmp_path / "empty.bin")) == 0


def test_dtype_follows_the_vocabulary(tmp_path: Path) -> None:
    assert shard_dtype(50_257) == np.uint16
    assert shard_dtype(65_536) == np.uint16  # ids 0..65535 still fit
    assert shard_dtype(65_537) == np.uint32
    with pytest.raises(GhoulError, match="does not fit"):
        shard_dtype(2**32 + 1)
    with pytest.raises(GhoulError, match=r"big.bin: token id 70000 does not fit uint16"):
        write_shard(tmp_path / "big.bin", np.array([1, 70_000], dtype=np.uint32), dtype=np.uint16)
    assert not (tmp_path / "big.bin").exists()


def test_broken_shards_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train_000000.bin"
    llmc_write(path, list(range(100)))
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])  # the header counts more tokens than the file holds
    with pytest.raises(GhoulError, match=r"train_000000.bin: truncated shard: the header counts 100 tokens"):
        read_shard(path)
    path.write_bytes(raw[:500])
    with pytest.raises(GhoulError, match=r"train_000000.bin: truncated shard: 500 bytes"):
        read_header(path)
    path.write_bytes(np.int32(12345).tobytes() + raw[4:])
    with pytest.raises(GhoulError, match=r"train_000000.bin: not a token shard \(magic number 12345"):
        read_shard(path)
    path.write_bytes(raw[:4] + np.int32(7).tobytes() + raw[8:])
    with pytest.raises(GhoulError, match="unknown shard version 7"):
        read_shard(path)
    path.write_bytes(raw + b"\0\0")
    with pytest.raises(GhoulError, match="2 bytes follow the 100 tokens"):
        read_shard(path)
    with pytest.raises(GhoulError, match="nothing.bin does not exist"):
        read_shard(tmp_path / "nothing.bin")


def test_find_shards_llmc_names_and_meta(tmp_path: Path) -> None:
    for name in ("fineweb_val_000000.bin", "fineweb_train_000002.bin", "fineweb_train_000001.bin"):
        llmc_write(tmp_path / name, [1, 2, 3])
    assert [p.name for p in find_shards(tmp_path, "train")] == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert [p.name for p in find_shards(tmp_path, "val")] == ["fineweb_val_000000.bin"]
    assert len(find_shards(str(tmp_path / "*train*.bin"))) == 2
    with pytest.raises(GhoulError, match="unknown split 'test'"):
        find_shards(tmp_path, "test")
    only_train = tmp_path / "t"
    only_train.mkdir()
    llmc_write(only_train / "train_000000.bin", [1])
    with pytest.raises(GhoulError, match="holds no val shards: prepare with --val-tokens"):
        find_shards(only_train, "val")
    with pytest.raises(GhoulError, match="does not exist"):
        find_shards(tmp_path / "absent")


def test_meta_json_is_written_atomically(tmp_path: Path) -> None:
    assert read_meta(tmp_path) is None
    write_json(tmp_path / "meta.json", {"vocab_size": 50257})
    assert read_meta(tmp_path) == {"vocab_size": 50257}
    assert json.loads((tmp_path / "meta.json").read_text()) == {"vocab_size": 50257}
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(GhoulError, match="meta.json is not valid JSON"):
        read_meta(tmp_path)


def test_workers_modules_do_not_import_torch() -> None:
    code = ("import sys, ghoul.data.prepare, ghoul.data.sources, ghoul.data.shards; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("edit, message", [
    ({"shards": "x"}, '"shards" is "x", not an object of token counts per split'),
    ({"shards": {"train": ["many"]}}, '"shards" is {"train": \\["many"\\]}'),
    ({"vocab_size": "lots"}, '"vocab_size" is "lots", not a positive token count'),
    ({"vocab_size": True}, '"vocab_size" is true'),
    ({"eot_id": -1}, '"eot_id" is -1, not a token id'),
    ({"tokenizer": 3}, '"tokenizer" is 3, not a tokenizer name'),
])
def test_a_damaged_meta_json_is_an_error_naming_the_field(tmp_path: Path, edit: dict, message: str) -> None:
    write_json(tmp_path / "meta.json", {"vocab_size": 50257, "eot_id": 50256, "shards": {"train": [10]}, **edit})
    with pytest.raises(GhoulError, match=f"meta.json: {message}.*prepare the data again"):
        read_meta(tmp_path)
