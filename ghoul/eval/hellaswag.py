"""`ghoul eval hellaswag`: HellaSwag accuracy of a base model, the way llm.c and build-nanogpt score it.

Each example is its context followed by each of its 4 endings; the ending with the lowest mean loss over its own
tokens is the prediction (`acc_norm`); `acc` uses the summed loss instead. Batched rows are right-padded.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ghoul.checkpoint import check_vocab, load_model_and_tokenizer
from ghoul.config import option, require
from ghoul.dist import DTYPES, all_gather_objects, all_reduce_sum, autocast, barrier, started
from ghoul.download import cache_dir, download
from ghoul.errors import GhoulError
from ghoul.eval import unwrap
from ghoul.files import atomic_write_text, refuse_input_as_output, refuse_to_replace, text_lines
from ghoul.layout import resolve_checkpoint
from ghoul.model import GPT
from ghoul.tokenizer import Tokenizer

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
SHA256 = "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"  # of the official 10,042-example file
FILE_NAME = "hellaswag_val.jsonl"
N_ENDINGS = 4


@dataclass
class HellaswagConfig:
    checkpoint: Path = option(help="model directory to evaluate")
    data_path: Path | None = option(None, "HellaSwag jsonl file (default: $GHOUL_DATA_DIR/hellaswag/, else "
                                          "~/.cache/ghoul/hellaswag/, downloaded once from the official repository)")
    limit: int | None = option(None, "score only the first N examples of the file")
    batch_size: int = option(16, "examples per forward pass (4 rows each)")
    dtype: str = option("float32", "forward-pass precision (bfloat16/float16 via autocast)", choices=list(DTYPES))
    device: str = option("auto", "cpu, cuda, mps, or auto")
    out: Path | None = option(None, "write acc, acc_norm, n and the per-example predictions to this JSON file")

    def __post_init__(self) -> None:
        require(self, ("batch_size", "limit"), lambda v: v >= 1, "at least 1")
        if self.out is not None:
            refuse_input_as_output(self.out, resolve_checkpoint(self.checkpoint), self.data_path)
            refuse_to_replace(self.out, ("acc", "acc_norm", "n"))


# ---- the data file -------------------------------------------------------------------------------------------------

def default_data_path() -> Path:
    """$GHOUL_DATA_DIR/hellaswag/hellaswag_val.jsonl when that exists, else the user's cache (downloaded if missing).
    Under torchrun every rank calls it: local rank 0 of each node downloads while the others wait, then all read."""
    env = os.environ.get("GHOUL_DATA_DIR")
    if env and (Path(env) / "hellaswag" / FILE_NAME).is_file():
        return Path(env) / "hellaswag" / FILE_NAME
    dest = cache_dir() / "hellaswag" / FILE_NAME
    hint = (f"download it and give its path (--data-path; in training, --hellaswag-path), or set GHOUL_DATA_DIR to a "
            f"folder holding hellaswag/{FILE_NAME}")
    failed = None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            download(URL, dest, SHA256, hint)
        except GhoulError as e:  # reach the barrier all the same: the others must not wait for a file never coming
            failed = e
    barrier()
    if failed is not None:
        raise failed
    if not dest.is_file():
        raise GhoulError(f"{dest} is missing: local rank 0 could not download it; {hint}")
    return dest


def load_hellaswag(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` examples (all by default) of an official-schema jsonl file, checked, as
    `{"index", "ctx", "endings", "label"}` records (index = position in the file)."""
    path = Path(path)
    lines = text_lines(path, "HellaSwag file", f"give the path of the official {FILE_NAME}, or leave the option out "
                       "to use the default")
    examples: list[dict[str, Any]] = []
    for line_no, line in enumerate(lines, start=1):
        if limit is not None and len(examples) >= limit:
            break
        if line.strip():
            examples.append(_parse_example(line, f"{path}, line {line_no}", len(examples)))
    if not examples:
        raise GhoulError(f"{path} holds no examples")
    return examples


def _parse_example(line: str, where: str, index: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise GhoulError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("ctx"), str):
        raise GhoulError(f"{where}: expected an object with a 'ctx' string (the HellaSwag schema)")
    endings = record.get("endings")
    if not (isinstance(endings, list) and len(endings) == N_ENDINGS and all(isinstance(e, str) for e in endings)):
        raise GhoulError(f"{where}: 'endings' must be a list of {N_ENDINGS} strings")
    label = record.get("label")
    if isinstance(label, str) and label.isdigit():  # the Hugging Face copy stores labels as strings
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < N_ENDINGS:
        raise GhoulError(f"{where}: label {record.get('label')!r} is out of range: it must be 0-{N_ENDINGS - 1}")
    return {"index": index, "ctx": record["ctx"], "endings": endings, "label": label}


# ---- scoring -------------------------------------------------------------------------------------------------------

def render_example(tokenizer: Tokenizer, example: dict[str, Any], block_size: int) -> list[tuple[list[int], int]]:
    """The 4 rows of an example as (tokens, index of the ending's first token); endings are encoded as " " + ending
    (GPT-2's convention) and contexts too long for the model are cropped from the left."""
    try:
        ctx = tokenizer.encode(example["ctx"]) or [tokenizer.eot_id]
        ends = tokenizer.encode_batch([" " + e for e in example["endings"]])
    except GhoulError as e:  # a char tokenizer knows only its training text's characters
        raise GhoulError(f"HellaSwag example {example['index']} cannot be encoded: {e}; score HellaSwag with a model "
                         "whose tokenizer takes any text (a byte-level BPE)") from None
    rows = []
    for end in ends:
        keep = max(block_size - len(end), 1)  # at least one context token, so the ending's first token is predicted
        tokens = (ctx[-keep:] + end)[-block_size:]
        rows.append((tokens, max(len(tokens) - len(end), 1)))
    return rows


