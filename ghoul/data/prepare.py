"""`ghoul prepare SOURCE`: tokenise a text source in worker processes and write train/val token shards.

Each document is followed by the eot token. The first `val_tokens` tokens go to the val split, the rest to train.
After every shard, meta.json records how far into the source it got, so an interrupted run resumes there.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shlex
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, fields
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ghoul.config import flag, option, same_setting
from ghoul.data.shards import META_FILE, SPLITS, read_header, read_meta, shard_dtype, shard_name, write_shard
from ghoul.data.sources import SOURCE_PATH_HELP, SOURCES, TEXT_FIELD_HELP, make_source
from ghoul.errors import GhoulError
from ghoul.files import disk_full_is_an_error, sole_writer, write_json
from ghoul.interrupts import interrupt_held
from ghoul.layout import CONFIG_FILE
from ghoul.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer

BATCH_CHARS = 1 << 18  # text per worker task: ~60k GPT-2 tokens, tens of ms, so task overhead stays negligible


@dataclass
class PrepareConfig:
    source: str = option(help="what to read", choices=sorted(SOURCES), positional=True)
    out: Path = option(help="directory for the shards and meta.json", metavar="DIR")
    tokenizer: str = option("gpt2", "tokenizer name (gpt2) or the path of a tokenizer JSON file", metavar="gpt2|PATH")
    source_path: str | None = option(None, SOURCE_PATH_HELP, metavar="FILE|DIR|GLOB")
    subset: str | None = option(None, "Hub subset for fineweb/fineweb-edu, e.g. sample-10BT, sample-100BT")
    text_field: str | None = option(None, TEXT_FIELD_HELP)
    separator: str | None = option(None, "for text: split each file into documents on this string (\\n allowed)")
    shard_tokens: int = option(100_000_000, "tokens per shard")
    val_tokens: int = option(0, "the first N tokens go to the val split (0: no val split)")
    workers: int = option(0, "tokenizer processes (0: one per CPU core)")
    limit_docs: int | None = option(None, "stop after this many documents")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not 0 < self.shard_tokens < 2**31:
            raise GhoulError(f"--shard-tokens must be between 1 and {2**31 - 1:,} (the header counts in int32)")
        if self.val_tokens < 0 or self.workers < 0:
            raise GhoulError("--val-tokens and --workers must be 0 or more")
        if self.limit_docs is not None and self.limit_docs < 1:
            raise GhoulError("--limit-docs must be 1 or more")


@dataclass
class PrepareResult:
    out: Path
    documents: int
    tokens: dict[str, int]  # per split
    shards: dict[str, list[int]]  # token count of each shard, per split
    seconds: float
    skipped: bool = False  # the directory was already complete


# Settings that decide the shards' contents: a resumed run must use the same ones.
SETTINGS = ("source", "source_path", "subset", "text_field", "separator", "tokenizer", "shard_tokens", "val_tokens",
            "limit_docs")


def run(cfg: PrepareConfig) -> PrepareResult:
    """Tokenise `cfg.source` into `cfg.out`, resuming an interrupted run and doing nothing for a finished one."""
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.tokenizer)
    dtype = shard_dtype(tokenizer.vocab_size)
    with sole_writer(cfg.out):  # a second prepare into it meanwhile is refused
        meta = _existing_output(cfg, tokenizer)
        if meta is not None and meta["complete"]:
            total = sum(map(sum, meta["shards"].values()))
            print(f"{cfg.out} is already prepared ({meta['documents']:,} documents, {total:,} tokens); nothing to do")
            return _result(cfg.out, meta, time.perf_counter() - start, skipped=True)
        source = make_source(cfg.source, cfg.source_path, text_field=cfg.text_field, subset=cfg.subset,
                             separator=cfg.separator)
        stream = iter(source)
        first = next(stream)  # a missing file, an unknown field or an empty source fails here, before any output
        with disk_full_is_an_error(cfg.out):  # meta.json names only complete shards: a rerun goes on from the last
            if meta is None:
                meta = _new_output(cfg, tokenizer, dtype, source.licence)
            else:
                shards = sum(map(len, meta["shards"].values()))
                print(f"resuming {cfg.out} after {shards} complete shards ({meta['resume']['documents']:,} documents)")
            resumed = meta["resume"]["documents"]
            docs = islice(chain([first], stream), resumed, cfg.limit_docs)
            total = min(filter(None, (source.size_estimate(), cfg.limit_docs)), default=None)
            writer = ShardWriter(cfg.out, meta, dtype)
            _fill(writer, docs, cfg, total, start)
            writer.finish()
        result = _result(cfg.out, meta, time.perf_counter() - start)
        print(f"wrote {writer.position:,} tokens ({', '.join(f'{s} {n:,}' for s, n in result.tokens.items())}) "
              f"from {result.documents:,} documents to {cfg.out} in {result.seconds:.1f}s")
        return result


def _fill(writer: ShardWriter, docs: Iterable[str], cfg: PrepareConfig, total: int | None, start: float) -> None:
    """Tokenise `docs` in worker processes into `writer`, with a progress bar of documents, tokens and tokens/s."""
    cores = os.cpu_count() or 1
    workers = min(cfg.workers or cores, cores)  # more processes than cores would only wait
    pool = start_workers(cfg.tokenizer, workers)
    resume = writer.meta["resume"]
    try:
        with tqdm(total=total, initial=resume["documents"], unit="doc", disable=not cfg.progress,
                  dynamic_ncols=True) as bar:
            skip = resume["skip_tokens"]  # of the first document: already in the last complete shard
            for tokens, doc_lens in tokenize(doc_batches(docs, BATCH_CHARS), pool, 2 * workers):
                if skip:
                    tokens, doc_lens[0], skip = tokens[skip:], doc_lens[0] - skip, 0
                writer.add(tokens, doc_lens)
                bar.update(len(doc_lens))
                rate = writer.added / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{writer.position:,} tokens, {rate:,.0f} tok/s", refresh=False)
    finally:
        if pool is not None:
            with interrupt_held():  # a second Ctrl-C inside the shutdown left workers that exit waited for, forever
                pool.shutdown(cancel_futures=True)


def _result(out: Path, meta: dict[str, Any], seconds: float, skipped: bool = False) -> PrepareResult:
    tokens = {split: sum(counts) for split, counts in meta["shards"].items()}
    return PrepareResult(out, meta["documents"], tokens, meta["shards"], seconds, skipped)


def command_line(cfg: PrepareConfig) -> str:
    """The `ghoul prepare` command that gives these settings (recorded in meta.json)."""
    words = ["ghoul", "prepare", cfg.source, "--out", str(cfg.out)]
    defaults = PrepareConfig(cfg.source, cfg.out)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in SETTINGS and f.name != "source" and value != getattr(defaults, f.name):
            words += [flag(f.name), str(value)]
    return shlex.join(words)


def _existing_output(cfg: PrepareConfig, tokenizer: Tokenizer) -> dict[str, Any] | None:
    """The stored meta.json of `cfg.out` to resume or skip, checked against these settings; None for a new one."""
    if (cfg.out / CONFIG_FILE).is_file():  # shards among a run's checkpoints, or in a model directory
        raise GhoulError(f"{cfg.out} holds a run or a model ({CONFIG_FILE}), not token shards: give an empty or new "
                         "--out directory")
    meta = read_meta(cfg.out)
    if meta is None:
        if cfg.out.is_dir() and any(cfg.out.glob("*.bin")):
            raise GhoulError(f"{cfg.out} holds .bin files but no {META_FILE}: give an empty or new --out directory")
        return None
    if not {"settings", "shards"} <= set(meta):  # not "prepared with other settings": never prepared at all
        raise GhoulError(f"{cfg.out} holds a {META_FILE} that `ghoul prepare` did not write: give an empty or new "
                         "--out directory")
    old = meta["settings"]  # there: a meta.json without it is refused above
    changed = [f"{flag(k)} {old.get(k)!r} there, {v!r} now" for k, v in _settings(cfg).items()
               if not same_setting(old.get(k), v, meta.get("out"), cfg.out)]
    if meta.get("vocab_size") != tokenizer.vocab_size:
        changed.append(f"vocabulary {meta.get('vocab_size')} there, {tokenizer.vocab_size} now")
    if changed:
        raise GhoulError(f"{cfg.out} was prepared with other settings ({'; '.join(changed)}): "
                         "use another --out (ghoul learn: --output-dir) or delete that directory")
    for split, counts in meta["shards"].items():
        for i, count in enumerate(counts):
            path = cfg.out / shard_name(split, i)
            if read_header(path).count != count:
                raise GhoulError(f"{path} does not hold the {count:,} tokens {META_FILE} lists: delete {cfg.out}")
    return meta


def _settings(cfg: PrepareConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in SETTINGS}


def _new_output(cfg: PrepareConfig, tokenizer: Tokenizer, dtype: np.dtype, licence: str) -> dict[str, Any]:
    """Create `cfg.out` and the meta.json that starts it (written with the first shard)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    return {"source": cfg.source, "source_path": cfg.source_path, "out": str(cfg.out), "licence": licence,
            "tokenizer": _keep_tokenizer(cfg, tokenizer), "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id, "dtype": dtype.name, "shards": {split: [] for split in SPLITS},
            "documents": 0, "command": command_line(cfg), "settings": _settings(cfg), "complete": False,
            "resume": {"documents": 0, "skip_tokens": 0}}


