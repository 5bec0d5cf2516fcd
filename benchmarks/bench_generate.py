"""Cached generation tokens/s: ghoul with and without its KV cache, against `transformers`' `generate`.

Same weights, greedy, same number of new tokens, one process; the tokens must be identical.
Run: python -m benchmarks.bench_generate [--preset small --new-tokens 128 --batch 1]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from benchmarks.timing import median_seconds
from ghoul.hf import export_hf
from ghoul.model import GPT, GPTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(f"{tmp}/ghoul")
        export_hf(f"{tmp}/ghoul", f"{tmp}/hf")
        hf = transformers.GPT2LMHeadModel.from_pretrained(f"{tmp}/hf").eval()
    idx = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_tokens))
    n = args.new_tokens

    def ghoul_cached():
        return model.generate(idx, n, temperature=0)

    def ghoul_plain():
        return model.generate(idx, n, temperature=0, use_cache=False)

    def hf_generate():
        with torch.inference_mode():
            return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)

    same = torch.equal(ghoul_cached(), hf_generate()) and torch.equal(ghoul_cached(), ghoul_plain())
    new_tokens = args.batch * n
    rows = {name: new_tokens / median_seconds(fn, args.repeats)
            for name, fn in [("ghoul cached", ghoul_cached), ("ghoul no cache", ghoul_plain),
                             ("transformers generate", hf_generate)]}
    print(f"preset {args.preset}, batch {args.batch}, {args.prompt_tokens} prompt + {n} new tokens, greedy, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"identical tokens: {same}")
    for name, tps in rows.items():
        print(f"{name:24s} {tps:10.1f} tokens/s")
    print(f"ratio ghoul cached / transformers: {rows['ghoul cached'] / rows['transformers generate']:.2f}x")
    print(f"ratio ghoul cached / ghoul no cache: {rows['ghoul cached'] / rows['ghoul no cache']:.2f}x")


if __name__ == "__main__":
    main()
