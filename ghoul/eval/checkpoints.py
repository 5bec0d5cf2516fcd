"""`ghoul eval checkpoints RUN_DIR`: evaluate every `step_*` checkpoint of a run once, record it in `eval.jsonl`,
and plot the run's curves against the GPT-2/GPT-3 references. Rerun it as training goes on: only new work is done.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghoul import checkpoint
from ghoul.config import option, refuse_set, require
from ghoul.data.shards import check_data_tokenizer, read_meta
from ghoul.dist import DTYPES, DistInfo, started
from ghoul.errors import GhoulError
from ghoul.eval.curves import REFERENCES, dataset_of, plot_run
from ghoul.eval.hellaswag import default_data_path, evaluate_hellaswag, hellaswag_record, load_hellaswag
from ghoul.eval.loss import check_window, evaluate_loss, loss_record, read_split
from ghoul.files import append_jsonl, read_jsonl, repair_jsonl
from ghoul.layout import CONFIG_FILE, WEIGHTS_FILE, models_within
from ghoul.train.logger import LOG_FILE

EVAL_FILE = "eval.jsonl"


@dataclass
class CheckpointsConfig:
    run_dir: Path = option(help="training run directory holding step_* checkpoints", positional=True)
    hellaswag: bool = option(True, "score HellaSwag (acc_norm, recorded as hellaswag_acc)")
    val_loss: bool = option(False, "measure the validation loss on --data")
    data: Path | None = option(None, "token shard directory for --val-loss (its val split)")
    limit: int | None = option(None, "HellaSwag: score only the first N examples")
    data_path: Path | None = option(None, "HellaSwag jsonl file (default as in `ghoul eval hellaswag`)")
    tokens: int | None = option(2**20, "validation loss: at most this many tokens")
    seq_len: int | None = option(None, "validation loss: tokens per sequence (default: the model's block size)")
    batch_size: int = option(16, "examples (HellaSwag) or sequences (loss) per forward pass")
    reference: list[str] = option(["gpt2-124m"], "reference lines to draw", choices=list(REFERENCES))
    dtype: str = option("float32", "forward-pass precision", choices=list(DTYPES))
    device: str = option("auto", "cpu, cuda, mps, or auto")
    plot: bool = option(True, "draw val_loss.png, val_bpb.png and hellaswag_acc.png in the run directory")

    def __post_init__(self) -> None:
        if self.val_loss and self.data is None:
            raise GhoulError("--val-loss needs --data DIR: the token shard directory whose val split to use")
        if not self.val_loss:
            refuse_set(self, ("data", "tokens", "seq_len"), "--val-loss")
        if not self.hellaswag:
            refuse_set(self, ("limit", "data_path"), "--hellaswag")
        require(self, ("batch_size", "limit"), lambda v: v >= 1, "at least 1")


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of the run's complete checkpoints, by step (temporary `.step_*` folders are not matched)."""
    if not run_dir.is_dir():
        raise GhoulError(f"run directory {run_dir} does not exist: give the --output-dir of a training run")
    found = [(int(p.name.removeprefix("step_")), p) for p in checkpoint.step_dirs(run_dir)]
    if not found:
        if (run_dir / CONFIG_FILE).is_file() and (run_dir / WEIGHTS_FILE).is_file():
            raise GhoulError(f"{run_dir} is one model, not a run of checkpoints: give the run directory that holds "
                             "its step_* directories (ghoul eval loss and eval hellaswag score one model)")
        inside = ", ".join(str(p) for p in models_within(run_dir))  # a pipeline's or rlhf's stages
        raise GhoulError(f"{run_dir} holds no checkpoints: it should contain step_* directories (each with "
                         f"{WEIGHTS_FILE}), as a training run saves them (--checkpoint-every)"
                         + (f"; give one of the runs in it: {inside}" if inside else ""))
    return found


