"""Writing files so that a crash never leaves a half-written one: temp-and-rename, and append-and-flush for logs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ghoul.errors import GhoulError


def refuse_input_as_output(out: str | Path, *inputs: str | Path | None, flag: str = "--out") -> None:
    """Writing to a path that is also read from would replace the input with the output: a one-line error."""
    out = Path(out).resolve()
    for path in inputs:
        if path is not None and Path(path).resolve() == out:
            raise GhoulError(f"{flag} {out} is also an input: writing there would destroy it; give another path")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    if path.is_dir():  # checked first: the rename would fail only after the whole text is written
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():  # never swap a user's file for a folder
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside first
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line and flush it to disk, so records that arrive one at a time survive a crash."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl(path: str | Path) -> None:
    """Cut a torn last line (a crash mid-append), so that the next append starts on a line of its own."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def read_json(path: str | Path, default: Any = None) -> Any:
    """A JSON file's value (`default` when the file does not exist), with a one-line error when it is damaged."""
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GhoulError(f"{path} is not valid JSON ({e}): remove it to have it written again") from None


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a crash mid-append) is ignored. With `missing_ok`, a file
    that does not exist (yet) has no records."""
    if missing_ok and not Path(path).is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise GhoulError(f"{path}, line {i + 1}: not valid JSON") from None
    return records
