"""`ghoul prepare` on the real FineWeb and Reddit samples: tokens match tiktoken, shards split, resume, errors."""

from __future__ import annotations

import contextlib
import errno
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ghoul.cli import main
from ghoul.data import prepare as prepare_module
from ghoul.data.prepare import PrepareConfig, run
from ghoul.data.shards import find_shards, read_meta, read_shard, write_shard
from ghoul.errors import GhoulError
from ghoul.tokenizer.gpt2 import gpt2_encoding
from tests.conftest import REPO

EOT = 50256


def stream(out: Path) -> np.ndarray:
    """All tokens of a prepared directory in stream order: val shards first, then train."""
    meta = read_meta(out)
    parts = [read_shard(p) for split in ("val", "train") if meta["shards"][split] for p in find_shards(out, split)]
    return np.concatenate(parts).astype(np.int64)


def expected_stream(docs: list[str]) -> list[int]:
    enc = gpt2_encoding()
    return [t for doc in docs for t in [*enc.encode_ordinary(doc), EOT]]


def test_fineweb_tokens_match_tiktoken(data: Path, tmp_path: Path) -> None:
    records = json.loads((data / "fineweb" / "fineweb_subset.json").read_text(encoding="utf-8"))
    cfg = PrepareConfig("fineweb", tmp_path / "fw", source_path=str(data / "fineweb" / "fineweb_subset.parquet"),
                        shard_tokens=40_000, val_tokens=25_000, workers=2, progress=False)
    result = run(cfg)
    tokens = stream(cfg.out)
    assert tokens.tolist() == expected_stream([r["text"] for r in records])
    meta = read_meta(cfg.out)
    assert meta["complete"] and meta["documents"] == result.documents == 300
    assert (meta["vocab_size"], meta["eot_id"], meta["dtype"]) == (50257, EOT, "uint16")
    assert meta["shards"]["val"] == [25_000] and result.tokens["val"] == 25_000
    assert all(n == 40_000 for n in meta["shards"]["train"][:-1]) and 0 < meta["shards"]["train"][-1] <= 40_000
    assert meta["command"].startswith("ghoul prepare fineweb --out ")
    # FineWeb's own token_count is an independent count by GPT-2's tokenizer, off by a few for a handful of docs
    ends = np.flatnonzero(tokens == EOT)
    lengths = np.diff(np.concatenate([[-1], ends])) - 1
    matches = sum(int(n) == r["token_count"] for n, r in zip(lengths, records, strict=True))
    assert matches >= 0.95 * len(records)
    assert abs(int(lengths.sum()) - sum(r["token_count"] for r in records)) < 0.001 * lengths.sum()


