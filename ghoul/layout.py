"""Where things are in model directories and runs: the file names, and the checkpoints of a run
(`RUN/step_000123/`, `RUN/latest` naming the newest). No torch here: tokenizers and torch-free commands read it too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ghoul.files import atomic_write_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LATEST = "latest"
PIPELINE_FILE = "pipeline.json"  # a pipeline run's options, beside its stages' directories


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory itself, or the newest checkpoint of a run directory (the one `RUN/latest` names)."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file() and (path / LATEST).is_file():
        return path / (path / LATEST).read_text(encoding="utf-8").strip()
    return path


def models_within(directory: Path, depth: int = 2) -> list[Path]:
    """The model and run directories up to `depth` levels inside `directory`, by name: what a user who gave a
    directory holding models (a pipeline run: pretrain, finetune, rlhf/finetune) may have meant."""
    try:
        subs = sorted(p for p in directory.iterdir() if p.is_dir())
    except OSError:  # unreadable: nothing to suggest there
        return []
    found = []
    for sub in subs:
        if (sub / LATEST).is_file() or ((sub / CONFIG_FILE).is_file() and (sub / WEIGHTS_FILE).is_file()):
            found.append(sub)
        elif depth > 1:
            found += models_within(sub, depth - 1)
    return found


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:06d}"


def step_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and half-written ones are hidden by their names)."""
    found = Path(run_dir).glob("step_*")
    return sorted((p for p in found if p.name[5:].isdigit() and (p / WEIGHTS_FILE).is_file()),
                  key=lambda p: int(p.name[5:]))


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's checkpoint of the highest step: what `--resume` continues. Checkpoints appear whole (renamed into
    place), so it is complete even when a kill came before `latest` was pointed at it."""
    found = step_dirs(run_dir)
    return found[-1] if found else None


def set_aside_later(run_dir: str | Path, step: int, copied: tuple[str, ...] = (), moved: tuple[str, ...] = ()
                    ) -> Path | None:
    """Resuming a run from an earlier checkpoint starts a new branch of it: the checkpoints after `step` move to
    `RUN/later_than_step_N/` (where nothing prunes or overwrites them) with the run's `moved` files (records of
    those checkpoints) and a copy of its `copied` ones (its log as it was); `latest` names the newest checkpoint
    left. Returns that folder, or None when no checkpoint is later."""
    run_dir = Path(run_dir)
    later = [p for p in run_dir.glob("step_*") if p.name[5:].isdigit() and int(p.name[5:]) > step]
    if not later:
        return None
    aside, n = run_dir / f"later_than_{step_dir(run_dir, step).name}", 1
    while aside.exists():
        n += 1
        aside = run_dir / f"later_than_{step_dir(run_dir, step).name}_{n}"
    aside.mkdir()
    for name in copied:  # first: a kill part-way leaves the history beside whatever moved
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, aside / name)
    for path in [*sorted(later), *(run_dir / name for name in moved if (run_dir / name).is_file())]:
        os.replace(path, aside / path.name)
    newest = newest_checkpoint(run_dir)
    if newest is not None:
        atomic_write_text(run_dir / LATEST, newest.name + "\n")
    else:
        (run_dir / LATEST).unlink(missing_ok=True)
    return aside
