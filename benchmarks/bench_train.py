"""Training-step throughput: ghoul's GPT against `transformers`' `GPT2LMHeadModel`, same config, batch and dtype,
and ghoul's bfloat16 and compiled steps against its own float32 eager step, and the default run's step on the CPU
against its linear layers' matrix products run alone (`cpu-default`).

A step is forward, backward and a fused AdamW update. Reports tokens/s, achieved TFLOP/s and MFU where the device's
peak is known (see ghoul.dist.GPUS), and the ratio measured in this one run. ghoul's model is built as `ghoul
pretrain` builds it, its vocabulary padded to a multiple of 64 (`--no-pad-vocab`: the exact 50,257 rows).
Run: python -m benchmarks.bench_train [--presets small gpt2 --batch 4 --seq-len 256 --dtypes float32 bfloat16]
     python -m benchmarks.bench_train --presets small --compile
     python -m benchmarks.bench_train --cpu-default   (the default run's step against its matrix products alone)
     python -m benchmarks.bench_train --presets small --profile [--compile]   (where the step's time goes)
     python -m benchmarks.bench_train --cpu-default --profile [--compile]     (... in the default run's step)
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import transformers

from benchmarks.timing import Unsupported, describe, measure_each, result, side
from ghoul import dist
from ghoul.model import GPT, GPTConfig, vocab_padding
from ghoul.pipeline import PipelineConfig
from ghoul.train.loop import compile_blocks


def hf_model(config: GPTConfig) -> torch.nn.Module:
    hf = transformers.GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                                 n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                 attn_pdrop=0.0)
    hf._attn_implementation = "sdpa"
    return transformers.GPT2LMHeadModel(hf)


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str, device: str, is_hf: bool = False,
            compile: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = compile_blocks(model) if compile and not is_hf else model  # as ghoul's trainer compiles

    def step():
        with dist.autocast(device, dtype):
            loss = forward(input_ids=x, labels=x).loss if is_hf else forward(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dist.synchronize(device)
    return step


def setup(preset: str, batch: int, seq_len: int, device: str | None, pad_vocab: bool, vocab_size: int | None = None,
          **overrides):
    device = device or dist.default_device()
    vocab = {"vocab_size": vocab_size} if vocab_size else {}
    config = GPTConfig.from_name(preset, vocab_padding=vocab_padding(pad_vocab), **vocab, **overrides)
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


def linear_products(model: torch.nn.Module, rows: int, dtype: str, device: str) -> tuple[Callable[[], None], float]:
    """The matrix products of a training step's linear layers alone, in `dtype`, and their FLOPs: for every layer
    (rows, in) x (in, out) forward, then the input's and the weight's gradients, as backward computes them."""
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kind = dist.DTYPES[dtype]
    tensors = {(k, n): [torch.randn(*size, dtype=kind, device=device) for size in ((rows, k), (k, n), (rows, n))]
               for k, n in set(shapes)}

    def products() -> None:
        for shape in shapes:
            x, w, dy = tensors[shape]
            x @ w, dy @ w.T, x.T @ dy  # (rows, out), (rows, in), (in, out)
        dist.synchronize(device)
    return products, 3 * 2 * rows * sum(k * n for k, n in shapes)


def run_default(repeats: int = 5, warmup: int = 2, batch: int | None = None, seq_len: int | None = None,
                device: str = "cpu", width: int | None = None) -> dict:
    """The default run's training step (`ghoul pipeline`'s model preset, own vocabulary, batch and rows; fused AdamW)
    in float32 and, where the CPU has it natively, bfloat16 autocast, each compiled where the trainer's default
    compiles it (dist.resolve_compile: bfloat16 with a C++ compiler), against its linear layers' matrix products
    alone in the same dtype: the share of the matmul rate the whole step reaches, and what bfloat16 gains. `width`
    widens the model (heads of 64), to see how both grow with the share of the step the products take."""
    default = PipelineConfig
    wider = {"n_embd": width, "n_head": width // 64} if width else {}
    device, config, seq_len, x, y = setup(default.model, batch or default.batch_size, seq_len or default.seq_len,
                                          device, True, default.vocab_size, **wider)
    batch, tokens = x.size(0), x.numel()
    dtypes = ["float32", "bfloat16"] if dist.fast_bfloat16(device) else ["float32"]
    torch.manual_seed(0)
    base = GPT(config).to(device)
    fns, sides = [], []
    for dtype in dtypes:
        model = copy.deepcopy(base)
        products, flops = linear_products(model, tokens, dtype, device)
        compiled = dist.resolve_compile(None, dist.DistInfo(device=device), dtype, True, default.pretrain_steps)
        fns += [step_fn(model, x, y, dtype, device, compile=compiled), products]
        sides += [(f"training step, {dtype}" + (", compiled" if compiled else ""),
                   model.flops_per_token(seq_len) * tokens / 1e9),
                  (f"its matrix products alone, {dtype}", flops / 1e9)]
    timings = measure_each(fns, repeats, warmup)
    (step, matmul, *bf16) = [side(name, work, t) for (name, work), t in zip(sides, timings, strict=True)]
    more = {"tokens_per_s": tokens / step["median_s"], "target_share": 0.7}  # issue 17: >= 70% of the matmul rate
    if bf16:
        step16, matmul16 = bf16
        more.update(bfloat16_compiled=step16["name"].endswith("compiled"),
                    bfloat16_tokens_per_s=tokens / step16["median_s"], bfloat16_gflops=step16["rate"],
                    bfloat16_matmul_gflops=matmul16["rate"], bfloat16_share=step16["rate"] / matmul16["rate"],
                    bfloat16_speedup=step["median_s"] / step16["median_s"], target_speedup=2.0)  # issue 17
    model = f"{default.model} at width {width}" if width else default.model
    return result(f"cpu-default-{width}" if width else "cpu-default", f"training step of the default run, {model} "
                  f"({base.num_params() / 1e6:.1f}M, vocab {config.vocab_size:,}), batch {batch} x {seq_len}, fused "
                  f"AdamW, against its linear layers' matrix products alone", "GFLOP/s", step, matmul,
                  f"python -m benchmarks.bench_train --cpu-default --batch {batch} --seq-len {seq_len} "
                  f"--repeats {repeats}" + (f" --width {width}" if width else ""), device=device,
                  threads=torch.get_num_threads(),
                  cpu_bfloat16=dist.fast_bfloat16(device), **more)


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def profile(preset: str = "small", batch: int = 4, seq_len: int = 256, compile: bool = False, steps: int = 3,
            device: str | None = None, pad_vocab: bool = True, top: int = 12, vocab_size: int | None = None) -> str:
    """Where ghoul's float32 training step spends its time: each operator's share of the self time of `steps` steps
    (after two warm-up steps), the matrix products summed first; what `--compile` can and cannot speed up."""
    from torch.profiler import profile as torch_profile

    device, config, seq_len, x, y = setup(preset, batch, seq_len, device, pad_vocab, vocab_size)
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
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: 4; with --cpu-default, the "
                        "default run's)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: 256; with --cpu-default, "
                        "the default run's)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], help="steps against transformers")
    parser.add_argument("--bfloat16", action="store_true", help="instead: bfloat16 against ghoul's float32")
    parser.add_argument("--compile", action="store_true", help="instead: torch.compile against ghoul's eager step")
    parser.add_argument("--pad-vocab", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=dist.default_device())
    parser.add_argument("--profile", action="store_true", help="instead: each operator's share of ghoul's step "
                        "(with --compile: of the compiled step; with --cpu-default: of the default run's step)")
    parser.add_argument("--cpu-default", action="store_true", help="instead: the default run's step on the CPU "
                        "against its matrix products alone, float32 and (where native) bfloat16")
    parser.add_argument("--width", type=int, default=None, help="with --cpu-default: the model this wide (heads of "
                        "64; issue 17 set its targets at width 384)")
    args = parser.parse_args()
    if args.cpu_default and args.profile:
        default = PipelineConfig
        print(profile(default.model, args.batch or default.batch_size, args.seq_len or default.seq_len, args.compile,
                      device="cpu", vocab_size=default.vocab_size))
        return
    if args.cpu_default:
        print(describe(run_default(args.repeats, batch=args.batch, seq_len=args.seq_len, width=args.width)))
        return
    args.batch, args.seq_len = args.batch or 4, args.seq_len or 256
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
