"""`ghoul compare`: the Wilson interval on known counts, pairs judged in a random order, an end-to-end run, and a
rerun that continues an interrupted comparison (and refuses a file of another one)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.feedback import compare, judges
from ghoul.feedback.compare import CompareConfig, judge_pairs, wilson_interval
from ghoul.feedback.judges import Judge, JudgeOptions, Judgment
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig


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


def test_a_pair_of_the_same_story_is_a_tie_no_judge_is_asked_about(tmp_path):
    # a judge shown one story twice picks a place, not a story: those picks made a model beat itself 11 of 20 times
    a = [dict(id=i, prompt="p", text=f" AAA {i}" if i < 30 else " the same") for i in range(40)]
    b = [dict(id=i, prompt="p", text=f" BBB {i}" if i < 30 else " the same") for i in range(40)]
    judge, out = MarkerJudge(), tmp_path / "pairs.jsonl"  # it finds no AAA in a tied pair: asked, it would fail
    cfg = CompareConfig(a="a", b="b", n=40, out=out)
    result = judge_pairs(cfg, judge, a, b)
    assert (result.wins_a, result.wins_b, result.ties, result.win_rate) == (30, 0, 10, 1.0)
    assert (result.low, result.high) == pytest.approx(wilson_interval(30, 30)) and len(judge.positions) == 30
    assert [r["winner"] for r in read_jsonl(out)] == ["a"] * 30 + ["tie"] * 10
    assert result.summary("a", "b").endswith("in 30 of 30 pairs: win-rate 100.0%, 95% CI [88.6%, 100.0%]; 10 ties "
                                             "(the same story from both)")
    assert compare.earlier_judgments(cfg, "marker") == read_jsonl(out)  # a rerun continues a file holding ties
    same = judge_pairs(CompareConfig(a="a", b="a", n=10), judge, a[30:], b[30:])
    assert same.summary("a", "a") == "A (a) beats B (a) in 0 of 0 pairs: no win-rate: no pair was decided; 10 ties " \
                                     "(the same story from both)"


def test_compare_end_to_end(tiny_model, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["compare", "--a", str(tiny_model), "--b", str(tiny_model), "--judge", "random", "--n", "6",
                 "--max-new-tokens", "8", "--device", "cpu", "--out", str(out)]) == 0
    pairs = read_jsonl(out)
    assert len(pairs) == 6 and all(p["a"] == p["b"] for p in pairs)  # same model, same seeds: the same stories
    assert "win-rate" in capsys.readouterr().err
    assert main(["compare", "--a", str(tiny_model)]) == 2


def test_a_judge_that_cannot_work_here_is_refused_before_any_story_is_made(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(compare, "generate", lambda cfg: pytest.fail("generated stories for a judge that cannot work"))
    out = tmp_path / "pairs.jsonl"
    assert main(["compare", "--a", str(tiny_model), "--b", str(tiny_model), "--judge", "openai:gpt-4o", "--n", "100",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set OPENAI_API_KEY" in err[0] and not out.exists()


class FirstShown(Judge):
    """Picks the story shown first, so each winner tells where A was shown; skips a pair whose first story has a
    length divisible by 3 (by content, so alike in any run). Presses Ctrl-C instead of its call number `stop`."""

    name = "first-shown"

    def __init__(self, stop: int | None = None) -> None:
        self.stop, self.calls = stop, 0

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return Judgment(None if len(candidates[0]) % 3 == 0 else 0)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A second tiny model, with other weights than tiny_model's: A and B tell different stories. Its embedding (the
    tied output layer) is scaled up: two random models' next-token distributions are both near uniform, so the same
    random draws often picked the same tokens, and a pair was the same story (a tie no judge is asked about)."""
    torch.manual_seed(1)
    model = GPT(GPTConfig.from_name("tiny"))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)
    path = tmp_path_factory.mktemp("model") / "other"
    save_model_dir(model, path)
    return path


N = 7


def compare_cfg(a, b, out, **changes) -> CompareConfig:
    options = dict(a=a, b=b, n=N, max_new_tokens=7, batch_size=3, device="cpu", out=out,
                   judging=JudgeOptions(judge="length"))
    return CompareConfig(**{**options, **changes})


def as_result(result) -> tuple:
    return result.wins_a, result.wins_b, result.skipped, result.low, result.high


def test_an_interrupted_compare_is_continued_as_if_never_stopped(tiny_model, other_model, tmp_path, capsys):
    whole = compare.run(compare_cfg(tiny_model, other_model, tmp_path / "whole.jsonl"), judge=FirstShown())
    records = read_jsonl(tmp_path / "whole.jsonl")
    assert len(records) == N and {r["winner"] for r in records} >= {"a", "b"}  # A shown first or second

    out = tmp_path / "pairs.jsonl"
    with pytest.raises(KeyboardInterrupt):
        compare.run(compare_cfg(tiny_model, other_model, out), judge=FirstShown(stop=3))
    assert len(read_jsonl(out)) == 2
    err = capsys.readouterr().err
    assert f"2 of {N} pairs are judged and saved in {out}; rerun the same command to judge the remaining {N - 2}" in err

    judge = FirstShown()
    resumed = compare.run(compare_cfg(tiny_model, other_model, out), judge=judge)
    assert judge.calls == N - 2  # the two saved pairs are not shown again
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert as_result(resumed) == pytest.approx(as_result(whole))
    assert resumed.win_rate == pytest.approx(whole.win_rate)

    capsys.readouterr()
    done = compare.run(compare_cfg(tiny_model, other_model, out), judge=FirstShown(stop=1))  # no pair is shown
    assert as_result(done) == pytest.approx(as_result(whole))
    assert f"all {N} pairs are judged; nothing to do" in capsys.readouterr().err


