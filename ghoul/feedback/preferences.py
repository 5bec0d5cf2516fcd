"""Preferences from rankings: a best-of-k judgment yields k-1 pairs (the winner over each loser), written as
`preferences.jsonl` (prompt, chosen, rejected, group: TRL's convention), split into train and validation by group,
and served to the training loop as padded token batches by `PairLoader`.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ghoul import dist
from ghoul.advice import advice
from ghoul.config import option, refuse_set, require
from ghoul.data.loader import EpochLoader
from ghoul.errors import GhoulError
from ghoul.feedback.records import RANKINGS_FILE, load_rankings, load_stories, stories_judged
from ghoul.files import read_jsonl, refuse_input_as_output, refuse_to_replace, require_file, write_jsonl
from ghoul.tokenizer import Tokenizer
from ghoul.train.config import accumulation_steps
from ghoul.train.context import training_run
from ghoul.train.loop import train

PAIRS_FILE = "preferences.jsonl"  # beside a pair-trained run's checkpoints: the exact pairs, for inspection
PAIR_KEYS = ("prompt", "chosen", "rejected")  # what each pair holds: a file without them is another's


def pairs_from_rankings(rankings: list[dict[str, Any]], stories: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """(prompt, chosen, rejected) records of every judged group: the chosen story over each other story shown.
    Skipped groups give nothing: no choice is no preference."""
    pairs = []
    for record in rankings:
        if record.get("skipped") or record.get("chosen") is None:
            continue
        group, chosen = record["group"], record["chosen"]
        missing = [i for i in record["shown"] if i not in stories]
        if missing:
            raise GhoulError(f"rankings group {group} names stories {missing[:3]} that the stories file lacks: give "
                             "the stories.jsonl the rankings were made from (--stories)")
        for loser in [i for i in record["shown"] if i != chosen]:
            prompt = stories[chosen].get("prompt", "")
            if stories[loser].get("prompt", "") != prompt:
                raise GhoulError(f"rankings group {group} compares stories of different prompts: "
                                 "a preference needs one prompt")
            pairs.append(dict(prompt=prompt, chosen=stories[chosen]["text"], rejected=stories[loser]["text"],
                              group=group, chosen_id=chosen, rejected_id=loser))
    return pairs


def split_by_group(pairs: list[dict[str, Any]], val_fraction: float, seed: int) -> list[dict[str, Any]]:
    """The pairs with `split` set to train or val; whole groups go to one side, so validation pairs never share a
    winner with training pairs (pairs of one group are not independent)."""
    groups = sorted({p["group"] for p in pairs})
    random.Random(f"ghoul-preferences:{seed}").shuffle(groups)
    n_val = round(len(groups) * val_fraction)
    if val_fraction > 0 and len(groups) > 1:
        n_val = min(max(n_val, 1), len(groups) - 1)  # at least one group on each side
    val = set(groups[:n_val])
    return [{**p, "split": "val" if p["group"] in val else "train"} for p in pairs]


def build_preferences(rankings: Path, stories: Path | None, val_fraction: float, seed: int) -> list[dict[str, Any]]:
    """The split pairs of a rankings file (stories default to stories.jsonl beside it)."""
    judgments = load_rankings(Path(rankings))
    pairs = pairs_from_rankings(judgments, load_stories(stories_judged(rankings, stories)))
    if not pairs:
        raise GhoulError(f"{rankings} holds no judged group: rank some stories first")
    return split_by_group(pairs, val_fraction, seed)


def load_preferences(path: Path) -> list[dict[str, Any]]:
    """Records of a preferences.jsonl, checked; a file without `split` is all training data."""
    require_file(path, "preferences file", "make it with `ghoul preferences`")
    records = read_jsonl(path)
    for n, r in enumerate(records, 1):
        if not all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected")):
            raise GhoulError(f"{path}, record {n}: a preference needs string 'prompt', 'chosen' and 'rejected'")
        r.setdefault("split", "train")
        r.setdefault("group", n)
    if not records:
        raise GhoulError(f"{path} holds no preferences")
    return records


@dataclass
class PreferencesConfig:
    rankings: Path = option(Path(RANKINGS_FILE), "judgments written by `ghoul rank`")
    stories: Path | None = option(None, "the stories they judge (default: stories.jsonl beside the rankings)")
    out: Path = option(Path(PAIRS_FILE), "preference pairs: prompt, chosen, rejected, group, split")
    val_fraction: float = option(0.1, "fraction of the groups held out for validation")
    seed: int = option(1337, "seed of the train/validation split")

    def __post_init__(self) -> None:
        require(self, ("val_fraction",), lambda v: 0 <= v < 1, "in [0, 1)")
        self.rankings, self.out = Path(self.rankings), Path(self.out)
        refuse_input_as_output(self.out, self.rankings, stories_judged(self.rankings, self.stories))
        refuse_to_replace(self.out, PAIR_KEYS)


def run(cfg: PreferencesConfig) -> list[dict[str, Any]]:
    records = build_preferences(cfg.rankings, cfg.stories, cfg.val_fraction, cfg.seed)
    write_jsonl(cfg.out, records)
    val = sum(r["split"] == "val" for r in records)
    print(f"{cfg.out}: {len(records)} pairs ({len(records) - val} train, {val} validation)", file=sys.stderr)
    return records


def preference_records(pairs: PairOptions, seed: int) -> list[dict[str, Any]]:
    """The pairs a trainer learns from: a preferences file as it is, or pairs made from a rankings file."""
    if pairs.preferences is not None:
        return load_preferences(pairs.preferences)
    return build_preferences(pairs.rankings, pairs.stories, pairs.val_fraction, seed)


# ---- token batches for the training loop ---------------------------------------------------------------------

def encode_pair_side(tokenizer: Tokenizer, prompt: str, completion: str, block_size: int, join: bool = False
                     ) -> tuple[list[int], int]:
    """(token ids, prompt length) of prompt + completion + <|endoftext|>, cut to `block_size`. The prompt and the
    completion are encoded apart (as TRL does), so the completion's tokens are the same whatever precedes them;
    with `join`, the whole text is encoded as one after <|endoftext|>, as a judge sees it (the reward model)."""
    if join:
        prompt, completion = "", prompt + completion
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    ids = (prompt_ids + tokenizer.encode(completion))[:block_size - 1] + [tokenizer.eot_id]
    return ids, min(len(prompt_ids), len(ids) - 1)


class PairLoader(EpochLoader):
    """Batches `(tokens, mask)` of preference pairs for the one training loop: `tokens` (2B, T) holds the B chosen
    rows, then the B rejected rows, padded with <|endoftext|>; `mask` (2B, T) marks each row's completion tokens.

    Pairs are shuffled each epoch with the seed; each step takes the next `batch_size * world_size` of them and
    rank r its own slice. `state_dict()` holds the position, so a resumed run continues with the next batch.
    """

    def __init__(self, records: list[dict[str, Any]], tokenizer: Tokenizer, batch_size: int, block_size: int, *,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu", seed: int = 0,
                 shuffle: bool = True, join: bool = False) -> None:
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.device, self.shuffle, self.pad_id = torch.device(device), shuffle, tokenizer.eot_id
        self.pairs = [(encode_pair_side(tokenizer, r["prompt"], r["chosen"], block_size, join),
                       encode_pair_side(tokenizer, r["prompt"], r["rejected"], block_size, join)) for r in records]
        if self.steps_per_epoch < 1:
            raise GhoulError(f"{len(self.pairs)} preference pairs are too few for one step of batch_size * "
                             f"world_size = {batch_size * world_size}: "
                             f"{advice().too_few or 'lower --batch-size or rank more stories'}")
        self._seek(0, 0)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.pairs) // (self.batch_size * self.world_size)

    def _seek(self, position: int, epoch: int) -> None:
        """Go to `position` in `epoch`, whose order of the pairs the seed and the epoch fix."""
        self.position, self.epoch = position, epoch
        self._order = list(range(len(self.pairs)))
        if self.shuffle:
            random.Random(f"ghoul-pairs:{self.seed}:{epoch}").shuffle(self._order)

    def __iter__(self) -> PairLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.batch_size * self.world_size
        if self.position + span > len(self.pairs):
            self._seek(0, self.epoch + 1)
        start = self.position + self.rank * self.batch_size
        batch = [self.pairs[i] for i in self._order[start:start + self.batch_size]]
        self.position += span
        return collate([c for c, _ in batch] + [r for _, r in batch], self.pad_id, self.device)

    def reset(self) -> None:
        self._seek(0, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch, "pairs": len(self.pairs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("pairs") != len(self.pairs):
            raise GhoulError(f"loader state is from {state.get('pairs')} pairs but there are {len(self.pairs)} now: "
                             "resume with the same preferences")
        self._seek(int(state["position"]), int(state["epoch"]))


def collate(rows: list[tuple[list[int], int]], pad_id: int, device: str | torch.device = "cpu"
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask) of encoded rows: padded with `pad_id` to the longest, `mask` true on completion tokens."""
    T = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (ids, prompt_len) in enumerate(rows):
        tokens[i, :len(ids)] = torch.tensor(ids)
        mask[i, prompt_len:len(ids)] = True
    return dist.to_device(tokens, device), dist.to_device(mask, device)  # (N, T) each


