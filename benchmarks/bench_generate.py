"""Cached generation tokens/s: ghoul with and without its KV cache, against `transformers`' `generate`.

Same weights, greedy, same number of new tokens, one process; the tokens must be identical.
Run: python -m benchmarks.bench_generate [--preset small --new-tokens 128 --batch 1]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from benchmarks.timing import describe, measure_each, result, side
from ghoul.checkpoint import save_model_dir
from ghoul.hf import export_hf
from ghoul.model import GPT, GPTConfig


def run(preset: str = "small", prompt_tokens: int = 16, new_tokens: int = 128, batch: int = 1,
        repeats: int = 3) -> dict:
    """New tokens/s of greedy generation: ghoul with its KV cache against transformers' generate."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(model, f"{tmp}/ghoul")
        export_hf(f"{tmp}/ghoul", f"{tmp}/hf")
        hf = transformers.GPT2LMHeadModel.from_pretrained(f"{tmp}/hf").eval()
    idx = torch.randint(0, model.config.vocab_size, (batch, prompt_tokens))
    n = new_tokens

    def ghoul_cached():
        return model.generate(idx, n, temperature=0)

    def ghoul_plain():
        return model.generate(idx, n, temperature=0, use_cache=False)

    def hf_generate():
        with torch.inference_mode():
            return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)

    same = torch.equal(ghoul_cached(), hf_generate()) and torch.equal(ghoul_cached(), ghoul_plain())
    work = batch * n
    t_cached, t_hf, t_plain = measure_each([ghoul_cached, hf_generate, ghoul_plain], repeats)
    ours = side("ghoul generate (KV cache)", work, t_cached)
    peer = side("transformers generate", work, t_hf)
    plain = side("ghoul generate (no cache)", work, t_plain)
    return result("generate", f"greedy generation, {preset}, batch {batch}, {prompt_tokens} prompt + {n} new tokens",
                  "tokens/s", ours, peer,
                  f"python -m benchmarks.bench_generate --preset {preset} --prompt-tokens {prompt_tokens} "
                  f"--new-tokens {n} --batch {batch} --repeats {repeats}",
                  identical_tokens=same, no_cache_tokens_per_s=plain["rate"],
                  cached_over_no_cache=ours["rate"] / plain["rate"], threads=torch.get_num_threads(),
                  transformers=transformers.__version__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe(run(args.preset, args.prompt_tokens, args.new_tokens, args.batch, args.repeats)))


if __name__ == "__main__":
    main()
