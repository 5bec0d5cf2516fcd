"""Run logs: one JSON object per line in `RUN/log.jsonl` (appended and flushed), optionally mirrored to W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ghoul.errors import GhoulError
from ghoul.files import append_jsonl, read_jsonl, write_jsonl

LOG_FILE = "log.jsonl"
SAMPLES_FILE = "samples.jsonl"


class RunLogger:
    """Writes records on rank 0 only; other ranks get a logger that does nothing."""

    def __init__(self, run_dir: Path, enabled: bool, wandb_project: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.run_dir, self.enabled, self.wandb = run_dir, enabled, None
        if enabled and wandb_project:
            try:
                import wandb  # optional: not an extra of ghoul's, installed by who logs to W&B
            except ImportError:
                raise GhoulError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
            self.wandb = wandb.init(project=wandb_project, name=run_dir.name, config=config, dir=str(run_dir))

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            append_jsonl(self.run_dir / LOG_FILE, record)
            if self.wandb is not None:
                self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def sample(self, record: dict[str, Any]) -> None:
        if self.enabled:
            append_jsonl(self.run_dir / SAMPLES_FILE, record)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint, so the curves do not double back."""
        if not self.enabled:
            return
        for name in (LOG_FILE, SAMPLES_FILE):
            path = self.run_dir / name
            if path.is_file():
                write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
