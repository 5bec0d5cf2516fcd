"""`ghoul rank` and `ghoul export winners`: reproducible groups, saved judgments, shuffling undone, crash and resume."""

from __future__ import annotations

import json
import os

import pytest

from ghoul.cli import main
from ghoul.config import build
from ghoul.data.sources import make_source
from ghoul.errors import GhoulError
from ghoul.feedback import rank, winners
from ghoul.feedback.judges import Judge, Judgment
from ghoul.feedback.records import RAW_LIMIT, full_text, load_stories
from ghoul.files import read_jsonl
from tests.conftest import fail_writes_after
from tests.feedback.conftest import KEY, completion, files_under, pick_largest, shown_numbers, write_stories


def rank_cfg(tmp_path, **kw) -> rank.RankConfig:
    return build(rank.RankConfig, **{"stories": tmp_path / "stories.jsonl", "out": tmp_path / "rankings.jsonl", **kw})


def test_groups_are_reproducible_and_share_a_prompt(tmp_path):
    stories = load_stories(write_stories(tmp_path / "stories.jsonl", 22, prompts=("A", "B")))
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
    stories = load_stories(tmp_path / "stories.jsonl")
    for r in records:
        assert set(r) >= {"group", "shown", "chosen", "judge", "reason", "raw", "time", "skipped"}
        assert r["judge"] == "length" and not r["skipped"]
        assert r["chosen"] == max(r["shown"], key=lambda i: (len(stories[i]["text"]), -r["shown"].index(i)))
    assert "judged 3 groups (0 skipped)" in capsys.readouterr().err

    assert main(["export", "winners", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / "winners.jsonl")]) == 0
    written = read_jsonl(tmp_path / "winners.jsonl")
    assert [(w["group"], w["id"]) for w in written] == [(r["group"], r["chosen"]) for r in records]
    docs = list(make_source("jsonl", tmp_path / "winners.jsonl"))  # what `ghoul prepare jsonl` reads
    assert docs == [full_text(stories[r["chosen"]]).strip() for r in records]
    capsys.readouterr()
    for out in ("rankings.jsonl", "stories.jsonl"):  # an input given as the output stays as it was
        before = (tmp_path / out).read_text()
        assert main(["export", "winners", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / out)]) == 2
        assert "is also an input" in capsys.readouterr().err and (tmp_path / out).read_text() == before
    # an earlier output is replaced; a file of another kind (judgments kept by hand) never is
    assert main(["export", "winners", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / "winners.jsonl")]) == 0
    kept = tmp_path / "human_rankings.jsonl"
    kept.write_text((tmp_path / "rankings.jsonl").read_text())
    assert main(["export", "winners", str(tmp_path / "rankings.jsonl"), "--out", str(kept)]) == 2
    assert "is not an earlier output of this command" in capsys.readouterr().err
    assert kept.read_text() == (tmp_path / "rankings.jsonl").read_text()


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
    groups = rank.make_groups(load_stories(tmp_path / "stories.jsonl"), 4, 5)
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
    assert ids == [max(g) for g in rank.make_groups(load_stories(tmp_path / "stories.jsonl"), 4, 1337)]


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
    assert rank.run(rank_cfg(tmp_path), judge=Interrupting()).judged == 2  # the same judge again: two calls left



