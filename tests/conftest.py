"""Shared fixtures: the real data folder (GHOUL_DATA_DIR, set by .ci/run) and tiny helpers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import pytest

from ghoul.tokenizer.bpe import BPETokenizer

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder laid out like shared/data: from GHOUL_DATA_DIR, else ../shared/data beside the checkout."""
    env = os.environ.get("GHOUL_DATA_DIR")
    path = (Path(env) if env else REPO.parent / "shared" / "data").resolve()
    if not (path / "README.md").is_file():
        raise RuntimeError(f"test data not found at {path}: set GHOUL_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def data() -> Path:
    return data_dir()


@pytest.fixture(scope="session")
def stories(data) -> list[str]:
    """400 Reddit horror stories: the first 300 train the tokenizers of the export tests, the other 100 are held out."""
    with open(data / "creepypasta" / "reddit_horror_stories.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["selftext"] for line in islice(f, 400)]


@pytest.fixture(scope="session")
def bpe(stories) -> dict[str, BPETokenizer]:
    # 500 tokens: the models' tables pad to 512 rows, which the exports must crop
    return {pattern: BPETokenizer.train(stories[:300], 500, pattern=pattern) for pattern in ("gpt2", "gpt4")}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int, int], Path]]:
    """A real full disk: `small_disk(size, free)` mounts a tmpfs of `size` bytes and fills all but `free` of them with
    a file `filler` (delete it to make room). Skipped with the reason where mounting is not allowed; the
    fault-injecting tests cover those machines."""
    mounts: list[Path] = []

    def mount(size: int, free: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs for a real full disk needs root")
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounts.append(path)
        (path / "filler").write_bytes(b"\0" * (size - free))
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", str(path)], check=False)


def fail_writes_after(n: int) -> Callable[[int, bytes], int]:
    """An os.write that behaves like a disk filling up: `n` writes succeed, then half a write lands and the rest
    fails with ENOSPC (monkeypatch it over os.write)."""
    real, calls = os.write, [0]

    def write(fd: int, data: bytes) -> int:
        calls[0] += 1
        if calls[0] <= n:
            return real(fd, data)
        real(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    return write
