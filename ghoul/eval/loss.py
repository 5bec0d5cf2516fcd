"""`ghoul eval loss`: the mean next-token loss of a checkpoint on the validation shards of a prepared data directory,
in nats per token and in bits per byte (which compare across tokenizers).

The split is cut into consecutive, non-overlapping windows of `seq_len + 1` tokens (inputs and shifted targets),
as training reads it; under torchrun the windows are dealt out to the ranks and the sums all-reduced.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ghoul.checkpoint import load_model_and_tokenizer
from ghoul.config import option, require
from ghoul.data.shards import check_data_tokenizer, find_shards, read_shard
from ghoul.dist import DTYPES, all_reduce_sum, autocast, started
from ghoul.errors import GhoulError
from ghoul.eval import unwrap
from ghoul.tokenizer import Tokenizer


@dataclass
class LossConfig:
    checkpoint: Path = option(help="model directory to evaluate")
    data: Path = option(help="token shard directory made by `ghoul prepare` (--split picks the split read)")
    split: str = option("val", "which split's shards to read", choices=["val", "train"])
    tokens: int | None = option(10 * 2**20, "evaluate at most this many tokens (all of the split if it is shorter)")
    batch_size: int = option(8, "sequences per forward pass")
    seq_len: int | None = option(None, "tokens per sequence (default: the model's block size)")
    dtype: str = option("float32", "forward-pass precision (bfloat16/float16 via autocast)", choices=list(DTYPES))
    device: str = option("auto", "cpu, cuda, mps, or auto")

    def __post_init__(self) -> None:
        require(self, ("tokens", "batch_size", "seq_len"), lambda v: v >= 1, "at least 1")


def read_split(directory: str | Path, split: str = "val") -> list[np.ndarray]:
    """The token arrays (memory-mapped) of a split's shards: the one place that knows the shard format's reader."""
    return [read_shard(path) for path in find_shards(directory, split)]


def windows(shards: list[np.ndarray], seq_len: int, max_tokens: int | None) -> list[tuple[int, int]]:
    """(shard, offset) of each `seq_len + 1`-token window, shard by shard, up to `max_tokens` predicted tokens."""
    spans = ((s, offset) for s, tokens in enumerate(shards) for offset in range(0, len(tokens) - seq_len, seq_len))
    return list(islice(spans, None if max_tokens is None else max_tokens // seq_len))


def target_bytes(byte_lengths: np.ndarray, targets: np.ndarray | torch.Tensor) -> int:
    """UTF-8 bytes of the text that `targets` spell, special tokens none (`byte_lengths`: the tokenizer's
    `token_byte_lengths()`)."""
    if isinstance(targets, torch.Tensor):
        targets = targets.cpu().numpy()
    return int(byte_lengths[targets].sum())


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """A mean loss in nats per token as bits per byte of the text the tokens spell: unlike nats per token it does
    not depend on how finely the tokenizer cuts the text (nanochat reports its validation loss so, as did the Pile
    paper, Gao et al. 2020)."""
    return loss / math.log(2) / bytes_per_token


def check_window(seq_len: int, max_tokens: int | None, block_size: int) -> None:
    """A window the model can read, and a token budget of at least one window (one-line errors)."""
    if seq_len > block_size:
        raise GhoulError(f"--seq-len {seq_len} exceeds the model's block size {block_size}")
    if max_tokens is not None and max_tokens < seq_len:
        raise GhoulError(f"{max_tokens} tokens to score are fewer than one window of {seq_len}: score at least "
                         f"{seq_len} (--tokens; in the pipeline, --eval-tokens)")


def evaluate_loss(model: torch.nn.Module, shards: list[np.ndarray], device: str | torch.device, seq_len: int,
                  batch_size: int = 8, max_tokens: int | None = None, rank: int = 0, world_size: int = 1,
                  dtype: str = "float32", progress: bool = False, tokenizer: Tokenizer | None = None
                  ) -> dict[str, Any]:
    """Mean cross-entropy over up to `max_tokens` predicted tokens of `shards`: `{"loss", "tokens"}`, and with the
    shards' `tokenizer` also `"bpb"` (bits per byte) and `"bytes_per_token"` of those tokens."""
    gpt = unwrap(model)
    check_window(seq_len, max_tokens, gpt.config.block_size)
    spans = windows(shards, seq_len, max_tokens)
    if not spans:
        raise GhoulError(f"the split holds {sum(len(s) for s in shards)} tokens: too few for one window of "
                         f"{seq_len + 1}; lower --seq-len")
    mine = spans[rank::world_size]
    lengths = tokenizer.token_byte_lengths() if tokenizer is not None else None
    total, count, n_bytes = 0.0, 0, 0
    was_training = gpt.training
    gpt.eval()
    with tqdm(total=len(mine) * seq_len, desc="val loss", unit="tok", unit_scale=True,
              disable=not progress or rank != 0, file=sys.stderr) as bar:
        for i in range(0, len(mine), batch_size):
            batch = np.stack([shards[s][o:o + seq_len + 1] for s, o in mine[i:i + batch_size]]).astype(np.int64)
            if batch.max() >= gpt.config.vocab_size:
                raise GhoulError(f"token id {batch.max()} in the data is beyond the model's vocabulary of "
                                 f"{gpt.config.vocab_size}: the data was made with another tokenizer")
            xy = torch.from_numpy(batch).to(device)
            x, y = xy[:, :-1], xy[:, 1:].contiguous()  # (B, T) inputs and next-token targets
            with torch.no_grad(), autocast(device, dtype):
                _, loss = gpt(x, y)
            total += loss.item() * y.numel()  # .item() syncs, once per batch
            count += y.numel()
            if lengths is not None:
                n_bytes += target_bytes(lengths, batch[:, 1:])
            bar.update(y.numel())
    gpt.train(was_training)
    total, count, n_bytes = all_reduce_sum([total, count, n_bytes], device)
    result = {"loss": total / count, "tokens": int(count)}
    if lengths is not None:
        result.update(bpb=bits_per_byte(result["loss"], n_bytes / count), bytes_per_token=n_bytes / count)
    return result


def loss_record(result: dict[str, Any]) -> dict[str, Any]:
    """evaluate_loss's result as the fields of an evaluation record (pipeline, eval checkpoints)."""
    return {"val_loss": result["loss"], "val_bpb": result["bpb"], "val_bytes_per_token": result["bytes_per_token"],
            "val_tokens": result["tokens"]}


def run(cfg: LossConfig) -> dict[str, Any]:
    with started(cfg.device) as d:
        model, tokenizer = load_model_and_tokenizer(cfg.checkpoint, d.device)
        check_data_tokenizer(cfg.data, tokenizer, cfg.checkpoint)
        seq_len = cfg.seq_len or model.config.block_size
        result = evaluate_loss(model, read_split(cfg.data, cfg.split), d.device, seq_len, cfg.batch_size, cfg.tokens,
                               d.rank, d.world_size, dtype=cfg.dtype, progress=True, tokenizer=tokenizer)
        if d.is_main:
            print(f"{cfg.split} loss {cfg.checkpoint}: {result['loss']:.4f} "
                  f"(perplexity {math.exp(result['loss']):.2f}), {result['bpb']:.4f} bits per byte "
                  f"({result['bytes_per_token']:.2f} bytes per token) over {result['tokens']:,} tokens of {cfg.data}")
        return result
