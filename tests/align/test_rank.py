"""`ghoul rank` and `ghoul export winners`: reproducible groups, saved judgments, shuffling undone, crash and resume."""

from __future__ import annotations

import json

import pytest

from ghoul.align import rank, winners
from ghoul.align.judges import Judge, Judgment, LengthJudge
from ghoul.cli import main
from ghoul.data.sources import EOT, make_source
from ghoul.errors import GhoulError
from ghoul.files import read_jsonl
from tests.align.conftest import KEY, completion, files_under, pick_largest, shown_numbers, write_stories


def rank_cfg(tmp_path, **kw) -> rank.RankConfig:
    return rank.RankConfig(**{"stories": tmp_path / "stories.jsonl", "out": tmp_path / "rankings.jsonl", **kw})


def test_groups_are_reproducible_and_share_a_prompt(tmp_path):
    stories = rank.load_stories(write_stories(tmp_path / "stories.jsonl", 22, prompts=("A", "B")))
    groups = rank.make_groups(stories, 4, seed=3)
    assert groups == rank.make_groups(stories, 4, seed=3)
    assert groups != rank.make_groups(stories, 4, seed=4)
    assert len(groups) == 4 and all(len(g) == 4 for g in groups)  # 11 stories per prompt: 2 groups + 3 left out
    assert all(len({stories[i]["prompt"] for i in g}) == 1 for g in groups)
    assert len({i for g in groups for i in g}) == 16


def test_rank_with_the_length_judge_and_export_winners(tmp_path, capsys):
    write_stories(tmp_path / "stories.jsonl", 12)
    result = rank.run(rank_cfg(tmp_path, judge="length"))
    assert (result.groups, result.judged, result.skipped) == (3, 3, 0)
    records = read_jsonl(tmp_path / "rankings.jsonl")
    stories = rank.load_stories(tmp_path / "stories.jsonl")
    for r in records:
        assert set(r) >= {"group", "shown", "chosen", "judge", "reason", "raw", "time", "skipped"}
        assert r["judge"] == "length" and not r["skipped"]
        assert r["chosen"] == max(r["shown"], key=lambda i: (len(stories[i]["text"]), -r["shown"].index(i)))
    assert "judged 3 groups (0 skipped)" in capsys.readouterr().err

    assert main(["export", "winners", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / "winners.txt")]) == 0
    text = (tmp_path / "winners.txt").read_text()
    assert text.count(EOT) == 2
    docs = list(make_source("rlhf", tmp_path / "winners.txt"))  # what `ghoul prepare rlhf` reads
    assert docs == [rank.full_text(stories[r["chosen"]]).strip() for r in records]
    capsys.readouterr()
    for out in ("rankings.jsonl", "stories.jsonl"):  # an input given as the output stays as it was
        before = (tmp_path / out).read_text()
        assert main(["export", "winners", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / out)]) == 2
        assert "is also an input" in capsys.readouterr().err and (tmp_path / out).read_text() == before


def test_openai_judge_shuffling_is_recorded_and_undone(tmp_path, fake_openai):
    write_stories(tmp_path / "stories.jsonl", 40)
    server = fake_openai(pick_largest)
    result = rank.run(rank_cfg(tmp_path, judge="openai:gpt-4o", base_url=server.url))
    assert result.judged == 10 and result.usage == {"prompt_tokens": 1000, "completion_tokens": 100}
    records = read_jsonl(tmp_path / "rankings.jsonl")
    for r, request in zip(records, server.requests, strict=True):
        assert r["chosen"] == max(r["shown"])  # the judge's position mapped back to the right story
        assert r["shown"][r["position"] - 1] == r["chosen"]
        assert shown_numbers(request["body"]) == r["shown"]  # recorded in the order the model saw them
    assert len({r["position"] for r in records}) > 1  # positions vary: shuffled
    assert sum(result.positions.values()) == 10


def test_first_position_bias_is_measurable(tmp_path, fake_openai):
    write_stories(tmp_path / "stories.jsonl", 40)
    server = fake_openai(lambda request: (200, completion('{"best": 1, "reason": "first"}')))
    result = rank.run(rank_cfg(tmp_path, judge="openai:gpt-4o", base_url=server.url, seed=5))
    records = read_jsonl(tmp_path / "rankings.jsonl")
    assert all(r["chosen"] == r["shown"][0] and r["position"] == 1 for r in records)
    assert result.positions == {1: 10}
    groups = rank.make_groups(rank.load_stories(tmp_path / "stories.jsonl"), 4, 5)
    assert any(r["shown"] != groups[r["group"]] for r in records)  # the judge's order is not the group's