def ending_losses(model: GPT, rows: list[tuple[list[int], int]], device: str | torch.device,
                  dtype: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    """(summed, mean) cross-entropy over each row's ending tokens, one forward for all rows (right-padded)."""
    T = max(len(tokens) for tokens, _ in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)  # mask[r, t]: logits at t predict an ending token t + 1
    for r, (tokens, start) in enumerate(rows):
        idx[r, :len(tokens)] = torch.tensor(tokens)
        mask[r, start - 1:len(tokens) - 1] = True
    idx, mask = idx.to(device), mask.to(device)
    targets = idx[:, 1:][mask[:, :-1]]  # (N,) the ending tokens, in row order
    # right padding needs no attention mask: causal attention never lets a real token see the padding after it
    with torch.no_grad(), autocast(device, dtype):
        hidden = model.hidden_states(idx)  # (R, T, C)
        logits = model.logits(hidden[mask])  # (N, V): the head only where a loss is needed
    losses = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    rows_of = mask.nonzero()[:, 0]  # (N,) row of each loss
    summed = torch.zeros(len(rows), device=losses.device).index_add_(0, rows_of, losses)
    return summed, summed / mask.sum(dim=1)


def evaluate_hellaswag(model: torch.nn.Module, tokenizer: Tokenizer, examples: list[dict[str, Any]],
                       device: str | torch.device, batch_size: int = 16, rank: int = 0, world_size: int = 1,
                       dtype: str = "float32", progress: bool = False) -> dict[str, Any]:
    """Score `examples` (from `load_hellaswag`); under torchrun each rank scores every `world_size`-th example and
    the counts are summed over ranks. Returns `{"acc", "acc_norm", "n", "examples"}` (examples: this rank's
    `{"index", "label", "pred_sum", "pred_norm"}`, all ranks' when torch.distributed is running)."""
    gpt = unwrap(model)
    check_vocab(gpt, tokenizer)
    was_training = gpt.training
    gpt.eval()
    mine = [(ex, render_example(tokenizer, ex, gpt.config.block_size)) for ex in examples[rank::world_size]]
    # batch examples of similar length together: less padding, and no prediction depends on its batch
    mine.sort(key=lambda item: max(len(tokens) for tokens, _ in item[1]))
    scored: list[dict[str, Any]] = []
    chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    with tqdm(total=len(mine), desc="hellaswag", unit="ex", disable=not progress or rank != 0, file=sys.stderr) as bar:
        for chunk in chunks:
            summed, mean = ending_losses(gpt, [row for _, rows in chunk for row in rows], device, dtype)
            pred_sum = summed.view(-1, N_ENDINGS).argmin(dim=1).tolist()
            pred_norm = mean.view(-1, N_ENDINGS).argmin(dim=1).tolist()
            scored += [{"index": ex["index"], "label": ex["label"], "pred_sum": s, "pred_norm": m}
                       for (ex, _), s, m in zip(chunk, pred_sum, pred_norm, strict=True)]
            bar.update(len(chunk))
    # every rank runs as many forward passes as rank 0, which has the most examples: a sharded (FSDP) model's forward
    # gathers its parameters from all ranks. The extra passes score the first example again and are dropped.
    for _ in range(math.ceil(len(examples[::world_size]) / batch_size) - len(chunks)):
        ending_losses(gpt, render_example(tokenizer, examples[0], gpt.config.block_size), device, dtype)
    gpt.train(was_training)
    correct = sum(r["pred_sum"] == r["label"] for r in scored)
    correct_norm = sum(r["pred_norm"] == r["label"] for r in scored)
    correct, correct_norm, n = all_reduce_sum([correct, correct_norm, len(scored)], device)
    examples = sorted((r for part in all_gather_objects(scored) for r in part), key=lambda r: r["index"])
    return {"acc": correct / max(n, 1), "acc_norm": correct_norm / max(n, 1), "n": int(n), "examples": examples}


def hellaswag_record(result: dict[str, Any]) -> dict[str, Any]:
    """evaluate_hellaswag's result as the fields of a log or evaluation record: `hellaswag_acc` is acc_norm, the
    length-normalised figure GPT-2 and GPT-3 are quoted at."""
    return {"hellaswag_acc": result["acc_norm"], "hellaswag_acc_sum": result["acc"], "hellaswag_n": result["n"]}


def run(cfg: HellaswagConfig) -> dict[str, Any]:
    with started(cfg.device) as d:
        model, tokenizer = load_model_and_tokenizer(cfg.checkpoint, d.device)
        path = cfg.data_path or default_data_path()
        examples = load_hellaswag(path, cfg.limit)
        result = evaluate_hellaswag(model, tokenizer, examples, d.device, cfg.batch_size, d.rank, d.world_size,
                                    dtype=cfg.dtype, progress=True)
        if d.is_main:
            print(f"hellaswag {cfg.checkpoint}: acc {result['acc']:.4f}  acc_norm {result['acc_norm']:.4f}  "
                  f"(n={result['n']}, {path.name})")
            if cfg.out is not None:
                atomic_write_text(cfg.out, json.dumps(result, indent=1) + "\n")
                print(f"wrote {cfg.out}", file=sys.stderr)
        return result
