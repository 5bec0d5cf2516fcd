"""Timing helpers shared by the benchmarks: warm-up, repeated runs, the median, and one result shape for them all.

Every benchmark's `run(...)` returns `result(...)`: ours against its peer, both measured in the same process run,
so the ratio holds even where the absolute figures move with the machine's other load.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


class Unsupported(Exception):
    """A case this machine cannot measure meaningfully (e.g. bfloat16 on a CPU that only emulates it)."""


def measure_each(fns: list[Callable[[], object]], repeats: int = 5, warmup: int = 1) -> list[dict[str, Any]]:
    """Wall times of each `fn()` over `repeats` runs after `warmup` untimed ones: the median and every run.

    The contenders take turns, one run of each per round: on a shared machine whose load drifts, every contender
    then sees the same drift, which timing them one after the other would not give."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, own in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            own.append(time.perf_counter() - start)
    return [{"median_s": statistics.median(own), "times_s": own} for own in times]


def side(name: str, work: float, timing: dict[str, Any]) -> dict[str, Any]:
    """One contender: its name, its timing (from `measure_each`) and its rate, `work` units per median second."""
    return {"name": name, **timing, "rate": work / timing["median_s"]}


def result(case: str, what: str, unit: str, ours: dict, peer: dict, reproduce: str, **details: Any) -> dict:
    """A benchmark's outcome; `ratio` is ours / peer in rate, so above 1 means ghoul is faster."""
    return {"case": case, "what": what, "unit": unit, "ours": ours, "peer": peer,
            "ratio": ours["rate"] / peer["rate"], "reproduce": reproduce, "details": details}


def describe(r: dict) -> str:
    """A result in a few lines, as the scripts print it."""
    lines = [f"{r['case']}: {r['what']}"]
    for s in (r["ours"], r["peer"]):
        lines.append(f"  {s['name']:44s} {s['rate']:12,.1f} {r['unit']}  (median {s['median_s']:.3f} s "
                     f"of {len(s['times_s'])})")
    lines.append(f"  ratio ghoul / peer: {r['ratio']:.2f}x")
    lines += [f"  {k}: {v:,.3g}" if isinstance(v, float) else f"  {k}: {v}" for k, v in r["details"].items()]
    return "\n".join(lines)
