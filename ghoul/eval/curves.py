"""Curves of a run (validation loss, in nats per token and in bits per byte, and HellaSwag against step or tokens),
drawn with public GPT-2/GPT-3 baselines.

The reference figures are data (REFERENCES); each one's source is in the comment beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from ghoul.files import atomic_write


@dataclass(frozen=True)
class Reference:
    label: str
    hellaswag: float | None = None  # acc_norm, zero-shot, as a fraction
    val_loss: dict[str, float] = field(default_factory=dict)  # dataset name -> loss on that dataset's validation split


# HellaSwag acc_norm of OpenAI's GPT-2 checkpoints under this same completion-style scoring: 124M 29.55% and 1.5B
# 48.93% (karpathy/build-nanogpt hellaswag.py, the same file as llm.c dev/data/hellaswag.py, header comment);
# 350M and 774M from build-nanogpt play.ipynb `hella2_baseline` (0.375224, 0.431986; it lists 0.294463 for 124M).
# GPT-3: Brown et al. 2020, "Language Models are Few-Shot Learners", table 3.4 (HellaSwag zero-shot): Small 125M
# 33.7, Medium 350M 43.6, Large 760M 51.0, XL 1.3B 54.7, 175B 78.9. Validation losses exist only for a given data
# set: GPT-2 on FineWeb's val split (llm.c dev/vislog.ipynb `loss_baseline`: 3.424958, 3.083089, 3.000580, 2.831273)
# and GPT-2 124M on FineWeb-Edu's (build-nanogpt play.ipynb: 3.2924): the same source, not necessarily the same tokens.
REFERENCES: dict[str, Reference] = {
    "gpt2-124m": Reference("GPT-2 124M", 0.2955, {"fineweb": 3.424958, "fineweb-edu": 3.2924}),
    "gpt2-350m": Reference("GPT-2 350M", 0.375224, {"fineweb": 3.083089}),
    "gpt2-774m": Reference("GPT-2 774M", 0.431986, {"fineweb": 3.000580}),
    "gpt2-xl": Reference("GPT-2 1.5B", 0.4893, {"fineweb": 2.831273}),
    "gpt3-125m": Reference("GPT-3 Small 125M", 0.337),
    "gpt3-350m": Reference("GPT-3 Medium 350M", 0.436),
    "gpt3-760m": Reference("GPT-3 Large 760M", 0.510),
    "gpt3": Reference("GPT-3 XL 1.3B", 0.547),  # the GPT-3 size llm.c compares GPT-2 1.5B with
    "gpt3-175b": Reference("GPT-3 175B", 0.789),
}

METRICS = {  # metric key (and the name of its figure, KEY.png) -> (y-axis label, scale applied to the values)
    "val_loss": ("validation loss (nats/token)", 1.0),
    "val_bpb": ("validation loss (bits/byte)", 1.0),  # no reference: theirs are in nats/token
    "hellaswag_acc": ("HellaSwag acc_norm (%)", 100.0),
}
CHANCE = 0.25  # 4 endings


def dataset_of(source: str | None) -> str | None:
    """The REFERENCES data-set key of a shard directory's `source` (from its meta.json), if it has one."""
    name = (source or "").lower().replace("_", "-")
    if "fineweb-edu" in name or "edu-fineweb" in name:
        return "fineweb-edu"
    return "fineweb" if "fineweb" in name else None


def series(records: list[dict[str, Any]], metric: str) -> list[tuple[int, int | None, float]]:
    """(step, tokens or None, value) of the records carrying `metric`, by step (a later record wins)."""
    points = {r["step"]: (r["step"], r.get("tokens"), float(r[metric]))
              for r in records if r.get(metric) is not None and isinstance(r.get("step"), int)}
    return [points[s] for s in sorted(points)]


def val_tokens(records: list[dict[str, Any]]) -> int | None:
    """How many held-out tokens the newest validation loss in `records` read: a training log's reads the first
    --eval-iters batches of the split, an evaluation usually all of it, so the two sit apart by that sample."""
    return next((r["val_tokens"] for r in reversed(records) if "val_tokens" in r), None)


def plot_metric(path: Path, metric: str, curves: dict[str, list[tuple[int, int | None, float]]],
                references: list[str], dataset: str | None, title: str) -> bool:
    """Draw the curves of one metric (x = tokens when every point knows them, else step) with the reference lines
    that have a figure for it; returns False (and draws nothing) when there is nothing to draw."""
    if not any(curves.values()):
        return False
    ylabel, scale = METRICS[metric]
    refs = [(REFERENCES[name].label, _reference_value(REFERENCES[name], metric, dataset)) for name in references]
    refs = [(label, value) for label, value in refs if value is not None]
    by_tokens = all(t is not None for points in curves.values() for _, t, _ in points)
    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.add_subplot()
    for (label, points), marker in zip(curves.items(), ("o-", "s--", "^-."), strict=False):
        if points:
            xs = [t if by_tokens else s for s, t, _ in points]
            ax.plot(xs, [v * scale for _, _, v in points], marker, label=label, markersize=4)
    colors = ("tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    unit = "%" if metric == "hellaswag_acc" else f", {dataset} val"
    for (label, value), color in zip(refs, colors * 2, strict=False):
        ax.axhline(value * scale, linestyle="--", color=color, label=f"{label} ({value * scale:.4g}{unit})")
    if metric == "hellaswag_acc":
        ax.axhline(CHANCE * scale, linestyle=":", color="gray", label="chance (25%)")
    ax.set_xlabel("tokens" if by_tokens else "step")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 2.5M tokens, not 2.5 with a 1e6 offset
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole steps: no tick at 0.5 (read "500m")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))  # a viewer never sees half a picture
    return True


def _reference_value(ref: Reference, metric: str, dataset: str | None) -> float | None:
    if metric == "hellaswag_acc":
        return ref.hellaswag
    return ref.val_loss.get(dataset) if metric == "val_loss" and dataset else None


def named(label: str, records: list[dict[str, Any]], metric: str) -> str:
    """A loss curve's label with the held-out tokens behind it, where the records say."""
    tokens = val_tokens(records) if metric in ("val_loss", "val_bpb") else None
    return f"{label}, {tokens:,} tokens" if tokens else label


def plot_run(run_dir: Path, evals: list[dict[str, Any]], log: list[dict[str, Any]], references: list[str],
             dataset: str | None = None) -> list[Path]:
    """Write `val_loss.png`, `val_bpb.png` and `hellaswag_acc.png` into `run_dir` from its eval records and training
    log; returns the files written (a metric with no points at all gets no figure)."""
    written = []
    for metric, (ylabel, _) in METRICS.items():
        curves = {named(label, records, metric): series(records, metric)
                  for label, records in (("checkpoints (ghoul eval)", evals), ("training log", log))}
        if plot_metric(run_dir / f"{metric}.png", metric, curves, references, dataset, f"{run_dir.name}: {ylabel}"):
            written.append(run_dir / f"{metric}.png")
    return written
