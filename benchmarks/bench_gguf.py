"""The default model exported with `ghoul export gguf`: the file's size for each dtype, and greedy tokens/s of
llama.cpp (llama-cpp-python, the f32 file) against ghoul's own KV-cache sampling of the same weights, on every core.

Same weights, same prompt, greedy, same number of new tokens, one process; the tokens must be identical.
Run: python -m benchmarks.bench_gguf [--preset laptop --vocab-size 4096 --new-tokens 128]
(needs the shared data folder, GHOUL_DATA_DIR, for the tokenizer's text, and `pip install -e '.[dev]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_bpe import CORPORA, data_dir
from benchmarks.timing import Unsupported, describe, measure_each, result, side
from ghoul.checkpoint import save_model_dir
from ghoul.gguf import DTYPES, export_gguf
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer.bpe import BPETokenizer

GGML_F32 = 0  # ggml_type of a float32 KV cache, as ghoul's


def story_tokenizer(vocab_size: int, docs: int = 300) -> BPETokenizer:
    """A BPE of `vocab_size` tokens trained on the first `docs` Reddit horror stories, as the default run has one."""
    path, field = CORPORA["reddit-horror"]
    with open(data_dir() / path, encoding="utf-8") as f:
        texts = [json.loads(line)[field] for line in islice(f, docs)]
    return BPETokenizer.train(texts, vocab_size)


def llama_cpp_greedy(llm, prompt: list[int], n: int) -> list[int]:
    """`n` greedy tokens after `prompt` in llama.cpp: prefill, then one token per decode, argmax of its logits."""
    llm.reset()
    llm.eval(prompt)
    new = []
    for _ in range(n):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    return new


def run(preset: str = "laptop", vocab_size: int = 4096, prompt_tokens: int = 16, new_tokens: int = 128,
        repeats: int = 3, warmup: int = 1) -> dict:
    """GGUF sizes per dtype, and greedy new tokens/s: ghoul's KV-cache generate against llama.cpp on the f32 GGUF."""
    try:
        import llama_cpp
    except ImportError as e:
        raise Unsupported("llama-cpp-python is not installed: pip install -e '.[dev]'") from e
    torch.manual_seed(0)
    tok = story_tokenizer(vocab_size)
    model = GPT(GPTConfig.from_name(preset, vocab_size=vocab_size)).eval()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(model, f"{tmp}/ghoul", tokenizer=tok)
        sizes = {dtype: export_gguf(f"{tmp}/ghoul", f"{tmp}/{dtype}.gguf", dtype).stat().st_size for dtype in DTYPES}
        sizes["safetensors"] = Path(f"{tmp}/ghoul/model.safetensors").stat().st_size  # ghoul's own, for scale
        llm = llama_cpp.Llama(model_path=f"{tmp}/f32.gguf", n_ctx=prompt_tokens + new_tokens, n_threads=threads,
                              n_threads_batch=threads, type_k=GGML_F32, type_v=GGML_F32, logits_all=True,
                              verbose=False)  # logits_all: llama-cpp-python keeps logits only then
    prompt = torch.randint(0, vocab_size, (1, prompt_tokens))

    def ghoul_cached():
        return model.generate(prompt, new_tokens, temperature=0)[0, prompt_tokens:].tolist()

    def llama_cpp_generate():
        return llama_cpp_greedy(llm, prompt[0].tolist(), new_tokens)

    same = ghoul_cached() == llama_cpp_generate()
    t_ghoul, t_llama = measure_each([ghoul_cached, llama_cpp_generate], repeats, warmup)
    ours = side("ghoul generate (KV cache, float32)", new_tokens, t_ghoul)
    peer = side("llama.cpp (llama-cpp-python, f32 GGUF)", new_tokens, t_llama)
    n_params = model.num_params()
    return result("gguf", f"greedy generation, {preset} ({n_params / 1e6:.1f}M, vocab {vocab_size:,}), batch 1, "
                  f"{prompt_tokens} prompt + {new_tokens} new tokens, {threads} threads each", "tokens/s", ours, peer,
                  f"python -m benchmarks.bench_gguf --preset {preset} --vocab-size {vocab_size} --prompt-tokens "
                  f"{prompt_tokens} --new-tokens {new_tokens} --repeats {repeats}",
                  identical_tokens=same, **{f"{kind}_mib": size / 2**20 for kind, size in sizes.items()},
                  threads=threads, llama_cpp=llama_cpp.__version__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="laptop")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe(run(args.preset, args.vocab_size, args.prompt_tokens, args.new_tokens, args.repeats)))


if __name__ == "__main__":
    main()
