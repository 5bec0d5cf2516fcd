"""`ghoul prepare` throughput against its ceiling: raw tiktoken `encode_ordinary_batch` on the same text in the
same number of processes. Run as `python -m benchmarks.bench_prepare [--repeat N] [--workers N] [--repeats N]`.

The text is the FineWeb sample of the shared data folder, repeated to make a run of some seconds. Both sides
start from the same built GPT-2 encoding and include starting their worker processes; `ghoul prepare` also
reads the JSON lines, writes the shards and meta.json. The ratio is ceiling time / prepare time (target >= 0.8).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.timing import describe, measure_each, result, side
from ghoul.data.prepare import BATCH_CHARS, PrepareConfig, doc_batches
from ghoul.data.prepare import run as prepare
from ghoul.tokenizer.gpt2 import gpt2_encoding


def _count(texts: list[str]) -> int:
    return sum(map(len, gpt2_encoding().encode_ordinary_batch(texts, num_threads=1)))


def _count_numpy(texts: list[str]) -> int:
    encoding = gpt2_encoding()
    return sum(len(encoding.encode_to_numpy(t, disallowed_special=())) for t in texts)


def ceiling(docs: list[str], workers: int, count: Callable[[list[str]], int] = _count) -> int:
    """Tokens of `docs` by tiktoken alone: the same batches as prepare over `workers` forked processes."""
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return sum(pool.map(count, doc_batches(docs, BATCH_CHARS)))


def default_data() -> Path:
    env = os.environ.get("GHOUL_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def run(data: Path | None = None, repeat: int = 20, workers: int | None = None, repeats: int = 3,
        warmup: int = 1) -> dict:
    """Tokens/s of `ghoul prepare` against raw tiktoken on `repeat` copies of the FineWeb sample."""
    data, workers = data or default_data(), workers or os.cpu_count() or 1
    with open(data / "fineweb" / "fineweb_subset.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f] * repeat
    gpt2_encoding()  # built once here; forked workers on both sides inherit it
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with open(corpus, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
        tokens = ceiling(docs, workers)
        counter = itertools.count()
        outputs = []

        def ours():  # a fresh directory each time: prepare does nothing for a finished one
            outputs.append(prepare(PrepareConfig("fineweb", Path(tmp) / f"shards{next(counter)}",
                                                 source_path=str(corpus), shard_tokens=10_000_000,
                                                 workers=workers, progress=False)))

        t_ours, t_peer, t_numpy = measure_each([ours, lambda: ceiling(docs, workers),
                                                lambda: ceiling(docs, workers, _count_numpy)], repeats, warmup)
    assert sum(outputs[-1].tokens.values()) == tokens + len(docs), "prepare and tiktoken disagree on the token count"
    return result("prepare", f"FineWeb sample x {repeat}: {len(docs):,} documents, {tokens:,} tokens, {workers} "
                  f"processes on {os.cpu_count()} cores", "tokens/s",
                  side("ghoul prepare (read, tokenise, write shards)", tokens, t_ours),
                  side("tiktoken encode_ordinary_batch (ceiling)", tokens, t_peer),
                  f"python -m benchmarks.bench_prepare --repeat {repeat} --workers {workers} --repeats {repeats}",
                  target="ratio >= 0.8", encode_to_numpy_tokens_per_s=tokens / t_numpy["median_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="the shared data folder")
    parser.add_argument("--repeat", type=int, default=20, help="copies of the 300-document FineWeb sample")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes on both sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side, after one warm-up")
    args = parser.parse_args()
    print(describe(run(args.data, args.repeat, args.workers, args.repeats)))


if __name__ == "__main__":
    main()