def test_a_ctrl_c_as_a_judgment_is_saved_counts_it_in_the_summary(tmp_path, capsys, monkeypatch):
    """The Ctrl-C arrives just after the third judgment reached the file: the summary says 3, as the file holds."""
    import signal

    write_stories(tmp_path / "stories.jsonl", 16)
    append, saved = rank.append_jsonl, []

    def append_then_ctrl_c(path, record):
        append(path, record)
        saved.append(record)
        if len(saved) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(rank, "append_jsonl", append_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        rank.run(rank_cfg(tmp_path, judge="length"))
    assert len(read_jsonl(tmp_path / "rankings.jsonl")) == 3
    assert "judged 3 groups" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_rerun_with_another_judge_or_task_is_refused(tmp_path, capsys):
    """A rankings file holds one judge's picks for one task: a rerun that asks another is refused, not skipped as
    done (a complete file) or appended to (a partial one), which would pass off one judge's picks as another's."""
    write_stories(tmp_path / "stories.jsonl", 16)
    rank.run(rank_cfg(tmp_path, judge="length", max_groups=2))
    before = (tmp_path / "rankings.jsonl").read_text()
    args = ["rank", "--stories", str(tmp_path / "stories.jsonl"), "--out", str(tmp_path / "rankings.jsonl")]
    for changed, message in [(["--judge", "random"], "with the judge 'length', not 'random': rerun with --judge "
                                                     "length to continue it"),
                             (["--judge", "length", "--task", "Pick the funniest story."],
                              "with the task 'Pick the scariest story.', not 'Pick the funniest story.': rerun with "
                              "--task 'Pick the scariest story.' to continue it")]:
        capsys.readouterr()
        assert main([*args, *changed]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert (tmp_path / "rankings.jsonl").read_text() == before
    assert rank.run(rank_cfg(tmp_path, judge="length")).judged == 2  # the same judge goes on
    # an API judge is named with the server it asked: both options are what asks it again
    (tmp_path / "rankings.jsonl").write_text(before.replace('"judge": "length"', '"judge": "openai:m@http://h:1/v1"'))
    assert main(args) == 2
    assert "rerun with --judge openai:m --base-url http://h:1/v1 to continue it" in capsys.readouterr().err


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


def test_an_output_that_is_an_input_or_not_ours_is_never_cut(tmp_path):
    stories = write_stories(tmp_path / "stories.jsonl", 8)
    stories.write_bytes(stories.read_bytes().rstrip(b"\n"))  # a last story without its newline looks torn
    before = stories.read_bytes()
    with pytest.raises(GhoulError, match="is also an input"):
        rank.run(rank_cfg(tmp_path, judge="length", out=stories))
    assert stories.read_bytes() == before and len(load_stories(stories)) == 8
    for name, content in [("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00"),
                          ("blob.bin", b"\x00\x01\xfe\xff" * 64),
                          ("other.jsonl", before)]:  # another stories file: not judgments
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(GhoulError):  # each a one-line error, naming the file
            rank.run(rank_cfg(tmp_path, judge="length", out=path))
        assert path.read_bytes() == content, name


def rank_argv(tmp_path, out) -> list[str]:
    return ["rank", "--stories", str(tmp_path / "stories.jsonl"), "--out", str(out), "--judge", "length",
            "--group-size", "2"]


def without_times(path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "seconds")} for r in read_jsonl(path)]


def check_rankings_kept(capsys, out, expected) -> int:
    """The one-line error of a full disk, and only complete judgments, each as an uninterrupted run made it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ghoul rank: error: no space left on the device of") and "Traceback" not in err
    assert out.read_bytes().endswith(b"\n")
    kept = without_times(out)
    assert kept == expected[:len(kept)]
    return len(kept)


def test_a_full_disk_is_a_one_line_error_and_keeps_the_judgments(tmp_path, monkeypatch, capsys):
    write_stories(tmp_path / "stories.jsonl", 60)
    assert main(rank_argv(tmp_path, tmp_path / "full.jsonl")) == 0
    expected = without_times(tmp_path / "full.jsonl")
    monkeypatch.setattr(os, "write", fail_writes_after(4))
    assert main(rank_argv(tmp_path, tmp_path / "r.jsonl")) == 2
    monkeypatch.undo()
    assert check_rankings_kept(capsys, tmp_path / "r.jsonl", expected) == 4
    assert main(rank_argv(tmp_path, tmp_path / "r.jsonl")) == 0
    assert without_times(tmp_path / "r.jsonl") == expected


def test_a_real_full_disk_keeps_the_judgments(tmp_path, small_disk, capsys):
    write_stories(tmp_path / "stories.jsonl", 60)
    assert main(rank_argv(tmp_path, tmp_path / "full.jsonl")) == 0
    expected = without_times(tmp_path / "full.jsonl")
    disk = small_disk(64 * 1024, 4096)
    assert main(rank_argv(tmp_path, disk / "r.jsonl")) == 2
    assert 0 < check_rankings_kept(capsys, disk / "r.jsonl", expected) < 30
    (disk / "filler").unlink()
    assert main(rank_argv(tmp_path, disk / "r.jsonl")) == 0
    assert without_times(disk / "r.jsonl") == expected


def test_a_huge_skipped_answer_is_stored_as_an_excerpt(tmp_path, fake_openai):
    write_stories(tmp_path / "stories.jsonl", 4)
    answer = "I cannot decide. " * 200_000  # 3.4 MB that is no answer
    server = fake_openai(lambda request: (200, completion(answer)))
    result = rank.run(rank_cfg(tmp_path, judge="openai:gpt-4o", base_url=server.url, parse_retries=0))
    assert result.skipped == 1
    record = read_jsonl(tmp_path / "rankings.jsonl")[0]
    assert record["skipped"] and record["raw"].startswith("I cannot decide.") and len(record["raw"]) < 2100
    assert record["raw"].endswith(f"[... {len(answer) - RAW_LIMIT:,} more characters cut]")
    assert (tmp_path / "rankings.jsonl").stat().st_size < 5000