def test_a_rerun_of_another_comparison_is_refused(tiny_model, other_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(judges, "JUDGES", [*judges.JUDGES, FirstShown.name])  # a judge the command line knows
    out = tmp_path / "pairs.jsonl"
    compare.run(compare_cfg(tiny_model, other_model, out, n=3), judge=FirstShown())
    before = out.read_bytes()
    args = ["compare", "--a", str(tiny_model), "--b", str(other_model), "--n", str(N), "--max-new-tokens", "6",
            "--batch-size", "3", "--device", "cpu", "--out", str(out), "--judge", "first-shown"]
    for changed, message in [(["--judge", "length"], "the judge 'first-shown', not 'length': rerun with --judge "
                                                     "first-shown"),
                             (["--task", "Pick the funniest story."], "with the task 'Pick the scariest story.'"),
                             (["--b", str(tiny_model)], "holds another comparison"),
                             (["--seed", "7"], "holds another comparison"),
                             (["--max-new-tokens", "5"], "holds another comparison"),
                             (["--n", "2"], "3 judged pairs, more than --n 2")]:
        capsys.readouterr()
        assert main([*args, *changed]) == 2, changed
        err = capsys.readouterr().err.strip()
        line = err.splitlines()[-1]  # after the progress bars of the stories generated to check the pairs
        assert message in line and "another --out" in line and err.count("error") == 1, err
        assert out.read_bytes() == before


def test_a_torn_last_line_is_cut_and_the_run_goes_on(tiny_model, other_model, tmp_path):
    whole = tmp_path / "whole.jsonl"
    compare.run(compare_cfg(tiny_model, other_model, whole), judge=FirstShown())
    lines = whole.read_text().splitlines(keepends=True)
    out = tmp_path / "pairs.jsonl"
    out.write_text("".join(lines[:3]) + lines[3][:40])  # a crash in the middle of the fourth append
    judge = FirstShown()
    compare.run(compare_cfg(tiny_model, other_model, out), judge=judge)
    assert judge.calls == N - 3 and out.read_bytes() == whole.read_bytes()
    out.write_text(lines[0][:40])  # torn in the first append: no complete record to continue
    compare.run(compare_cfg(tiny_model, other_model, out), judge=FirstShown())
    assert out.read_bytes() == whole.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, without a newline")  # not ours: never appended to
    with pytest.raises(GhoulError, match="did not write"):
        compare.run(compare_cfg(tiny_model, other_model, notes), judge=FirstShown())
    assert notes.read_text() == "my notes, without a newline"


def test_a_file_written_without_the_task_is_continued(tiny_model, other_model, tmp_path):
    whole = tmp_path / "whole.jsonl"
    compare.run(compare_cfg(tiny_model, other_model, whole), judge=FirstShown())
    records = read_jsonl(whole)
    out = tmp_path / "pairs.jsonl"
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "task"}) + "\n" for r in records[:4]))
    judge = FirstShown()
    compare.run(compare_cfg(tiny_model, other_model, out), judge=judge)
    assert judge.calls == N - 4 and read_jsonl(out)[4:] == records[4:]


def test_a_file_that_is_not_compare_output_is_refused_and_kept(tiny_model, other_model, tmp_path):
    out = tmp_path / "stories.jsonl"
    for text in (json.dumps({"id": 0, "prompt": "", "text": " a story"}) + "\n",  # a stories file
                 "[1, 2]\n", json.dumps({"id": 0, "prompt": "", "a": "", "b": "", "a_shown_first": True,
                                          "winner": "c", "judge": "first-shown"}) + "\n"):
        out.write_text(text)
        with pytest.raises(GhoulError, match="record 1: not a judgment of `ghoul compare`"):
            compare.run(compare_cfg(tiny_model, other_model, out), judge=FirstShown())
        assert out.read_text() == text
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("In the attic\n")
    with pytest.raises(GhoulError, match="is also an input"):
        compare_cfg(tiny_model, other_model, prompts, prompts_file=prompts)


@pytest.mark.parametrize("option", ["--n", "--max-new-tokens", "--batch-size"])
def test_a_count_below_one_names_compares_own_flag(option, tmp_path, capsys):
    # generate's check answered for compare and named --num-samples, a flag compare does not have
    assert main(["compare", "--a", str(tmp_path), "--b", str(tmp_path), "--judge", "length", option, "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"ghoul compare: error: {option} must be at least 1, got 0"]