def pair_loaders(records: list[dict[str, Any]], tokenizer: Tokenizer, batch_size: int, block_size: int, d: Any,
                 seed: int, join: bool = False) -> tuple[PairLoader, PairLoader | None]:
    """Training and validation loaders of split records (no validation loader when no pair is held out)."""
    train = [r for r in records if r.get("split", "train") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train:
        raise GhoulError("no training pairs: lower --val-fraction")
    kwargs = dict(rank=d.rank, world_size=d.world_size, device=d.device, seed=seed, join=join)
    val_batch = min(batch_size, len(val) // d.world_size)  # a small held-out set still gets evaluated
    val_loader = PairLoader(val, tokenizer, val_batch, block_size, shuffle=False, **kwargs) if val_batch else None
    return PairLoader(train, tokenizer, batch_size, block_size, **kwargs), val_loader


# ---- the stages that train on pairs (reward model, DPO): one start, then the one training loop ------------------

@dataclass
class PairOptions:
    """The preference pairs to train on, from `ghoul preferences` or straight from rankings."""

    preferences: Path | None = option(None, "preference pairs from `ghoul preferences` (its split is kept); this "
                                            "or --rankings is required")
    rankings: Path | None = option(None, "or: judgments from `ghoul rank`, turned into pairs here")
    stories: Path | None = option(None, "the stories the rankings judge (default: stories.jsonl beside them)")
    val_fraction: float = option(0.1, "fraction of the ranked groups held out for validation (with --rankings)")

    def __post_init__(self) -> None:
        if (self.preferences is None) == (self.rankings is None):
            raise GhoulError("give --preferences FILE (from `ghoul preferences`) or --rankings FILE "
                             "(from `ghoul rank`), one of them")
        if self.preferences is not None:  # its pairs and their split are made: the options that make them are unread
            refuse_set(self, ("stories", "val_fraction"), "--rankings")
        require(self, ("val_fraction",), lambda v: 0 <= v < 1, "in [0, 1)")


@dataclass
class PairBatchOptions:
    """What one optimizer step reads: pairs per micro-batch, and pairs per step over all ranks."""

    batch_size: int = option(8, "preference pairs per micro-batch on each rank")
    total_batch_size: int | None = option(None, "preference pairs per optimizer step over all ranks (default: one "
                                                "micro-batch per rank); reached by gradient accumulation")
    seq_len = None  # a pair's rows are as long as its longest side, up to the model's block size

    def __post_init__(self) -> None:
        require(self, ("batch_size", "total_batch_size"), lambda v: v >= 1, "at least 1")

    def accumulation(self, seq_len: int, world_size: int) -> int:
        """Micro-steps per optimizer step (`seq_len` plays no part: the total counts pairs)."""
        return accumulation_steps(self.total_batch_size, self.batch_size, 1, world_size)


def train_on_pairs(cfg: Any, build: Callable[[Path | None, str], tuple[Any, Tokenizer, Any]],
                   join: bool = False) -> Any:
    """Set up (one process or a torchrun rank), build (model, tokenizer, loss) and run the one training loop on the
    pairs; `build(resume_from, device)` starts from the checkpoint when resuming."""
    run, pairs = cfg.run, cfg.pairs
    refuse_to_replace(run.output_dir / PAIRS_FILE, PAIR_KEYS, "--output-dir")  # a file of yours there is kept
    with training_run(run) as (d, resume_from):
        records = preference_records(pairs, run.seed)
        model, tokenizer, loss_fn = build(resume_from, d.device)
        train_data, val_data = pair_loaders(records, tokenizer, cfg.batch.batch_size, model.config.block_size, d,
                                            run.seed, join)
        if d.is_main:
            write_jsonl(run.output_dir / PAIRS_FILE, records)
        val = sum(r.get("split") == "val" for r in records)
        dist.print0(f"{len(records) - val} training pairs, {val} validation pairs")
        return train(cfg, model.to(d.device), tokenizer, d, loss_fn, resume_from, train_data, val_data)
