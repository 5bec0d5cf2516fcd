"""`ghoul generate`: sample text from a checkpoint (or a freshly initialised preset) with the KV-cache sampler."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ghoul import checkpoint as ckpt
from ghoul.config import option
from ghoul.dist import default_device
from ghoul.errors import GhoulError
from ghoul.files import atomic_write_text
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import Tokenizer, load_tokenizer


@dataclass
class GenerateConfig:
    checkpoint: Path | None = option(None, "model directory to sample from (default: a random --model preset)")
    model: str = option("tiny", "preset to initialise randomly when no --checkpoint is given")
    prompt: str = option("", "text to continue (empty: start from <|endoftext|>)")
    num_samples: int = option(1, "how many samples to draw")
    max_new_tokens: int = option(64, "tokens to generate per sample")
    temperature: float = option(1.0, "sampling temperature; 0 means greedy")
    top_k: int | None = option(None, "sample only from the k most likely tokens")
    top_p: float | None = option(None, "sample only from the smallest set of tokens holding this probability")
    seed: int = option(1337, "random seed: the same seed gives the same text")
    batch_size: int = option(8, "samples generated together")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    out: Path | None = option(None, "also write the samples as JSON lines to this file")

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise GhoulError("--num-samples, --max-new-tokens and --batch-size must be at least 1")
        if self.temperature < 0:
            raise GhoulError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise GhoulError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GhoulError(f"--top-p must be in (0, 1], got {self.top_p}")


def model_and_tokenizer(checkpoint: Path | None, preset: str, device: str, seed: int = 0
                             ) -> tuple[GPT, Tokenizer]:
    """A checkpoint with its tokenizer, or a randomly initialised preset with GPT-2's tokenizer."""
    if checkpoint is not None:
        return ckpt.load_model_and_tokenizer(checkpoint, device)
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name(preset)).to(device).eval(), load_tokenizer("gpt2")


def encode_prompt(tokenizer: Tokenizer, prompt: str, block_size: int) -> list[int]:
    """Token ids of `prompt` (or just <|endoftext|> when empty), checked against the model's context."""
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    if len(ids) >= block_size:
        raise GhoulError(f"the prompt is {len(ids)} tokens but the model's context is {block_size}: "
                         "shorten the prompt")
    return ids


def run(cfg: GenerateConfig) -> list[dict]:
    device = default_device() if cfg.device == "auto" else cfg.device
    model, tokenizer = model_and_tokenizer(cfg.checkpoint, cfg.model, device, cfg.seed)
    prompt_ids = encode_prompt(tokenizer, cfg.prompt, model.config.block_size)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    settings = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    records: list[dict] = []
    bar = tqdm(total=cfg.num_samples, desc="generating", unit="sample", disable=cfg.num_samples < 2, file=sys.stderr)
    while len(records) < cfg.num_samples:
        n = min(cfg.batch_size, cfg.num_samples - len(records))
        idx = torch.tensor([prompt_ids] * n, dtype=torch.long, device=device)
        out = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                             eos_id=tokenizer.eot_id, generator=generator)
        for row in out[:, len(prompt_ids):].tolist():
            if tokenizer.eot_id in row:
                row = row[:row.index(tokenizer.eot_id)]
            records.append(dict(id=len(records), prompt=cfg.prompt, text=tokenizer.decode(row),
                                checkpoint=str(cfg.checkpoint) if cfg.checkpoint else f"random:{cfg.model}",
                                sampling=settings, seed=cfg.seed))
        bar.update(n)
    bar.close()
    for r in records:
        print(f"--- sample {r['id']} ---\n{r['prompt']}{r['text']}")
    if cfg.out is not None:
        atomic_write_text(cfg.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"wrote {len(records)} samples to {cfg.out}", file=sys.stderr)
    return records
