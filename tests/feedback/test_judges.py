"""Judges: strict parsing of answers, the baselines, the terminal judge, and the OpenAI judge against a local server."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import socket

import pytest

from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.feedback.judges import (
    HumanJudge,
    JudgeOptions,
    LengthJudge,
    OpenAIJudge,
    RandomJudge,
    check_judge,
    make_judge,
    parse_answer,
)
from tests.feedback.conftest import KEY, completion, pick_largest, shown_numbers, write_stories

STORIES = [f" story number {n} " for n in (3, 11, 7, 5)]


@pytest.mark.parametrize("text, k, expected", [
    ('{"best": 2, "reason": "creepy"}', 4, (2, "creepy")),
    ('```json\n{"best": 4}\n```', 4, (4, "")),
    ("Story B builds dread best. BEST_ANSWER:[B]", 4, (2, "")),
    ("BEST_ANSWER: [ d ]", 4, (4, "")),
])
def test_parse_answer_accepts_json_and_the_seed_form(text, k, expected):
    assert parse_answer(text, k) == expected


@pytest.mark.parametrize("text, k, why", [
    ('{"best": 5}', 4, "not between 1 and 4"),
    ('{"best": 0}', 4, "not between 1 and 4"),
    ('{"best": "2"}', 4, "no integer"),
    ('{"best": true}', 4, "no integer"),
    ('{"best": 2, "reason": 3}', 4, "not a string"),
    ('{"best": 2', 4, "not valid JSON"),
    ("I like story 2", 4, "neither"),
    ('The best is {"best": 2}', 4, "neither"),
    ("BEST_ANSWER:[E]", 4, "not among the 4"),
    ("BEST_ANSWER:[A] or BEST_ANSWER:[C]", 4, "several"),
    ("", 4, "neither"),
])
def test_parse_answer_rejects_what_it_cannot_read(text, k, why):
    with pytest.raises(ValueError, match=why):
        parse_answer(text, k)


def test_baselines():
    texts = ["short", "the longest of them all", "medium one", "the longest of them all"]
    assert LengthJudge().judge("task", texts).best == 1  # ties: the first
    picks = [RandomJudge(seed).judge("task", texts).best for seed in range(40)]
    assert set(picks) == {0, 1, 2, 3}  # every position comes up
    assert RandomJudge(7).judge("task", texts).best == RandomJudge(7).judge("task", texts).best
    with pytest.raises(GhoulError, match="unknown judge 'oracle'"):
        make_judge("oracle")
    with pytest.raises(GhoulError, match="only openai takes a model"):
        make_judge("length:big")


def test_human_judge_reads_a_choice_a_skip_and_a_stop():
    answers = iter(["7", "nope", "3 the ending got me", "s", "q"])
    out = io.StringIO()
    judge = HumanJudge(read=lambda prompt: next(answers), out=out)
    j = judge.judge("Pick the scariest story.", STORIES)
    assert (j.best, j.reason) == (2, "the ending got me")
    assert "[4]  story number 5" not in out.getvalue() and "[4] story number 5" in out.getvalue()
    assert "type a number from 1 to 4" in out.getvalue()
    assert judge.judge("task", STORIES).best is None
    with pytest.raises(KeyboardInterrupt):
        judge.judge("task", STORIES)


def test_human_judge_without_a_terminal_is_a_usage_error_and_end_of_input_later_stops():
    def closed(prompt):
        raise EOFError

    with pytest.raises(GhoulError, match="reads its answers from a terminal.*--judge web"):
        HumanJudge(read=closed, out=io.StringIO()).judge("task", STORIES)
    answers = iter(["2"])
    judge = HumanJudge(read=lambda prompt: next(answers, None) or closed(prompt), out=io.StringIO())
    assert judge.judge("task", STORIES).best == 1
    with pytest.raises(KeyboardInterrupt):  # input that ends after answers stops the run, keeping them
        judge.judge("task", STORIES)


def test_openai_judge_request_shape_key_and_shuffle(fake_openai):
    server = fake_openai(pick_largest)
    judge = OpenAIJudge("gpt-4o", server.url, seed=1)
    j = judge.judge("Pick the scariest story.", STORIES)
    assert j.best == 1  # story number 11, wherever it was shown
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "gpt-4o" and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    system = body["messages"][0]["content"]
    assert '{"best": N, "reason": "..."}' in system and "1 to 4" in system
    assert "Pick the scariest story." in body["messages"][1]["content"]
    shown = shown_numbers(body)
    assert [int(STORIES[i].split()[2]) for i in j.shown] == shown  # the recorded order is the order shown
    assert j.usage == {"prompt_tokens": 100, "completion_tokens": 10}
    orders = {tuple(judge.judge("task", STORIES[i:] + STORIES[:i]).shown) for i in range(4)}
    assert len(orders) > 1  # the order shown varies between groups


def test_openai_judge_retries_rate_limits_and_server_errors(fake_openai):
    script = iter([(429, {"error": {"message": "slow down"}}), (500, {"error": {"message": "oops"}}),
                   (503, {"error": {"message": "busy"}})])

    def reply(request):
        return next(script, None) or pick_largest(request)

    server = fake_openai(reply)
    judge = OpenAIJudge("gpt-4o", server.url, max_retries=3, retry_delay=0.001)
    assert judge.judge("task", STORIES).best == 1
    assert len(server.requests) == 4

    failing = fake_openai(lambda request: (500, {"error": {"message": "down"}}))
    judge = OpenAIJudge("gpt-4o", failing.url, max_retries=2, retry_delay=0.001)
    with pytest.raises(GhoulError, match="still fails after 3 tries") as e:
        judge.judge("task", STORIES)
    assert len(failing.requests) == 3 and KEY not in str(e.value) and "listening" not in str(e.value)

    with socket.socket() as s:  # a port that nothing listens on: the server was never started
        s.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(GhoulError, match=f"still fails after 2 tries \\(APIConnectionError\\): is a server listening "
                                         f"at {nowhere}\\?"):
        OpenAIJudge("gpt-4o", nowhere, max_retries=1, retry_delay=0.001).judge("task", STORIES)

    refusing = fake_openai(lambda request: (401, {"error": {"message": "bad key"}}))
    with pytest.raises(GhoulError, match="refused the request \\(401"):
        OpenAIJudge("gpt-4o", refusing.url, retry_delay=0.001).judge("task", STORIES)
    assert len(refusing.requests) == 1  # not retried

    page = fake_openai(lambda request: (200, "<!doctype html><title>my server</title>"))  # --base-url without /v1
    with pytest.raises(GhoulError, match="did not answer with a chat completion: check --base-url"):
        OpenAIJudge("gpt-4o", page.url, retry_delay=0.001).judge("task", STORIES)


def test_openai_judge_reasks_unparseable_answers_then_skips(fake_openai):
    answers = iter(["Story two, clearly.", '{"best": 9}', '{"best": 3, "reason": "ok"}'])
    server = fake_openai(lambda request: (200, completion(next(answers))))
    j = OpenAIJudge("gpt-4o", server.url, parse_retries=2).judge("task", STORIES)
    assert j.best == j.shown[2] and j.reason == "ok"
    assert [r["body"]["temperature"] for r in server.requests] == [0, 1.0, 1.0]
    assert j.usage["completion_tokens"] == 30  # every answer's tokens are counted

    never = fake_openai(lambda request: (200, completion('{"best": 5}')))
    j = OpenAIJudge("gpt-4o", never.url, parse_retries=1).judge("task", STORIES)
    assert j.best is None and j.raw == '{"best": 5}' and "not between 1 and 4" in j.reason
    assert len(never.requests) == 2


def test_openai_judge_needs_a_key_only_for_openai(monkeypatch, fake_openai):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(GhoulError, match="set OPENAI_API_KEY"):
        OpenAIJudge("gpt-4o")
    server = fake_openai(pick_largest)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = make_judge("openai:llama3", base_url=server.url, json_mode=False)
    assert judge.judge("task", STORIES).best == 1 and judge.name == f"openai:llama3@{server.url}"
    assert "response_format" not in server.requests[0]["body"]
    assert judge.cost({"prompt_tokens": 10**6}) is None  # a local server: no API price
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    gpt4o = OpenAIJudge("gpt-4o")  # no request is made until a judgment
    assert gpt4o.cost({"prompt_tokens": 10**6, "completion_tokens": 10**5}) == pytest.approx(2.5 + 1.0)


def test_build_messages_number_the_stories_in_order():
    from ghoul.feedback.judges import build_messages

    messages = build_messages("Pick one.", ["a", "b"])
    assert json.dumps(messages).index("Story 1") < json.dumps(messages).index("Story 2")


def test_a_judge_that_cannot_work_here_is_refused_before_any_work(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for spec, message in [("gpt4", "unknown judge 'gpt4'"), ("length:long", "only openai takes a model name"),
                          ("reward", "needs the reward model's directory"),
                          (f"reward:{tmp_path / 'none'}", "does not exist: train a reward model"),
                          ("openai:gpt-4o", "set OPENAI_API_KEY")]:
        with pytest.raises(GhoulError, match=message):
            check_judge(spec)
    check_judge("openai:llama3.1", base_url="http://127.0.0.1:11434/v1")  # a local server needs no key
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(GhoulError, match="the web judge needs uvicorn: pip install 'ghoul\\[feedback\\]'"):
        check_judge("web")
    # the commands that generate or train before they judge check first
    out = tmp_path / "run"
    assert main(["pipeline", "--data-dir", str(tmp_path), "--judge", "openai:gpt-4o", "--output-dir", str(out)]) == 2
    assert "set OPENAI_API_KEY" in capsys.readouterr().err and not out.exists()
    assert main(["rlhf", "--base-model", str(tiny_model), "--judge", "openai:gpt-4o", "--output-dir", str(out)]) == 2
    assert "set OPENAI_API_KEY" in capsys.readouterr().err and not out.exists()


def with_usage(usage: object) -> dict:
    return {**completion('{"best": 2, "reason": "ok"}'), "usage": usage}


@pytest.mark.parametrize("body, why", [
    (b'{"choices": [{"message": {"content": "{\\"best\\": 2', "not valid JSON"),
    ({"choices": [{"index": 0, "finish_reason": "stop"}]}, 'a choice without a "message"'),
    ({"choices": [{"message": "story 2"}]}, 'a choice without a "message"'),
    ({"choices": "story 2"}, 'no "choices" list'),
    ({"choices": [{"message": {"content": 2}}]}, '"content" is not text'),
])
def test_a_broken_server_answer_is_a_one_line_error(fake_openai, tmp_path, capsys, body, why):
    server = fake_openai(lambda request: (200, body))
    with pytest.raises(GhoulError, match=f"did not answer with a chat completion.*{why}"):
        OpenAIJudge("gpt-4o", server.url, retry_delay=0.001).judge("task", STORIES)
    write_stories(tmp_path / "stories.jsonl", 4)
    assert main(["rank", "--stories", str(tmp_path / "stories.jsonl"), "--out", str(tmp_path / "r.jsonl"),
                 "--judge", "openai:gpt-4o", "--base-url", server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert why in err[-1] and "Traceback" not in err


@pytest.mark.parametrize("usage, prompt_tokens", [({"prompt_tokens": "100", "completion_tokens": "many"}, 0),
                                                  ("lots", 0), ({"prompt_tokens": 1.5, "completion_tokens": True}, 0),
                                                  (None, 0), ({"prompt_tokens": 7, "completion_tokens": "x"}, 7)])
def test_token_counts_that_are_no_numbers_are_left_out(fake_openai, usage, prompt_tokens):
    server = fake_openai(lambda request: (200, with_usage(usage)))
    j = OpenAIJudge("gpt-4o", server.url).judge("task", STORIES)
    assert j.best == j.shown[1] and j.usage == {"prompt_tokens": prompt_tokens, "completion_tokens": 0}


@pytest.mark.parametrize("option, value, message", [
    ("retry_delay", float("nan"), "--retry-delay must be in [0, 86400] seconds, got nan"),
    ("retry_delay", 1e300, "--retry-delay must be in [0, 86400] seconds"),
    ("timeout", float("inf"), "--timeout must be in (0, 86400] seconds, got inf"),
    ("max_retries", -1, "--max-retries must be >= 0, got -1"),
])
def test_an_api_judges_waits_are_refused_unless_finite(option, value, message):
    """time.sleep and the HTTP client failed on them with a traceback, after the stories were made."""
    with pytest.raises(GhoulError, match=re.escape(message)):
        JudgeOptions(judge="openai:gpt-4o", **{option: value})
