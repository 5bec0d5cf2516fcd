"""`ghoul prepare` throughput against its ceiling: raw tiktoken `encode_ordinary_batch` on the same text in the
same number of processes. Run as `python -m benchmarks.bench_prepare [--repeat N] [--workers N] [--rounds N]`.

The text is the FineWeb sample of the shared data folder, repeated to make a run of some seconds. Both sides
start from the same built GPT-2 encoding and include starting their worker processes; `ghoul prepare` also
reads the JSON lines, writes the shards and meta.json. The ratio is ceiling time / prepare time (target >= 0.8).
CPU seconds (all processes) are printed too: on a machine shared with other work they vary less than wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ghoul.data.prepare import BATCH_CHARS, PrepareConfig, doc_batches, run
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


def measure(fn: Callable[[], object]) -> tuple[object, float, float]:
    """fn's result, wall seconds and CPU seconds of this process and its (joined) children."""
    t0, c0 = time.perf_counter(), sum(os.times()[:4])
    result = fn()
    return result, time.perf_counter() - t0, sum(os.times()[:4]) - c0


def default_data() -> Path:
    env = os.environ.get("GHOUL_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="the shared data folder")
    parser.add_argument("--repeat", type=int, default=20, help="copies of the 300-document FineWeb sample")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes on both sides")
    parser.add_argument("--rounds", type=int, default=3, help="measure each side this many times, keep the best")
    args = parser.parse_args()
    with open(args.data / "fineweb" / "fineweb_subset.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f] * args.repeat
    gpt2_encoding()  # built once here; forked workers on both sides inherit it
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with open(corpus, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
        sides = {"ceiling": lambda: ceiling(docs, args.workers),
                 "numpy": lambda: ceiling(docs, args.workers, _count_numpy)}
        for i in range(args.rounds):  # interleaved, best of each: other load on the machine only slows a run
            sides["prepare"] = lambda i=i: run(PrepareConfig(
                "fineweb", Path(tmp) / f"shards{i}", source_path=str(corpus), shard_tokens=10_000_000,
                workers=args.workers, progress=False))
            for name, fn in sides.items():
                result, wall, cpu = measure(fn)
                best[name] = min(best.get(name, (wall, cpu)), (wall, cpu))
                if name == "ceiling":
                    tokens = result
    assert sum(result.tokens.values()) == tokens + len(docs), "prepare and tiktoken disagree on the token count"
    print(f"text: {len(docs):,} FineWeb documents, {sum(map(len, docs)) / 1e6:.1f} M characters, {tokens:,} tokens; "
          f"{args.workers} processes on {os.cpu_count()} cores; best of {args.rounds} rounds")
    labels = {"ceiling": "tiktoken encode_ordinary_batch (ceiling)", "numpy": "tiktoken encode_to_numpy alone",
              "prepare": "ghoul prepare (read, tokenise, write)"}
    for name, label in labels.items():
        wall, cpu = best[name]
        print(f"{label:42s} {wall:6.2f} s  {tokens / wall:12,.0f} tokens/s  ({cpu:5.2f} CPU s)")
    (cw, cc), (nw, nc), (pw, pc) = best["ceiling"], best["numpy"], best["prepare"]
    print(f"ratio prepare / ceiling: {cw / pw:.2f} by wall time (target >= 0.8), {cc / pc:.2f} by CPU time; "
          f"prepare / encode_to_numpy alone: {nw / pw:.2f} wall, {nc / pc:.2f} CPU")


if __name__ == "__main__":
    main()
