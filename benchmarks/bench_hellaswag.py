"""HellaSwag examples/s on the CPU: ghoul's batched scorer (right-padded rows, one forward per batch) against
one example at a time (its 4 rows per forward, as build-nanogpt scores), same model, same examples, same answers.

Run: python -m benchmarks.bench_hellaswag [--preset small --examples 32 --batch-size 16 --data-path FILE]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmarks.timing import describe, measure_each, result, side
from ghoul.eval.hellaswag import evaluate_hellaswag, load_hellaswag
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def default_path() -> Path:
    root = Path(os.environ["GHOUL_DATA_DIR"]) if "GHOUL_DATA_DIR" in os.environ else SHARED
    return root / "hellaswag" / "hellaswag_val.jsonl"


def run(preset: str = "small", examples: int = 32, batch_size: int = 16, repeats: int = 3,
        data_path: Path | None = None) -> dict:
    """Examples/s of HellaSwag scoring, batched against one example at a time."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset)).eval()
    tokenizer = load_tokenizer("gpt2")
    items = load_hellaswag(data_path or default_path(), examples)

    def batched():
        return evaluate_hellaswag(model, tokenizer, items, "cpu", batch_size=batch_size)

    def one_at_a_time():
        return evaluate_hellaswag(model, tokenizer, items, "cpu", batch_size=1)

    same = batched()["examples"] == one_at_a_time()["examples"]  # also the warm-up of both sides
    t_batched, t_single = measure_each([batched, one_at_a_time], repeats, warmup=0)
    ours = side(f"ghoul batched (batch {batch_size})", len(items), t_batched)
    peer = side("one example at a time", len(items), t_single)
    return result("hellaswag", f"HellaSwag scoring, {preset} ({model.num_params() / 1e6:.1f}M), {len(items)} "
                  "examples, float32", "examples/s", ours, peer,
                  f"python -m benchmarks.bench_hellaswag --preset {preset} --examples {examples} "
                  f"--batch-size {batch_size} --repeats {repeats}",
                  identical_predictions=same, threads=torch.get_num_threads())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-path", type=Path, default=None)
    args = parser.parse_args()
    print(describe(run(args.preset, args.examples, args.batch_size, args.repeats, args.data_path)))


if __name__ == "__main__":
    main()
