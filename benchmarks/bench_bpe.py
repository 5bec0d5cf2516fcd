"""Time `ghoul tokenizer train` against Hugging Face `tokenizers`' Rust BPE trainer, each as a whole process.

Run as `python -m benchmarks.bench_bpe [--vocab-size 4096 --repeats 1]` (needs the shared data folder,
GHOUL_DATA_DIR, and `tokenizers`). The ratio is in wall-clock time; CPU seconds are reported too, since the Rust
trainer uses every core and ghoul one.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timing import describe, result, side

VOCAB_SIZE = 4096

# The peer: a byte-level BPE as GPT-2's (ByteLevel pre-tokenizer with GPT-2's regex, all 256 bytes in the
# alphabet), the same vocabulary size and end-of-text token, no progress bar; it reads the file and writes its JSON.
HF_SCRIPT = """
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
path, field, vocab_size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
        tok.train_from_iterator([json.loads(line)[field] for line in f if line.strip()], trainer)
else:
    tok.train([path], trainer)  # its fastest path: the file is read and pre-split line by line in parallel
assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
tok.save(out)
"""

CORPORA = {  # name -> (path in the shared data folder, JSON field)
    "tinyshakespeare": ("tinyshakespeare/input.txt", "text"),
    "reddit-horror": ("creepypasta/reddit_horror_stories.jsonl", "selftext"),
}


def data_dir() -> Path:
    env = os.environ.get("GHOUL_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (path / "README.md").is_file():
        raise SystemExit(f"data not found at {path}: set GHOUL_DATA_DIR to the shared data folder")
    return path


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system, all threads) of one run of `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _timings(cmd: list[str], repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        timed(cmd)
    runs = [timed(cmd) for _ in range(repeats)]
    walls, cpus = sorted(w for w, _ in runs), sorted(c for _, c in runs)
    return {"median_s": walls[len(walls) // 2], "times_s": [w for w, _ in runs], "cpu_median_s": cpus[len(cpus) // 2]}


def run(corpus: str = "tinyshakespeare", vocab_size: int = VOCAB_SIZE, repeats: int = 1, warmup: int = 0) -> dict:
    """Training runs per second (whole processes, start-up included) of ghoul's BPE trainer against the Rust one.
    No warm-up by default: each run is a fresh process, and a cold start is what a user meets."""
    rel, field = CORPORA[corpus]
    path = data_dir() / rel
    with tempfile.TemporaryDirectory() as tmp:
        ours_cmd = [sys.executable, "-m", "ghoul", "tokenizer", "train", "--input", str(path), "--text-field", field,
                    "--vocab-size", str(vocab_size), "--pattern", "gpt2", "--no-progress", "--out", f"{tmp}/o.json"]
        hf_cmd = [sys.executable, "-c", HF_SCRIPT, str(path), field, str(vocab_size), f"{tmp}/hf.json"]
        ours, hf = _timings(ours_cmd, repeats, warmup), _timings(hf_cmd, repeats, warmup)
    mb = path.stat().st_size / 1e6
    return result(f"bpe-{corpus}", f"BPE training, {corpus} ({mb:.1f} MB), vocab {vocab_size}, gpt2 pattern, whole "
                  f"processes; {os.cpu_count()} CPUs (the Rust trainer uses them all, ghoul one)", "trainings/s",
                  side("ghoul tokenizer train", 1, ours), side("tokenizers BpeTrainer (Rust)", 1, hf),
                  f"python -m benchmarks.bench_bpe --corpus {corpus} --vocab-size {vocab_size} --repeats {repeats}",
                  ghoul_cpu_s=ours["cpu_median_s"], tokenizers_cpu_s=hf["cpu_median_s"],
                  cpu_ratio=hf["cpu_median_s"] / ours["cpu_median_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    for corpus in args.corpus:
        print(describe(run(corpus, args.vocab_size, args.repeats)))


if __name__ == "__main__":
    main()