def test_creepypasta_cli_tokens_match_tiktoken(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = data / "creepypasta" / "reddit_horror_stories.jsonl"
    out = tmp_path / "horror"
    code = main(["prepare", "creepypasta", "--source-path", str(path), "--out", str(out), "--shard-tokens", "300_000",
                 "--workers", "2", "--no-progress"])
    assert code == 0
    with open(path, encoding="utf-8") as f:
        stories = [json.loads(line) for line in f]
    docs = [f"{html.unescape(s['title']).strip()}\n\n{html.unescape(s['selftext']).strip()}" for s in stories]
    assert stream(out).tolist() == expected_stream(docs)
    assert read_meta(out)["documents"] == len(stories)
    assert "wrote" in capsys.readouterr().out


def test_workers_do_not_change_the_shards(data: Path, tmp_path: Path) -> None:
    def shards(workers: int) -> list[bytes]:
        cfg = PrepareConfig("text", tmp_path / str(workers), source_path=str(data / "tinyshakespeare" / "input.txt"),
                            separator="\\n\\n", shard_tokens=50_000, val_tokens=20_000, workers=workers,
                            progress=False)
        run(cfg)
        return [p.read_bytes() for p in sorted(cfg.out.glob("*.bin"))]

    one, two = shards(1), shards(2)
    assert one == two and len(one) > 3


def children(pid: int) -> set[int]:
    """The child processes of `pid`, from Linux's /proc."""
    found: set[int] = set()
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # the process or thread has just ended
            found.update(map(int, listing.read_text().split()))
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process: not gone, and not a zombie waiting for its new parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # the state follows "(command name)"


@pytest.mark.skipif(sys.platform != "linux", reason="finds the worker processes through Linux's /proc")
def test_workers_exit_when_the_main_process_is_killed(data: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # 200 x tinyshakespeare: about 67M tokens, far more than the run gets to
    corpus.mkdir()
    for i in range(200):
        (corpus / f"{i:03d}.txt").symlink_to(data / "tinyshakespeare" / "input.txt")
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ghoul", "prepare", "text", "--source-path", str(corpus),
                                 "--out", str(out), "--shard-tokens", "100_000", "--workers", "2", "--no-progress"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    workers: set[int] = set()
    started = time.monotonic()
    try:
        while not (len(workers) == 2 and any(out.glob("*.bin"))):  # the workers are tokenising
            assert proc.poll() is None and time.monotonic() - started < 60, log.read_text()
            workers = children(proc.pid)
            time.sleep(0.05)
        proc.kill()  # SIGKILL, as the OOM killer sends it: the parent gets no chance to stop its workers
        proc.wait()
        deadline = time.monotonic() + 5
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if running(pid)], "workers outlived their killed parent"
    finally:
        proc.kill()
        for pid in filter(running, workers):  # so that a failure leaves no orphans behind
            os.kill(pid, signal.SIGKILL)



def test_two_quick_ctrl_cs_still_exit(data: Path, tmp_path: Path) -> None:
    """The second Ctrl-C came inside the pool's shutdown, and the process then waited for ever at exit for workers
    still waiting for tasks."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(200):
        (corpus / f"{i:03d}.txt").symlink_to(data / "tinyshakespeare" / "input.txt")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ghoul", "prepare", "text", "--source-path", str(corpus), "--out",
                             str(out), "--shard-tokens", "100_000", "--workers", "2", "--no-progress"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        started = time.monotonic()
        while not any(out.glob("*.bin")):  # the workers are tokenising
            assert proc.poll() is None and time.monotonic() - started < 60
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C twice, as a terminal sends it: to the whole process group
        time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_interrupted_run_resumes_to_identical_shards(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    def config(out: str) -> PrepareConfig:
        return PrepareConfig("fineweb", tmp_path / out, source_path=str(data / "fineweb" / "fineweb_subset.jsonl"),
                             shard_tokens=17_000, val_tokens=30_000, limit_docs=200, workers=1, progress=False)

    reference = config("whole")
    run(reference)
    original = prepare_module.ShardWriter._flush
    flushed = []

    def crash_after_four(self, documents: int, skip_tokens: int) -> None:
        if len(flushed) == 4:
            (self.out / "train_000003.bin.tmp").write_bytes(b"half a shard")  # as a crash mid-write leaves it
            raise KeyboardInterrupt
        flushed.append(skip_tokens)
        original(self, documents, skip_tokens)

    monkeypatch.setattr(prepare_module.ShardWriter, "_flush", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        run(config("resumed"))
    assert any(flushed)  # some shard ended inside a document, so the resume starts mid-document
    partial = read_meta(tmp_path / "resumed")
    assert not partial["complete"] and len(partial["shards"]["val"]) + len(partial["shards"]["train"]) == 4
    monkeypatch.setattr(prepare_module.ShardWriter, "_flush", original)
    result = run(config("resumed"))
    assert not result.skipped
    assert "after 4 complete shards" in capsys.readouterr().out
    names = sorted(p.name for p in reference.out.glob("*.bin"))
    assert names == sorted(p.name for p in (tmp_path / "resumed").glob("*.bin"))
    for name in names:
        assert (reference.out / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    assert read_meta(tmp_path / "resumed")["documents"] == read_meta(reference.out)["documents"] == 200


def test_second_run_does_nothing(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = PrepareConfig("fineweb", tmp_path / "fw", source_path=str(data / "fineweb" / "fineweb_subset.json"),
                        limit_docs=20, workers=1, progress=False)
    first = run(cfg)
    stamps = {p: p.stat().st_mtime_ns for p in cfg.out.iterdir()}
    second = run(cfg)
    assert second.skipped and "nothing to do" in capsys.readouterr().out
    assert second.tokens == first.tokens and second.documents == 20
    assert stamps == {p: p.stat().st_mtime_ns for p in cfg.out.iterdir()}
    cfg.limit_docs = 30
    with pytest.raises(GhoulError, match=r"prepared with other settings \(--limit-docs 20 there, 30 now\)"):
        run(cfg)


def test_a_folder_of_something_else_is_not_prepared_into(data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    # a training run (its config.json), and a meta.json of the user's own: shards were written among them, and the
    # second was said to be "prepared with other settings"
    source = ["text", "--source-path", str(data / "tinyshakespeare" / "input.txt"), "--no-progress", "--out"]
    for name, held, message in (("run", "config.json", "holds a run or a model (config.json), not token shards"),
                                ("mine", "meta.json", "holds a meta.json that `ghoul prepare` did not write")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / held).write_text('{"my": "settings"}\n')
        assert main(["prepare", *source, str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ghoul prepare: error: {folder} {message}: give an empty or new --out directory"], err
        assert [p.name for p in folder.iterdir()] == [held]  # nothing added beside it


def test_a_folder_moved_with_its_source_is_still_prepared(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Shards kept beside their text (as a pipeline run keeps them) are taken as prepared after the folder is moved or
    renamed, or when the same files are named another way; another source is still refused."""
    def config(root: Path, text: str = "input.txt") -> PrepareConfig:
        return PrepareConfig("text", root / "shards", source_path=str(root / text), workers=1, progress=False)

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "input.txt").write_text((data / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    first = run(config(tmp_path / "a"))
    moved = (tmp_path / "a").rename(tmp_path / "b")
    again = run(config(moved))
    assert again.skipped and again.tokens == first.tokens and "nothing to do" in capsys.readouterr().out
    monkeypatch.chdir(moved)
    assert run(config(Path("."))).skipped  # the same files, by relative paths
    (moved / "other.txt").write_text("Another text altogether.\n")
    with pytest.raises(GhoulError, match=r"--source-path '.*a/input.txt' there, '.*b/other.txt' now"):
        run(config(moved, "other.txt"))


def test_bad_input_exits_2_naming_the_file(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def prepare(*args: str) -> str:
        assert main(["prepare", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        return capsys.readouterr().err

    assert "missing.parquet does not exist" in prepare("fineweb", "--source-path", str(tmp_path / "missing.parquet"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert "found no documents in" in prepare("jsonl", "--source-path", str(empty)) and "empty.jsonl" in prepare(
        "jsonl", "--source-path", str(empty))
    err = prepare("creepypasta", "--source-path", str(data / "creepypasta" / "shortscarystories.csv"),
                  "--text-field", "story")
    assert "shortscarystories.csv has no field 'story'; its fields are: created_utc, score" in err
    assert "unknown tokenizer 'nope'" in prepare("text", "--source-path", str(empty), "--tokenizer", "nope")
    assert "--shard-tokens must be" in prepare("text", "--source-path", str(empty), "--shard-tokens", "0")
    assert not (tmp_path / "out").exists()  # nothing is created before the input is known to be good
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "x.bin").write_bytes(b"")
    cfg = PrepareConfig("fineweb", stray, source_path=str(data / "fineweb" / "fineweb_subset.json"), progress=False)
    with pytest.raises(GhoulError, match="holds .bin files but no meta.json"):
        run(cfg)


def test_all_tokens_in_val_is_an_error(data: Path, tmp_path: Path) -> None:
    cfg = PrepareConfig("fineweb", tmp_path / "v", source_path=str(data / "fineweb" / "fineweb_subset.json"),
                        limit_docs=3, val_tokens=1_000_000, workers=1, progress=False)
    with pytest.raises(GhoulError, match="all .* tokens went to the val split: lower --val-tokens"):
        run(cfg)


def test_own_tokenizer_file_is_kept_with_the_shards(data: Path, tmp_path: Path) -> None:
    from ghoul.tokenizer import load_tokenizer
    from ghoul.tokenizer.char import CharTokenizer

    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    CharTokenizer.train([text]).save(tmp_path / "char.json")
    cfg = PrepareConfig("text", tmp_path / "chars", tokenizer=str(tmp_path / "char.json"),
                        source_path=str(data / "tinyshakespeare" / "input.txt"), workers=2, progress=False)
    run(cfg)
    tokenizer = load_tokenizer(cfg.out)  # the directory is self-contained
    meta = read_meta(cfg.out)
    assert meta["tokenizer"] == "tokenizer.json" and meta["vocab_size"] == tokenizer.vocab_size == 66
    assert stream(cfg.out).tolist() == [*tokenizer.encode(text), tokenizer.eot_id]


def prepare_argv(data: Path, out: Path) -> list[str]:
    return ["prepare", "fineweb", "--source-path", str(data / "fineweb" / "fineweb_subset.jsonl"), "--out", str(out),
            "--shard-tokens", "17_000", "--val-tokens", "30_000", "--limit-docs", "200", "--workers", "1",
            "--no-progress"]


def check_full_disk(capsys: pytest.CaptureFixture, out: Path, reference: Path) -> int:
    """The one-line error of a full disk; meta.json lists only complete shards, each as an uninterrupted run made it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ghoul prepare: error: no space left on the device of") and "Traceback" not in err
    meta = read_meta(out)
    assert not meta["complete"]
    for split, counts in meta["shards"].items():
        for i, _ in enumerate(counts):
            name = f"{split}_{i:06d}.bin"
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    return sum(map(len, meta["shards"].values()))


def check_same_shards(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.glob("*.bin"))
    assert names == sorted(p.name for p in out.glob("*.bin"))
    assert all((out / n).read_bytes() == (reference / n).read_bytes() for n in names)
    assert read_meta(out)["complete"] and read_meta(out)["shards"] == read_meta(reference)["shards"]


def test_a_full_disk_is_a_one_line_error_and_keeps_the_shards(data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    assert main(prepare_argv(data, tmp_path / "whole")) == 0
    written = []

    def fill_up(path: Path, tokens: np.ndarray, dtype: np.dtype) -> None:
        if len(written) == 3:
            Path(f"{path}.tmp").write_bytes(b"\0" * 100)  # as far as it got
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        write_shard(path, tokens, dtype)

    monkeypatch.setattr(prepare_module, "write_shard", fill_up)
    assert main(prepare_argv(data, tmp_path / "fw")) == 2
    monkeypatch.undo()
    assert check_full_disk(capsys, tmp_path / "fw", tmp_path / "whole") == 3
    assert main(prepare_argv(data, tmp_path / "fw")) == 0
    check_same_shards(tmp_path / "fw", tmp_path / "whole")


def test_a_real_full_disk_keeps_the_shards(data: Path, tmp_path: Path, small_disk,
                                           capsys: pytest.CaptureFixture) -> None:
    assert main(prepare_argv(data, tmp_path / "whole")) == 0
    disk = small_disk(1 << 20, 100 * 1024)
    assert main(prepare_argv(data, disk / "fw")) == 2
    assert 0 < check_full_disk(capsys, disk / "fw", tmp_path / "whole") < len(list((tmp_path / "whole").glob("*.bin")))
    (disk / "filler").unlink()
    assert main(prepare_argv(data, disk / "fw")) == 0
    check_same_shards(disk / "fw", tmp_path / "whole")
