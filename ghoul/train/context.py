"""The set-up and tear-down of every stage that trains (pretraining, fine-tuning, pair training, the learning stage,
PPO and GRPO): the distributed start, the run directory (a fresh run, or the checkpoint to resume; never an
existing run overwritten), the seed, every rank's random state in checkpoints, and rank 0's preparation of the
directory for this run (a killed run's temporaries cleaned, the later checkpoints of a branch set aside,
config.json written, the log cut back to the step resumed).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ghoul import dist
from ghoul.checkpoint import read_model_config
from ghoul.errors import GhoulError
from ghoul.files import clean_temporaries, is_output_of, sole_writer, write_json
from ghoul.layout import CONFIG_FILE, WEIGHTS_FILE, newest_checkpoint, resolve_checkpoint, set_aside_later
from ghoul.train.config import RunOptions
from ghoul.train.logger import LOG_FILE, SAMPLES_FILE, RunLogger

# what every training run's config.json holds (RunOptions): one without them is not written over
RUN_CONFIG_KEYS = ("output_dir", "resume", "seed")


@contextmanager
def training_run(run: RunOptions) -> Iterator[tuple[dist.DistInfo, Path | None]]:
    """Start this process (one, or a torchrun rank), hold and check the run directory and seed the RNG; yields the
    process's DistInfo and the checkpoint to resume from (None: a fresh run)."""
    with dist.started(run.device, run.dist_timeout_minutes) as d, sole_writer(run.output_dir):
        resume_from = check_run_dir(run)
        dist.barrier()  # every rank has checked the run directory before rank 0 writes into it
        torch.manual_seed(run.seed)
        yield d, resume_from


def open_run_dir(out: Path, d: dist.DistInfo, config: dict[str, Any], resumed_step: int | None,
                 wandb_project: str | None = None) -> RunLogger:
    """The run's logger, after rank 0 has made the directory ready for this run: started over (`resumed_step`
    None) or continued from the checkpoint of `resumed_step`, whose later checkpoints and log records are kept
    aside as the branch they were."""
    logger = RunLogger(out, d.is_main, wandb_project, config)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        clean_temporaries(out)  # what a killed run left half-written (a hidden .step_*.tmp is GBs)
        if resumed_step is not None:  # from an earlier checkpoint: a new branch; the later ones are kept aside
            aside = set_aside_later(out, resumed_step, copied=(LOG_FILE, SAMPLES_FILE),
                                    moved=("eval.jsonl",))  # `ghoul eval checkpoints`' records of the moved ones
            if aside is not None:
                dist.print0(f"resuming from step {resumed_step}: the run's later checkpoints and its log as it was "
                            f"are kept in {aside}")
        write_json(out / CONFIG_FILE, config)
        logger.truncate_after(resumed_step if resumed_step is not None else -1)  # started over: no record kept
    return logger


def check_run_dir(cfg: Any) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuse to overwrite an existing run. `cfg` holds a
    stage's `output_dir` and `resume` (RunOptions, PPO's and GRPO's config). `--resume` continues the run's newest
    checkpoint; a run stopped before its first one (killed, or a NaN loss) has nothing to continue and starts over."""
    out = cfg.output_dir
    if (out / WEIGHTS_FILE).exists():  # its config.json would be overwritten, and the model no longer load
        raise GhoulError(f"{out} holds a model ({WEIGHTS_FILE}: a checkpoint or an export), not a training run: give "
                         "another --output-dir")
    if not is_output_of(out / CONFIG_FILE, RUN_CONFIG_KEYS):  # the run writes its own there
        raise GhoulError(f"{out} holds a {CONFIG_FILE} that no training run wrote (another command's, or your own): "
                         "give another --output-dir")
    newest, has_log = newest_checkpoint(out), (out / LOG_FILE).exists()
    if cfg.resume is None:
        if newest is not None:
            raise GhoulError(f"{out} already holds a run: pass --resume to continue it, or choose another "
                             "--output-dir")
        if has_log:
            raise GhoulError(f"{out} holds a run that stopped before its first checkpoint: pass --resume to start it "
                             "over, or choose another --output-dir")
        return None
    if cfg.resume != "latest":
        read_model_config(cfg.resume)  # a clear error if it is not a checkpoint
        checkpoint = resolve_checkpoint(cfg.resume)
        # from another run's checkpoint: into a new directory (a branch of that run), never joined to a run here
        if (newest is not None or has_log) and out.resolve() not in checkpoint.resolve().parents:
            raise GhoulError(f"{cfg.resume} is not a checkpoint of {out}, which holds a run of its own: resume "
                             f"{out} from one of its own checkpoints, or start from {cfg.resume} in a new --output-dir")
        return checkpoint
    if newest is None:
        if not has_log:
            raise GhoulError(f"nothing to resume in {out}: it holds no run; leave out --resume to start one")
        dist.print0(f"{out} stopped before its first checkpoint: nothing to resume, starting it over")
        return None
    read_model_config(newest)
    return newest


def check_steps_left(checkpoint: Path, step: int, max_steps: int) -> None:
    """A resumed run must have steps left: one at or past --max-steps would save its weights as an earlier step."""
    if step >= max_steps:
        raise GhoulError(f"{checkpoint} is at step {step}, and --max-steps is {max_steps}: nothing to train; raise "
                         "--max-steps to go on")


def rng_state() -> dict:
    """Every rank's random state, `{"ranks": [...]}` in rank order: the CPU generator, Python's, and the generator of
    the rank's own GPU (the one its dropout draws from; dist.setup makes it the current device). Under torchrun a
    collective: every rank calls it, rank 0 stores the result."""
    def text(state: torch.Tensor) -> str:
        return base64.b64encode(state.numpy().tobytes()).decode()

    mine = {"torch": text(torch.get_rng_state()), "python": random.getstate()[1]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # a CPU run on a GPU machine starts no CUDA
        mine["cuda"] = text(torch.cuda.get_rng_state(torch.cuda.current_device()))
    return {"ranks": dist.all_gather_objects(mine)}


def set_rng_state(state: dict) -> None:
    """Restore this rank's own random state from `rng_state()`'s record. A rank the record has no state for (a run
    resumed on more ranks) keeps its own; only the current GPU's generator is set, so a machine with fewer GPUs
    resumes too. Records of one process with one state per visible GPU (older checkpoints) are read as rank 0's."""
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    ranks, rank = state.get("ranks", [state]), dist.process_rank()
    if rank >= len(ranks):
        return
    mine = ranks[rank]
    torch.set_rng_state(tensor(mine["torch"]))
    random.setstate((3, tuple(mine["python"]), None))
    if "cuda" in mine and torch.cuda.is_available():
        device = torch.cuda.current_device()
        cuda = mine["cuda"]
        if isinstance(cuda, list):  # an older record: rank 0's state of every GPU it could see
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(tensor(cuda), device)