def _keep_tokenizer(cfg: PrepareConfig, tokenizer: Tokenizer) -> str:
    """The tokenizer as meta.json names it: `gpt2`, or a copy saved in the directory so that it is self-contained."""
    if cfg.tokenizer == "gpt2":
        return "gpt2"
    tokenizer.save(cfg.out / TOKENIZER_FILE)  # every tokenizer's save is atomic
    return TOKENIZER_FILE  # relative to the shard directory; load_tokenizer(directory) finds it too


class ShardWriter:
    """Cuts a stream of tokens into val then train shards, recording in meta.json where each shard ends."""

    def __init__(self, out: Path, meta: dict[str, Any], dtype: np.dtype) -> None:
        self.out, self.meta, self.dtype = out, meta, np.dtype(dtype)
        self.shard_tokens, self.val_tokens = meta["settings"]["shard_tokens"], meta["settings"]["val_tokens"]
        self.written = sum(map(sum, meta["shards"].values()))  # tokens in complete shards
        self.position = self.written  # tokens seen, written or buffered
        self.added = 0  # tokens added by this run (for the rate)
        self.documents = meta["resume"]["documents"]  # documents that end at or before `position`
        self.last_end = self.written - meta["resume"]["skip_tokens"]  # where the unfinished document began
        self.buffer = np.empty(0, dtype=self.dtype)  # _new_buffer sizes it, and sets `split` and `fill`
        self._new_buffer()

    def _new_buffer(self) -> None:
        self.split = "val" if self.written < self.val_tokens else "train"
        size = min(self.shard_tokens, self.val_tokens - self.written) if self.split == "val" else self.shard_tokens
        if len(self.buffer) != size:
            self.buffer = np.empty(size, dtype=self.dtype)
        self.fill = 0

    def add(self, tokens: np.ndarray, doc_lens: np.ndarray) -> None:
        """Append whole documents (`doc_lens` tokens each, eot included; the first may be a remainder)."""
        ends = self.position + np.cumsum(doc_lens)  # stream position where each document ends
        i = 0
        while i < len(tokens):
            take = min(len(tokens) - i, len(self.buffer) - self.fill)
            self.buffer[self.fill:self.fill + take] = tokens[i:i + take]
            self.fill, self.position, i = self.fill + take, self.position + take, i + take
            if self.fill == len(self.buffer):
                done = int(np.searchsorted(ends, self.position, side="right"))
                began = int(ends[done - 1]) if done else self.last_end
                self._flush(self.documents + done, self.position - began)
        self.added += len(tokens)
        self.documents += len(doc_lens)
        self.last_end = self.position

    def _flush(self, documents: int, skip_tokens: int) -> None:
        index = len(self.meta["shards"][self.split])
        write_shard(self.out / shard_name(self.split, index), self.buffer[:self.fill], self.dtype)
        self.meta["shards"][self.split].append(self.fill)
        self.meta["resume"] = {"documents": documents, "skip_tokens": skip_tokens}
        self.meta["documents"] = documents
        write_json(self.out / META_FILE, self.meta)  # after the shard's rename: meta never lists a missing shard
        self.written += self.fill
        self._new_buffer()

    def finish(self) -> None:
        """Write the last, partial shard and mark the directory complete."""
        if self.fill:
            self._flush(self.documents, 0)
        if not self.meta["shards"]["train"]:
            raise GhoulError(f"all {self.written:,} tokens went to the val split: lower --val-tokens "
                             f"and delete {self.out}")
        self.meta["complete"] = True
        self.meta["documents"] = self.documents
        write_json(self.out / META_FILE, self.meta)


