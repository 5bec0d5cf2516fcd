"""Training-step throughput: ghoul's GPT against `transformers`' `GPT2LMHeadModel`, same config, batch and dtype.

A step is forward, backward and a fused AdamW update. Reports tokens/s, achieved TFLOP/s and MFU where the device's
peak is known (see ghoul.dist.GPUS), and the ratio measured in this one run.
Run: python -m benchmarks.bench_train [--presets small gpt2 --batch 4 --seq-len 256 --dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse

import torch
import transformers

from benchmarks.timing import describe, measure, result, side
from ghoul import dist
from ghoul.model import GPT, GPTConfig


def hf_model(config: GPTConfig) -> torch.nn.Module:
    hf = transformers.GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                                 n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                 attn_pdrop=0.0)
    hf._attn_implementation = "sdpa"
    return transformers.GPT2LMHeadModel(hf)


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str, device: str, is_hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with dist.autocast(device, dtype):
            loss = model(input_ids=x, labels=x).loss if is_hf else model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return step


def run(preset: str = "small", batch: int = 4, seq_len: int = 256, dtype: str = "float32", repeats: int = 5,
        device: str | None = None, warmup: int = 2) -> dict:
    """Tokens/s of a training step, ghoul against transformers; raises ValueError for a dtype this device emulates."""
    device = device or dist.default_device()
    if dtype != "float32" and not dist.fast_bfloat16(device):
        raise ValueError(f"this {device} has no native {dtype} matmuls")
    config = GPTConfig.from_name(preset)
    seq_len = min(seq_len, config.block_size)
    torch.manual_seed(0)
    ours, theirs = GPT(config).to(device), hf_model(config).to(device)
    x = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    y = torch.roll(x, -1, 1)
    tokens = batch * seq_len
    t_ours = measure(step_fn(ours, x, y, dtype, device, False), repeats, warmup)
    t_hf = measure(step_fn(theirs, x, y, dtype, device, True), repeats, warmup)
    flops = ours.flops_per_token(seq_len) * tokens / t_ours["median_s"]
    peak = dist.peak_flops(device, dtype)
    details = {"device": device, "threads": torch.get_num_threads(), "tflops": flops / 1e12,
               "mfu": flops / peak if peak else None, "transformers": transformers.__version__}
    return result(f"train-{preset}", f"training step, {preset} ({ours.num_params() / 1e6:.1f}M), {dtype}, "
                  f"batch {batch} x {seq_len} tokens, fused AdamW", "tokens/s",
                  side("ghoul GPT", tokens, t_ours), side("transformers GPT2LMHeadModel (sdpa)", tokens, t_hf),
                  f"python -m benchmarks.bench_train --presets {preset} --batch {batch} --seq-len {seq_len} "
                  f"--dtypes {dtype} --repeats {repeats}", **details)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["small", "gpt2"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=dist.default_device())
    args = parser.parse_args()
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    for preset in args.presets:
        own_f32 = None
        for dtype in args.dtypes:
            try:
                r = run(preset, args.batch, args.seq_len, dtype, args.repeats, args.device)
            except ValueError as e:
                print(f"{preset} {dtype} skipped: {e}")
                continue
            print(describe(r))
            if dtype == "float32":
                own_f32 = r["ours"]["median_s"]
            elif own_f32 is not None:
                print(f"  ghoul {dtype} / ghoul float32: {own_f32 / r['ours']['median_s']:.2f}x")


if __name__ == "__main__":
    main()
