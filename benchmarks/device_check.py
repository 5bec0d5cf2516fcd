"""One short run for a machine with a GPU: the CUDA paths the CPU suite cannot reach, and the GPU speed targets.

    python -m benchmarks.device_check [--out DIR]            # about 5-8 minutes on one H100

1. the tests that take a device, on CUDA (the fused output layer + loss in bfloat16 against F.cross_entropy);
2. MFU of `ghoul pretrain` itself, as a user runs it (bfloat16 autocast, --compile, vocabulary padded), for gpt2
   and gpt2-xl on synthetic GPT-2 token shards: the median of the logged MFU after the compiling steps (targets on
   an H100: 50% and 45%);
3. a one-process torchrun pretraining step over NCCL.
Prints a summary and writes device_check.json into --out. On a CPU (`--device cpu --presets tiny --steps 4`) it
checks itself in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ghoul import dist
from ghoul.data.shards import shard_name, write_shard
from ghoul.files import atomic_write_text, read_jsonl

# micro-batch per preset: what one 80 GB GPU holds in bf16 with AdamW (`ghoul plan --gpus 1 ...`)
BATCH = {"tiny": 8, "small": 16, "gpt2": 32, "gpt2-medium": 16, "gpt2-large": 8, "gpt2-xl": 8}


def synthetic_shards(directory: Path, tokens: int = 20_000_000) -> Path:
    """Uniformly random GPT-2 token ids as an llm.c shard (no meta.json: GPT-2's tokenizer): speed needs no text."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = np.random.default_rng(0).integers(0, 50257, tokens, dtype=np.uint16)
    write_shard(directory / shard_name("train", 0), ids)
    return directory


def run_tests() -> dict:
    """The tests parametrised over the devices present (cpu, and cuda where there is one)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_cross_entropy.py"],
                          capture_output=True, text=True)
    return {"passed": done.returncode == 0, "tail": done.stdout[-1500:] + done.stderr[-500:]}


def pretrain_mfu(preset: str, shards: Path, out: Path, device: str, steps: int, compile: bool) -> dict:
    from ghoul.train.stages import TrainConfig, run

    cfg = TrainConfig(dataset=str(shards), output_dir=out / preset, model=preset, batch_size=BATCH[preset],
                      seq_len=None if preset == "tiny" else 1024, max_steps=steps, eval_every=0,
                      dtype="bfloat16" if device.startswith("cuda") else "float32", compile=compile, device=device)
    started = time.perf_counter()
    run(cfg)
    records = [r for r in read_jsonl(out / preset / "log.jsonl") if "loss" in r]
    warm = records[len(records) // 2:]  # the first steps compile and warm the allocator
    mfu = [r["mfu"] for r in warm if "mfu" in r]
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in warm),
            "mfu": statistics.median(mfu) if mfu else None, "final_loss": records[-1]["loss"],
            "seconds": time.perf_counter() - started, "batch": BATCH[preset], "steps": steps}


def torchrun_step(shards: Path, out: Path, device: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "ghoul",
           "pretrain", "--dataset", str(shards), "--model", "tiny", "--max-steps", "3", "--eval-every", "0",
           "--batch-size", "4", "--output-dir", str(out / "torchrun"), "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return {"passed": done.returncode == 0, "tail": (done.stdout + done.stderr)[-1500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=dist.default_device())
    parser.add_argument("--presets", nargs="+", default=["gpt2", "gpt2-xl"], choices=list(BATCH))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    report: dict = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"device check on {name}, torch {torch.__version__}", flush=True)
    report["tests"] = run_tests()
    devices = "cpu, cuda" if torch.cuda.is_available() else "cpu"
    print(f"tests ({devices}): {'passed' if report['tests']['passed'] else 'FAILED'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        shards = synthetic_shards(Path(tmp) / "shards")
        for preset in args.presets:
            r = report[f"pretrain-{preset}"] = pretrain_mfu(preset, shards, Path(tmp), args.device, args.steps,
                                                            not args.no_compile)
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "unknown peak"
            print(f"pretrain {preset}: {r['tokens_per_s']:,.0f} tokens/s, MFU {mfu} ({r['seconds']:.0f} s)",
                  flush=True)
        report["torchrun"] = torchrun_step(shards, Path(tmp), args.device)
        print(f"torchrun ({'nccl' if args.device.startswith('cuda') else 'gloo'}): "
              f"{'passed' if report['torchrun']['passed'] else 'FAILED'}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "device_check.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'device_check.json'}")


if __name__ == "__main__":
    main()
