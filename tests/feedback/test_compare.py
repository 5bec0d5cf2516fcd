"""`ghoul compare`: the Wilson interval on known counts, pairs judged in a random order, and an end-to-end run."""

from __future__ import annotations

import math

import pytest

from ghoul.cli import main
from ghoul.feedback.compare import CompareConfig, judge_pairs, wilson_interval
from ghoul.feedback.judges import Judge, Judgment
from ghoul.files import read_jsonl


def test_wilson_interval_on_known_counts():
    # Wilson (1927) by the closed form: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(7, 20, z=1.0)
    p, n = 0.35, 20
    centre, half = (p + 1 / (2 * n)) / (1 + 1 / n), math.sqrt(p * (1 - p) / n + 1 / (4 * n * n)) / (1 + 1 / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))


class MarkerJudge(Judge):
    """Picks the text holding 'AAA'; records where it was shown."""

    name = "marker"

    def __init__(self) -> None:
        self.positions: list[int] = []

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        best = next(i for i, t in enumerate(candidates) if "AAA" in t)
        self.positions.append(best)
        return Judgment(best)


def test_pairs_are_shown_in_a_random_order_and_mapped_back(tmp_path):
    a = [dict(id=i, prompt="p", text=f" AAA {i}") for i in range(40)]
    b = [dict(id=i, prompt="p", text=f" BBB {i}") for i in range(40)]
    judge, out = MarkerJudge(), tmp_path / "pairs.jsonl"
    result = judge_pairs(CompareConfig(a="a", b="b", n=40, out=out), judge, a, b)
    assert (result.wins_a, result.wins_b, result.skipped, result.win_rate) == (40, 0, 0, 1.0)
    assert 10 < sum(judge.positions) < 30  # A was shown second about half the time
    assert (result.low, result.high) == pytest.approx(wilson_interval(40, 40))
    assert [r["winner"] for r in read_jsonl(out)] == ["a"] * 40


def test_compare_end_to_end(tiny_model, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["compare", "--a", str(tiny_model), "--b", str(tiny_model), "--judge", "random", "--n", "6",
                 "--max-new-tokens", "8", "--device", "cpu", "--out", str(out)]) == 0
    pairs = read_jsonl(out)
    assert len(pairs) == 6 and all(p["a"] == p["b"] for p in pairs)  # same model, same seeds: the same stories
    assert "win-rate" in capsys.readouterr().err
    assert main(["compare", "--a", str(tiny_model)]) == 2
