"""Training-step throughput: ghoul's GPT against `transformers`' `GPT2LMHeadModel`, same config, batch and dtype.

A step is forward, backward and a fused AdamW update. Reports tokens/s, achieved TFLOP/s and MFU where the device's
peak is known (see ghoul.dist.PEAK_BF16_FLOPS), and the ratios measured in this one run.
Run: python -m benchmarks.bench_train [--presets small gpt2 --batch 4 --seq-len 256 --dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse

import torch
import transformers

from benchmarks.timing import median_seconds
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["small", "gpt2"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=dist.default_device())
    args = parser.parse_args()
    device = args.device
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, batch {args.batch} x {args.seq_len} tokens")
    header = ["preset".ljust(8), "dtype".ljust(9), "ghoul tok/s".rjust(12), "hf tok/s".rjust(10), "ratio".rjust(6),
              "TFLOP/s".rjust(8), "MFU".rjust(6)]
    print(" ".join(header))
    for preset in args.presets:
        config = GPTConfig.from_name(preset)
        seq_len = min(args.seq_len, config.block_size)
        torch.manual_seed(0)
        ours, theirs = GPT(config).to(device), hf_model(config).to(device)
        x = torch.randint(0, config.vocab_size, (args.batch, seq_len), device=device)
        y = torch.roll(x, -1, 1)
        tokens = args.batch * seq_len
        own_f32 = None
        for dtype in args.dtypes:
            if dtype != "float32" and not dist.fast_bfloat16(device):
                print(f"{preset:8s} {dtype:9s} skipped: this {device} has no native {dtype} matmuls")
                continue
            t_ours = median_seconds(step_fn(ours, x, y, dtype, device, False), args.repeats, warmup=2)
            t_hf = median_seconds(step_fn(theirs, x, y, dtype, device, True), args.repeats, warmup=2)
            flops = ours.flops_per_token(seq_len) * tokens / t_ours
            peak = dist.peak_flops(device, dtype)
            mfu = f"{flops / peak:6.1%}" if peak else "   n/a"
            print(f"{preset:8s} {dtype:9s} {tokens / t_ours:12,.0f} {tokens / t_hf:10,.0f} "
                  f"{t_hf / t_ours:5.2f}x {flops / 1e12:8.3f} {mfu}")
            if dtype == "float32":
                own_f32 = t_ours
            elif own_f32 is not None:
                print(f"{'':18s} ghoul {dtype} / ghoul float32: {own_f32 / t_ours:.2f}x")


if __name__ == "__main__":
    main()
