"""Writing files so that a crash never leaves a half-written one: temp-and-rename, and append-and-flush for logs."""

from __future__ import annotations

import codecs
import contextlib
import errno
import glob
import json
import os
import secrets
import shutil
import socket
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ghoul.errors import GhoulError

try:
    import fcntl
except ImportError:  # Windows: no flock; a directory there is not guarded against a second writer
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")
_held: set[tuple[int, int]] = set()  # (device, inode) of the directories this process holds as their sole writer


def refuse_input_as_output(out: str | Path, *inputs: str | Path | None, flag: str = "--out") -> None:
    """Writing to a path that is also read from would replace the input with the output, and writing into an input
    folder (a model directory) would change or damage it: a one-line error."""
    out = Path(out).resolve()
    for path in inputs:
        if path is None:
            continue
        path = Path(path).resolve()
        if path == out:
            raise GhoulError(f"{flag} {out} is also an input: writing there would destroy it; give another path")
        if path.is_dir() and path in out.parents:
            raise GhoulError(f"{flag} {out} is inside {path}, an input: writing there would change it; give a path "
                             "outside it")


def require_file(path: str | Path, what: str, todo: str) -> Path:
    """`path` as a file to read, or a one-line error naming it `what` and saying what to do: a missing file, or a
    folder given for a file, named for what it is."""
    path = Path(path)
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise GhoulError(f"{what} {path} {state}: {todo}")
    return path


def text_lines(path: str | Path, what: str, todo: str) -> Iterator[str]:
    """The lines of a text file the user named as `what`, read as they are taken (a caller that needs the first few
    reads no more), or a one-line error naming it and saying what to do: missing, a folder, or not UTF-8 text (a
    binary file given by mistake)."""
    path = require_file(path, what, todo)
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise GhoulError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}): {todo}") from None


def refuse_to_replace(out: str | Path, keys: Iterable[str], flag: str = "--out") -> None:
    """An existing `out` is replaced only when it is an earlier output of the same command (its first record, or its
    one JSON object, holds `keys`): a file of another kind (judgments by hand, a dataset) is never written over. A
    folder is refused now, before the work whose output could not be written there."""
    if Path(out).is_dir():
        raise GhoulError(f"{flag} {out} is a directory: give the path of a file")
    if not is_output_of(out, keys):
        raise GhoulError(f"{out} exists and is not an earlier output of this command: give another {flag}, or move "
                         "it away first")


