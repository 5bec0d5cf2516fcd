"""Training-step throughput: ghoul's GPT against `transformers`' `GPT2LMHeadModel`, same config, batch and dtype,
and ghoul's bfloat16 and compiled steps against its own float32 eager step.

A step is forward, backward and a fused AdamW update. Reports tokens/s, achieved TFLOP/s and MFU where the device's
peak is known (see ghoul.dist.GPUS), and the ratio measured in this one run. ghoul's model is built as `ghoul
pretrain` builds it, its vocabulary padded to a multiple of 64 (`--no-pad-vocab`: the exact 50,257 rows).
Run: python -m benchmarks.bench_train [--presets small gpt2 --batch 4 --seq-len 256 --dtypes float32 bfloat16]
     python -m benchmarks.bench_train --presets small --compile
     python -m benchmarks.bench_train --presets small --profile [--compile]   (where the step's time goes)
"""

from __future__ import annotations

import argparse
import copy

import torch
import transformers

from benchmarks.timing import Unsupported, describe, measure_each, result, side
from ghoul import dist
from ghoul.model import GPT, GPTConfig, vocab_padding


def hf_model(config: GPTConfig) -> torch.nn.Module:
    hf = transformers.GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                                 n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                 attn_pdrop=0.0)
    hf._attn_implementation = "sdpa"
    return transformers.GPT2LMHeadModel(hf)


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str, device: str, is_hf: bool = False,
            compile: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if compile else model

    def step():
        with dist.autocast(device, dtype):
            loss = forward(input_ids=x, labels=x).loss if is_hf else forward(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dist.synchronize(device)
    return step


def setup(preset: str, batch: int, seq_len: int, device: str | None, pad_vocab: bool):
    device = device or dist.default_device()
    config = GPTConfig.from_name(preset, vocab_padding=vocab_padding(pad_vocab))
    seq_len = min(seq_len, config.block_size)
    torch.manual_seed(0)
    x = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    return device, config, seq_len, x, torch.roll(x, -1, 1)


def check_dtype(device: str, dtype: str) -> None:
    if dtype != "float32" and not dist.fast_bfloat16(device):
        raise Unsupported(f"this {device} has no native {dtype} matmuls (emulated: far slower than float32)")


def details(model: GPT, seq_len: int, tokens: int, timing: dict, device: str, dtype: str) -> dict:
    flops = model.flops_per_token(seq_len) * tokens / timing["median_s"]
    peak = dist.peak_flops(device, dtype)
    return {"device": device, "threads": torch.get_num_threads(), "tflops": flops / 1e12,
            "mfu": flops / peak if peak else None, "vocab_rows": model.config.padded_vocab_size,
            "transformers": transformers.__version__}


def run(preset: str = "small", batch: int = 4, seq_len: int = 256, dtype: str = "float32", repeats: int = 5,
        device: str | None = None, warmup: int = 2, pad_vocab: bool = True) -> dict:
    """Tokens/s of a training step, ghoul against transformers; raises Unsupported for a dtype this device emulates."""
    device, config, seq_len, x, y = setup(preset, batch, seq_len, device, pad_vocab)
    check_dtype(device, dtype)
    ours, theirs = GPT(config).to(device), hf_model(config).to(device)
    tokens = batch * seq_len
    t_ours, t_hf = measure_each([step_fn(ours, x, y, dtype, device), step_fn(theirs, x, y, dtype, device, True)],
                                repeats, warmup)
    flag = "" if pad_vocab else " --no-pad-vocab"
    return result(f"train-{preset}", f"training step, {preset} ({ours.num_params() / 1e6:.1f}M), {dtype}, "
                  f"batch {batch} x {seq_len} tokens, fused AdamW", "tokens/s",
                  side("ghoul GPT", tokens, t_ours), side("transformers GPT2LMHeadModel (sdpa)", tokens, t_hf),
                  f"python -m benchmarks.bench_train --presets {preset} --batch {batch} --seq-len {seq_len} "
                  f"--dtypes {dtype} --repeats {repeats}{flag}",
                  **details(ours, seq_len, tokens, t_ours, device, dtype))


def run_own(variant: str, preset: str = "small", batch: int = 4, seq_len: int = 256, repeats: int = 5,
            device: str | None = None, warmup: int = 2, pad_vocab: bool = True) -> dict:
    """ghoul's training step in bfloat16 (`variant="bfloat16"`) or compiled (`"compile"`) against its own float32
    eager step, on copies of one model."""
    device, config, seq_len, x, y = setup(preset, batch, seq_len, device, pad_vocab)
    dtype = "bfloat16" if variant == "bfloat16" else "float32"
    check_dtype(device, dtype)
    torch.manual_seed(0)
    base = GPT(config).to(device)
    fast = copy.deepcopy(base)
    tokens = batch * seq_len
    t_fast, t_base = measure_each([step_fn(fast, x, y, dtype, device, compile=variant == "compile"),
                                   step_fn(base, x, y, "float32", device)], repeats, warmup)
    name = "ghoul GPT, bfloat16 autocast" if variant == "bfloat16" else "ghoul GPT, torch.compile"
    return result(f"train-{preset}-{variant}", f"training step, {preset}, {name.split(', ')[1]} against float32 eager, "
                  f"batch {batch} x {seq_len} tokens", "tokens/s", side(name, tokens, t_fast),
                  side("ghoul GPT, float32 eager", tokens, t_base),
                  f"python -m benchmarks.bench_train --presets {preset} --batch {batch} --seq-len {seq_len} "
                  f"--{variant} --repeats {repeats}", **details(fast, seq_len, tokens, t_fast, device, dtype))


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def profile(preset: str = "small", batch: int = 4, seq_len: int = 256, compile: bool = False, steps: int = 3,
            device: str | None = None, pad_vocab: bool = True, top: int = 12) -> str:
    """Where ghoul's float32 training step spends its time: each operator's share of the self time of `steps` steps
    (after two warm-up steps), the matrix products summed first; what `--compile` can and cannot speed up."""
    from torch.profiler import profile as torch_profile

    device, config, seq_len, x, y = setup(preset, batch, seq_len, device, pad_vocab)
    torch.manual_seed(0)
    step = step_fn(GPT(config).to(device), x, y, "float32", device, compile=compile)
    for _ in range(2):
        step()
    with torch_profile() as prof:
        for _ in range(steps):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    matmul = sum(e.self_cpu_time_total for e in ops if e.key in MATMULS)
    per_step = total / steps / 1e3  # profiler times are in microseconds
    lines = [f"{preset}, batch {batch} x {seq_len}, {'compiled' if compile else 'eager'}: {per_step:,.0f} ms of "
             f"operator time per step, matrix products {matmul / total:.1%} ({per_step * matmul / total:,.0f} ms), "
             f"everything else {1 - matmul / total:.1%} ({per_step * (1 - matmul / total):,.0f} ms)"]
    lines += [f"  {e.self_cpu_time_total / total:6.1%}  {e.key[:70]} (x{e.count})" for e in ops[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "gpt2"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], help="steps against transformers")
    parser.add_argument("--bfloat16", action="store_true", help="instead: bfloat16 against ghoul's float32")
    parser.add_argument("--compile", action="store_true", help="instead: torch.compile against ghoul's eager step")
    parser.add_argument("--pad-vocab", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=dist.default_device())
    parser.add_argument("--profile", action="store_true", help="instead: each operator's share of ghoul's step "
                        "(with --compile: of the compiled step)")
    args = parser.parse_args()
    if args.profile:
        for preset in args.presets:
            print(profile(preset, args.batch, args.seq_len, args.compile, device=args.device,
                          pad_vocab=args.pad_vocab))
        return
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    variants = [v for v in ("bfloat16", "compile") if getattr(args, v)]
    for preset in args.presets:
        try:
            for variant in variants:
                print(describe(run_own(variant, preset, args.batch, args.seq_len, args.repeats, args.device,
                                       pad_vocab=args.pad_vocab)))
            for dtype in [] if variants else args.dtypes:
                print(describe(run(preset, args.batch, args.seq_len, dtype, args.repeats, args.device,
                                   pad_vocab=args.pad_vocab)))
        except Unsupported as e:
            print(f"{preset} skipped: {e}")


if __name__ == "__main__":
    main()