def test_unparseable_answers_are_recorded_as_skipped(tmp_path, fake_openai):
    write_stories(tmp_path / "stories.jsonl", 8)
    server = fake_openai(lambda request: (200, completion("Story 3 is the scariest")))
    result = rank.run(rank_cfg(tmp_path, judge="openai:gpt-4o", base_url=server.url, parse_retries=1))
    assert (result.judged, result.skipped) == (2, 2)
    records = read_jsonl(tmp_path / "rankings.jsonl")
    assert all(r["skipped"] and r["chosen"] is None and r["raw"] == "Story 3 is the scariest" for r in records)
    with pytest.raises(GhoulError, match="no chosen stories"):
        winners.run(winners.ExportWinnersConfig(tmp_path / "rankings.jsonl"))
    # --retry-skipped asks again; the newer judgment of a group counts
    server.reply = pick_largest
    assert rank.run(rank_cfg(tmp_path, judge="openai:gpt-4o", base_url=server.url)).judged == 0
    assert rank.run(rank_cfg(tmp_path, judge="openai:gpt-4o", base_url=server.url, retry_skipped=True)).judged == 2
    ids = winners.run(winners.ExportWinnersConfig(tmp_path / "rankings.jsonl", out=tmp_path / "w.txt"))
    assert ids == [max(g) for g in rank.make_groups(rank.load_stories(tmp_path / "stories.jsonl"), 4, 1337)]


def test_resume_after_a_crash_in_the_middle_of_ranking(tmp_path, fake_openai):
    write_stories(tmp_path / "stories.jsonl", 40)
    calls = {"n": 0}

    def flaky(request):  # three good answers, then the server goes down
        calls["n"] += 1
        return pick_largest(request) if calls["n"] <= 3 else (500, {"error": {"message": "down"}})

    server = fake_openai(flaky)
    cfg = rank_cfg(tmp_path, judge="openai:gpt-4o", base_url=server.url, max_retries=1, retry_delay=0.001)
    with pytest.raises(GhoulError, match="still fails"):
        rank.run(cfg)
    assert [r["group"] for r in read_jsonl(tmp_path / "rankings.jsonl")] == [0, 1, 2]
    with open(tmp_path / "rankings.jsonl", "a") as f:
        f.write('{"group": 3, "shown": [1, 2')  # a torn line, as a kill mid-append leaves it
    server.reply = pick_largest
    server.requests.clear()
    result = rank.run(cfg)
    assert (result.before, result.judged) == (3, 7) and len(server.requests) == 7
    records = read_jsonl(tmp_path / "rankings.jsonl")
    assert sorted(r["group"] for r in records) == list(range(10))
    assert all(r["chosen"] == max(r["shown"]) for r in records)


def test_the_key_is_sent_but_never_written(tmp_path, fake_openai, capsys):
    write_stories(tmp_path / "stories.jsonl", 8)
    server = fake_openai(pick_largest)
    assert main(["rank", "--stories", str(tmp_path / "stories.jsonl"), "--out", str(tmp_path / "rankings.jsonl"),
                 "--judge", "openai:gpt-4o", "--base-url", server.url]) == 0
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert main(["export", "winners", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / "w.txt")]) == 0
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    written = list(files_under(tmp_path))
    assert len(written) == 3 and all(KEY not in p.read_text() for p in written)


class Interrupting(Judge):
    """A person who judges two groups and then presses Ctrl-C."""

    name = "interrupting"

    def __init__(self) -> None:
        self.calls, self.closed = 0, False

    def judge(self, task, candidates):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return Judgment(0, "first", "1")

    def close(self):
        self.closed = True


def test_ctrl_c_keeps_what_was_ranked(tmp_path, capsys):
    write_stories(tmp_path / "stories.jsonl", 16)
    judge = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        rank.run(rank_cfg(tmp_path), judge=judge)
    assert judge.closed and len(read_jsonl(tmp_path / "rankings.jsonl")) == 2
    assert "rerun to judge the remaining 2" in capsys.readouterr().err
    assert rank.run(rank_cfg(tmp_path), judge=LengthJudge()).judged == 2


def test_rankings_of_other_groups_are_refused(tmp_path):
    write_stories(tmp_path / "stories.jsonl", 16)
    rank.run(rank_cfg(tmp_path, judge="random"))
    with pytest.raises(GhoulError, match="judgments of other groups"):
        rank.run(rank_cfg(tmp_path, judge="random", seed=99))
    with pytest.raises(GhoulError, match="too few stories"):
        rank.run(rank_cfg(tmp_path, judge="random", group_size=17, out=tmp_path / "r2.jsonl"))
    with pytest.raises(GhoulError, match="does not exist"):
        rank.run(rank.RankConfig(stories=tmp_path / "none.jsonl"))
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": 0, "prompt": "", "text": "x"}) + "\n")
    with pytest.raises(GhoulError, match="does not hold"):
        winners.run(winners.ExportWinnersConfig(tmp_path / "rankings.jsonl", tmp_path / "other.jsonl"))
