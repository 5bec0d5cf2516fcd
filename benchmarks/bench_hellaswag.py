"""HellaSwag examples/s on the CPU: ghoul's batched scorer (right-padded rows, one forward per batch) against
one example at a time (its 4 rows per forward, as build-nanogpt scores), same model, same examples, same answers.

Run: python -m benchmarks.bench_hellaswag [--preset small --examples 32 --batch-size 16 --data-path FILE]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmarks.timing import median_seconds
from ghoul.eval.hellaswag import evaluate_hellaswag, load_hellaswag
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def default_path() -> Path:
    root = Path(os.environ["GHOUL_DATA_DIR"]) if "GHOUL_DATA_DIR" in os.environ else SHARED
    return root / "hellaswag" / "hellaswag_val.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-path", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(args.preset)).eval()
    tokenizer = load_tokenizer("gpt2")
    examples = load_hellaswag(args.data_path or default_path(), args.examples)

    def batched():
        return evaluate_hellaswag(model, tokenizer, examples, "cpu", batch_size=args.batch_size)

    def one_at_a_time():
        return evaluate_hellaswag(model, tokenizer, examples, "cpu", batch_size=1)

    same = batched()["examples"] == one_at_a_time()["examples"]
    rates = {name: len(examples) / median_seconds(fn, args.repeats, warmup=0)
             for name, fn in [("batched", batched), ("one at a time", one_at_a_time)]}
    print(f"preset {args.preset} ({model.num_params() / 1e6:.1f}M params), {len(examples)} HellaSwag examples, "
          f"batch {args.batch_size}, float32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"identical predictions: {same}")
    for name, rate in rates.items():
        print(f"{name:16s} {rate:8.2f} examples/s")
    print(f"ratio batched / one at a time: {rates['batched'] / rates['one at a time']:.2f}x")


if __name__ == "__main__":
    main()