def _merged(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each checkpoint's metrics, its records merged in order (a later record adds to or overrides earlier ones)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if "checkpoint" in r:
            out.setdefault(r["checkpoint"], {}).update(r)
    return out


def _tokens_at(step: int, directory: Path, log: list[dict[str, Any]]) -> int | None:
    """Tokens seen by `step`: from the training log, else the checkpoint's trainer_state.json, if either says."""
    for r in log:
        if r.get("step") == step and isinstance(r.get("tokens"), int):
            return r["tokens"]
    try:
        tokens = json.loads((directory / checkpoint.STATE_FILE).read_text(encoding="utf-8")).get("tokens")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None
    return tokens if isinstance(tokens, int) else None


@dataclass
class _Work:
    """What one call evaluates: the loaded inputs shared by every checkpoint, and the settings that decide each
    metric (recorded beside it as `*_key`, so that a result is reused only for the same settings)."""

    examples: list[dict[str, Any]] | None
    shards: list | None
    dataset: str | None
    hellaswag_key: dict[str, Any] | None
    val_loss_key: dict[str, Any] | None


def _prepare(cfg: CheckpointsConfig) -> _Work:
    examples, hellaswag_key = None, None
    if cfg.hellaswag:
        path = cfg.data_path or default_data_path()
        examples = load_hellaswag(path, cfg.limit)
        # the count, not --limit: a limit past the end of the file scores the same examples as none
        hellaswag_key = {"file": str(Path(path).resolve()), "n": len(examples), "dtype": cfg.dtype}
    shards, dataset, val_loss_key = None, None, None
    if cfg.val_loss:
        shards = read_split(cfg.data, "val")
        dataset = dataset_of(str((read_meta(cfg.data) or {}).get("source", "")))
        # seq_len None is the checkpoint's own block size, fixed for a given checkpoint
        val_loss_key = {"data": str(Path(cfg.data).resolve()), "split": "val", "tokens": cfg.tokens,
                        "seq_len": cfg.seq_len, "dtype": cfg.dtype}
    return _Work(examples, shards, dataset, hellaswag_key, val_loss_key)


def _todo(done: dict[str, Any], work: _Work) -> list[str]:
    """The metrics still missing for a checkpoint: those not recorded with the settings of this call (a record
    without a key, or a validation loss without bits per byte, as older eval.jsonl files hold, is redone)."""
    todo = []
    if work.examples is not None and done.get("hellaswag_key") != work.hellaswag_key:
        todo.append("hellaswag")
    if work.shards is not None and (done.get("val_loss_key") != work.val_loss_key or "val_bpb" not in done):
        todo.append("val_loss")
    return todo


def evaluate_checkpoint(directory: Path, todo: list[str], work: _Work, cfg: CheckpointsConfig, d: DistInfo
                        ) -> dict[str, Any]:
    """The metrics in `todo` for one checkpoint, as eval.jsonl fields, each with the key it was computed under."""
    model, tokenizer = checkpoint.load_model_and_tokenizer(directory, d.device)
    if "val_loss" in todo:  # before any scoring, so a mismatch costs nothing
        check_data_tokenizer(cfg.data, tokenizer, directory)
        check_window(cfg.seq_len or model.config.block_size, cfg.tokens, model.config.block_size)
    record: dict[str, Any] = {}
    if "hellaswag" in todo:
        r = evaluate_hellaswag(model, tokenizer, work.examples, d.device, cfg.batch_size, d.rank, d.world_size,
                               dtype=cfg.dtype, progress=True)
        record.update(hellaswag_record(r), hellaswag_key=work.hellaswag_key)
    if "val_loss" in todo:
        seq_len = cfg.seq_len or model.config.block_size
        r = evaluate_loss(model, work.shards, d.device, seq_len, cfg.batch_size, cfg.tokens, d.rank, d.world_size,
                          dtype=cfg.dtype, progress=True, tokenizer=tokenizer)
        record.update(loss_record(r), val_loss_key=work.val_loss_key)
    return record


def run(cfg: CheckpointsConfig) -> list[dict[str, Any]]:
    """Evaluate the run's checkpoints that still need it; returns the records appended to eval.jsonl."""
    with started(cfg.device) as d:
        checkpoints = step_dirs(cfg.run_dir)
        eval_path, log = cfg.run_dir / EVAL_FILE, read_jsonl(cfg.run_dir / LOG_FILE, missing_ok=True)
        work = _prepare(cfg)
        done = _merged(read_jsonl(eval_path, missing_ok=True))
        if d.is_main and eval_path.exists():
            repair_jsonl(eval_path, "checkpoint")  # a crash's torn last line goes: the next record starts a line
        new: list[dict[str, Any]] = []
        for step, directory in checkpoints:
            todo = _todo(done.get(directory.name, {}), work)
            if not todo:
                continue
            metrics = evaluate_checkpoint(directory, todo, work, cfg, d)
            record = {"checkpoint": directory.name, "step": step, "tokens": _tokens_at(step, directory, log), **metrics}
            if d.is_main:
                append_jsonl(eval_path, record)  # one line per checkpoint as it finishes: an interrupted call keeps it
                print(f"{directory.name}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                         if isinstance(v, float)), file=sys.stderr)
            new.append(record)
        if d.is_main:
            print(f"evaluated {len(new)} checkpoint(s), {len(checkpoints) - len(new)} already in {eval_path}")
            if cfg.plot:
                records = read_jsonl(eval_path, missing_ok=True)
                for path in plot_run(cfg.run_dir, records, log, cfg.reference, work.dataset):
                    print(f"wrote {path}")
        return new
