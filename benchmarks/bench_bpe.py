"""Time `ghoul tokenizer train` against Hugging Face `tokenizers`' Rust BPE trainer, each as a whole process.

Run as `python -m benchmarks.bench_bpe` (needs the shared data folder, GHOUL_DATA_DIR, and `tokenizers`).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def bench(name: str, path: Path, field: str, out_dir: Path) -> dict:
    ours_cmd = [sys.executable, "-m", "ghoul", "tokenizer", "train", "--input", str(path), "--text-field", field,
                "--vocab-size", str(VOCAB_SIZE), "--pattern", "gpt2", "--no-progress", "--out", str(out_dir / "o.json")]
    hf_cmd = [sys.executable, "-c", HF_SCRIPT, str(path), field, str(VOCAB_SIZE), str(out_dir / "hf.json")]
    (ours, ours_cpu), (hf, hf_cpu) = timed(ours_cmd), timed(hf_cmd)
    print(f"{name}: ghoul {ours:.2f} s, tokenizers (Rust) {hf:.2f} s, ratio {ours / hf:.2f}x wall-clock; "
          f"CPU time {ours_cpu:.2f} s vs {hf_cpu:.2f} s, ratio {ours_cpu / hf_cpu:.2f}x")
    print(f"  ghoul: {' '.join(ours_cmd)}")
    return {"corpus": name, "ghoul_s": ours, "hf_tokenizers_s": hf, "ratio": ours / hf,
            "ghoul_cpu_s": ours_cpu, "hf_tokenizers_cpu_s": hf_cpu}


def main() -> None:
    data = data_dir()
    print(f"BPE training, vocab {VOCAB_SIZE}, gpt2 pattern; whole processes, start-up included; one run each; "
          f"{os.cpu_count()} CPUs (the Rust trainer uses them all, ghoul one)")
    with tempfile.TemporaryDirectory() as tmp:
        bench("tiny shakespeare (1.1 MB)", data / "tinyshakespeare" / "input.txt", "text", Path(tmp))
        bench("reddit horror selftext (2.7 M chars)", data / "creepypasta" / "reddit_horror_stories.jsonl",
              "selftext", Path(tmp))


if __name__ == "__main__":
    main()