def doc_batches(docs: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def start_workers(tokenizer: str, workers: int) -> ProcessPoolExecutor | None:
    """A pool of `workers` tokenizer processes, started now (None for 1: tokenise in this process)."""
    _init_worker(tokenizer)  # in the parent too: forked workers inherit it (building GPT-2's takes about a second)
    if workers <= 1:
        return None
    # fork where there is one: the workers touch only numpy and tiktoken, never torch. An executor rather than
    # Pool: a worker that dies raises BrokenProcessPool instead of hanging.
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_pool_worker,
                               initargs=(tokenizer, os.getpid()))
    pool.submit(_init_worker, tokenizer).result()  # forks every worker now, before tqdm starts its monitor thread
    return pool


def tokenize(batches: Iterable[list[str]], pool: ProcessPoolExecutor | None,
             ahead: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, tokens per document) for each batch, in order, from the pool's workers (or this process), with at
    most `ahead` batches in flight: bounded read-ahead, so a 10B-token source never sits in memory."""
    if pool is None:
        yield from map(encode_batch, batches)
        return
    pending: deque[Future] = deque()
    for batch in batches:
        pending.append(pool.submit(encode_batch, batch))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


_worker: dict[str, Any] = {}  # the tokenizer of this worker process, set once by _init_worker


def _init_worker(spec: str) -> None:
    if _worker.get("spec") != spec:
        tokenizer = load_tokenizer(spec)
        _worker.update(spec=spec, tokenizer=tokenizer, dtype=shard_dtype(tokenizer.vocab_size))


def _init_pool_worker(spec: str, parent: int) -> None:
    # Ctrl-C is the parent's to handle: it stops reading and shuts the pool down, keeping the complete shards
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()
    _init_worker(spec)


def _exit_with_parent(parent: int) -> None:
    """End this worker soon after its parent process `parent` is gone (SIGKILL, SIGTERM, the OOM killer)."""
    # An orphaned worker waits forever on the task queue or on a result pipe that nobody reads, so a check between
    # batches would never run: a thread watches instead. The parent's pid comes from the parent, so a parent that died
    # before this thread started counts too. os.getppid() changes on reparenting (POSIX, fork or spawn alike);
    # prctl(PR_SET_PDEATHSIG) would be Linux-only and fires when the forking *thread* ends, not the process.
    while os.getppid() == parent:
        time.sleep(0.25)
    os._exit(1)  # a worker writes no files: there is nothing to finish


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of `texts`, each followed by eot, and each text's token count; numpy throughout, no per-token objects."""
    tokenizer, dtype = _worker["tokenizer"], _worker["dtype"]
    encoding = getattr(tokenizer, "encoding", None)
    if hasattr(encoding, "encode_to_numpy"):  # tiktoken >= 0.8
        # disallowed_special=() encodes "<|endoftext|>" in the text as plain text, exactly as encode_ordinary does
        arrays = [encoding.encode_to_numpy(text, disallowed_special=()) for text in texts]
    else:
        arrays = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(texts)]
    lens = np.fromiter((len(a) + 1 for a in arrays), dtype=np.int64, count=len(arrays))
    ends = np.cumsum(lens)
    out = np.empty(int(lens.sum()), dtype=dtype)
    for a, end in zip(arrays, ends.tolist(), strict=True):
        out[end - 1 - len(a):end - 1] = a
    out[ends - 1] = tokenizer.eot_id
    return out, lens