def is_output_of(path: str | Path, keys: Iterable[str]) -> bool:
    """Whether `path` may be written over by a command whose outputs hold `keys`: it is missing or empty, or it is
    such an output (its one JSON object, or a JSON-lines file's first record, holds them)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return True
    data = path.read_bytes()
    try:
        first = json.loads(data)  # a JSON file (indented over many lines)
    except (UnicodeDecodeError, json.JSONDecodeError):
        try:
            first = json.loads(data.split(b"\n", 1)[0])  # a JSON-lines file's first record
        except (UnicodeDecodeError, json.JSONDecodeError):
            first = None
    return isinstance(first, dict) and set(keys) <= set(first)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a hidden temporary file beside `path`, then rename it into place: `path` never holds half a
    file, and a failed write leaves nothing behind."""
    path = Path(path)
    if path.is_dir():  # checked first: the rename would fail only after the whole file is written
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = create_beside(path, lambda p: os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write (a full disk) names no file: name it
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():  # never swap a user's file for a folder
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
    tmp, _ = create_beside(path, lambda p: os.mkdir(p, 0o777))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside first
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def create_beside(path: Path, create: Callable[[Path], T]) -> tuple[Path, T]:
    """Create a hidden temporary beside `path` (`.NAME.WRITER.RANDOM.tmp`) with `create`, which makes it with the mode
    of an ordinary write (0o666 or 0o777, less the umask: tempfile's are 0600 and 0700, unreadable to the group).
    The temporaries of `path` whose writer was killed are removed first: a killed export or download left a hidden
    copy as large as the output, which each rerun would otherwise add to."""
    host, pid = writer()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{host}-*.tmp"):
        other = tmp.name[len(f".{path.name}.{host}-"):].split(".")[0]
        if other.isdigit() and not process_alive(int(other)):
            remove(tmp)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{host}-{pid}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, create(tmp)
        except FileExistsError:
            continue
        except OSError as e:  # a read-only or full disk: the user's path, not the hidden temporary's
            raise OSError(e.errno, e.strerror, str(path)) from e
    raise FileExistsError(errno.EEXIST, "no free temporary name beside it", str(path))


def writer() -> tuple[str, int]:
    """This process, as its host (a CRC of the name: a shared disk may hold another machine's temporaries, whose
    process ids mean nothing here) and its id."""
    return f"{zlib.crc32(socket.gethostname().encode()):08x}", os.getpid()


def process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill would end the process on Windows: keep every temporary there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def remove(path: Path) -> None:
    """Remove a file or a folder (not what a link points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_temporaries(directory: str | Path) -> list[Path]:
    """Remove what atomic writes into `directory` left when killed (hidden `.NAME.*.tmp` files and folders), and put
    back an old copy (`.NAME.old`) whose replacement never arrived; returns what was removed."""
    directory, removed = Path(directory), []
    for old in (p for p in directory.glob(".*.old") if p.is_dir()):  # atomic_directory's; never a user's file
        target = directory / old.name[1:-len(".old")]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
        else:
            os.replace(old, target)
    for tmp in directory.glob(".*.tmp"):
        remove(tmp)
        removed.append(tmp)
    return removed


@contextlib.contextmanager
def sole_writer(directory: str | Path) -> Iterator[None]:
    """Hold `directory` (made if missing) as the one process writing into it: a second ghoul process that asks for it
    meanwhile (the same command started again in another terminal) gets a one-line error, instead of interleaving
    its logs and checkpoints with the first's or removing what the first is writing. The lock is the kernel's, on the
    directory itself, so a killed process leaves none behind; this process may ask again inside (a pipeline's
    stages). Under torchrun rank 0 holds it for every rank, which all run the same command into it. A directory made
    here and left empty is removed again."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise GhoulError(f"{directory} is a file, not a directory: give the path of a new or existing directory")
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(directory):
            yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    if fcntl is None or os.environ.get("RANK", "0") != "0":  # torchrun's other ranks: rank 0 holds it for them
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        stat = os.fstat(fd)
        key = (stat.st_dev, stat.st_ino)
        locked = key not in _held and _flock(fd, directory)  # held further out: released there
        if locked:
            _held.add(key)
        try:
            yield
        finally:
            if locked:
                _held.discard(key)
    finally:
        os.close(fd)  # and with it the lock


def _flock(fd: int, directory: Path) -> bool:
    """Take the exclusive lock on `directory`'s `fd` without waiting: True, or False on a file system without locks
    (some network ones), which then goes unguarded; held by another process, a one-line error."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise GhoulError(f"{directory} is being written by another ghoul process: let it finish, or stop it, before "
                         "running this again (a directory has one writer at a time)") from None
    except OSError:
        return False
    return True


def is_disk_full(e: OSError) -> bool:
    """Whether a failed write ran out of space: a full disk or a quota."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_is_an_error(path: str | Path) -> Iterator[None]:
    """Turn a full disk (or quota) met while writing under `path` into a one-line error; the writers keep what was
    complete before (appends are cut back, shards and JSON files are renamed into place only once whole)."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise GhoulError(f"no space left on the device of {path} ({e.strerror}): free some space and run the same "
                         "command again to go on from what is saved") from None


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line and flush it to disk, so records that arrive one at a time survive a crash.
    A write that fails (a full disk) is cut back, so the file never keeps half a line."""
    path = Path(path)
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with disk_full_is_an_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # os-level writes: a buffered file would retry its buffer on close, after the cut
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def repair_jsonl(path: str | Path, first_key: str) -> None:
    """Cut a torn last line (a crash mid-append), so that the next append starts on a line of its own.

    Call it once the complete lines are checked to be ours: it cuts only a line that begins as our records do
    (`{"first_key": ...`, json.dumps keeps the keys in order), so a file that is not ours is never shortened."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        tail, ours = data[start:], ("{" + json.dumps(first_key) + ": ").encode()
        if tail[:len(ours)] != ours[:len(tail)]:
            raise GhoulError(f"{path} ends in a line that this command did not write: it is not our output; "
                             "give another output path")
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write whole `records` as JSON lines, atomically (records that arrive one at a time: `append_jsonl`)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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
    lines = Path(path).read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i == len(lines) - 1
        try:  # only a torn last line may end in the middle of a character
            text = codecs.getincrementaldecoder("utf-8")().decode(line, final=not last)
        except UnicodeDecodeError as e:  # a binary file given by mistake
            raise GhoulError(f"{path}, line {i + 1}: not UTF-8 text ({e.reason} at byte {e.start}), so not a "
                             "JSON-lines file") from None
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError:
            if last:
                break
            raise GhoulError(f"{path}, line {i + 1}: not valid JSON") from None
    return records
