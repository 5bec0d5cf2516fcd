"""Judges: given a task and k candidate texts, pick the best one (with a reason when the judge gives one).

One small interface for every kind of judge: a model behind an OpenAI-compatible API, a person at a terminal or in
a browser (`ghoul.web.ranking`), and the `random` and `length` baselines that put the others' agreement in context.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import random
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ghoul.config import option, refuse_set, require
from ghoul.errors import GhoulError

API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_JUDGE = "openai:gpt-4o"
JUDGES = ("openai:MODEL", "reward:DIR", "human", "web", "random", "length")
JUDGES_HELP = ("openai:MODEL (needs OPENAI_API_KEY, or --base-url), reward:DIR (a reward model), human (terminal), web "
               "(browser page), random or length")
# What each kind of judge measures, in plain words, for the report: a win-rate means no more than its judge.
JUDGE_MEASURES = {
    "length": "picks the longest story: a baseline that measures length, not quality",
    "random": "picks at random: the chance level any judge should beat",
    "openai": "a language model reading the stories and picking the one that best answers the task",
    "reward": "a reward model trained on earlier judgments, standing in for the judge it learned from",
    "human": "a person reading the stories in a terminal",
    "web": "a person reading the stories in a browser",
}


API_OPTIONS = ("base_url", "max_retries", "retry_delay", "parse_retries", "timeout", "json_mode")
WEB_OPTIONS = ("host", "port", "open_browser")
DAY = 86_400  # seconds: the longest wait an API judge's options may ask for


@dataclass
class JudgeOptions:
    """Who judges and on what task; an API judge's server, retries and time limits; the web judge's page."""

    judge: str | None = option(DEFAULT_JUDGE, JUDGES_HELP)
    task: str = option("Pick the scariest story.", "what the judge is asked to do")
    base_url: str | None = option(None, "OpenAI-compatible server for openai:MODEL, e.g. http://127.0.0.1:8000/v1 "
                                  "(vLLM, llama.cpp, Ollama)")
    max_retries: int = option(5, "retries of a request after a rate limit or server error")
    retry_delay: float = option(1.0, "seconds before the first retry; doubled after each")
    parse_retries: int = option(2, "times an unparseable answer is asked again before the group is skipped")
    timeout: float = option(60.0, "seconds to wait for one API answer")
    json_mode: bool = option(True, "ask the server for a JSON object (response_format); turn off for servers "
                             "that reject it")
    host: str = option("127.0.0.1", "address of the web judge's page (127.0.0.1: this machine only)")
    port: int = option(8765, "port of the web judge's page (0: any free port)")
    open_browser: bool = option(False, "open the web judge's page in a browser")

    def __post_init__(self) -> None:
        require(self, ("port",), lambda v: 0 <= v < 65536, "in 0..65535 (0: any free port)")
        require(self, ("max_retries", "parse_retries"), lambda v: v >= 0, ">= 0")
        # seconds that time.sleep and the HTTP client take: NaN, inf or 1e300 failed there with a traceback
        require(self, ("retry_delay",), lambda v: 0 <= v <= DAY, f"in [0, {DAY}] seconds")
        require(self, ("timeout",), lambda v: 0 < v <= DAY, f"in (0, {DAY}] seconds")
        kind = (self.judge or "").partition(":")[0]
        if kind != "openai":
            refuse_set(self, API_OPTIONS, "--judge openai:MODEL")
        if kind != "web":
            refuse_set(self, WEB_OPTIONS, "--judge web")

    def check(self) -> None:
        """Refuse now a judge that cannot work here (see check_judge)."""
        check_judge(self.judge, self.base_url)

    def make(self, seed: int) -> Judge:
        options = {name: getattr(self, name) for name in (*API_OPTIONS, *WEB_OPTIONS)}  # make_judge's keywords
        return make_judge(self.judge, seed=seed, **options)

    @property
    def name(self) -> str:
        """The name the judge records with each judgment, known before it is made."""
        return judge_name(self.judge, self.base_url)


def judge_name(spec: str, base_url: str | None = None) -> str:
    """A judge's name in rankings.jsonl: its spec, and for an API judge the server it asked."""
    return spec + (f"@{base_url}" if base_url and spec.startswith("openai:") else "")


def judge_flags(name: str) -> str:
    """The options that ask the judge `judge_name` called `name` again."""
    spec, _, base_url = name.partition("@") if name.startswith("openai:") else (name, "", "")
    return f"--judge {shlex.quote(spec)}" + (f" --base-url {shlex.quote(base_url)}" if base_url else "")


def judge_measures(spec: str) -> str:
    """What the judge `spec` (e.g. openai:gpt-4o) measures, in words."""
    return JUDGE_MEASURES.get(spec.partition(":")[0], "a judge ghoul does not know (its judgments came from elsewhere)")

# USD per million (input, output) tokens, from https://openai.com/api/pricing (2025); other models: no estimate.
PRICES = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "gpt-4.1": (2.00, 8.00),
          "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1-nano": (0.10, 0.40)}


@dataclass
class Judgment:
    best: int | None  # index into the candidates as given; None: no choice was made (recorded as skipped)
    reason: str = ""
    raw: str = ""  # the answer as the judge gave it: the model's text, the line typed, the click
    shown: list[int] = field(default_factory=list)  # candidate indices in the order shown (empty: as given)
    usage: dict[str, int] = field(default_factory=dict)  # API tokens spent, summed over retries


class Judge:
    """The interface: `judge(task, candidates)`; `start` and `close` bracket a ranking session."""

    name: str = "judge"
    interactive: bool = False  # a person answers: the ranking loop shows no progress bar

    def start(self, total: int) -> None:
        """Called once before the first of `total` groups (the web judge starts its server here)."""

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        raise NotImplementedError

    def close(self) -> None:
        """Called once after the last group, also after an interruption."""

    def cost(self, usage: dict[str, int]) -> float | None:
        """Estimated USD for `usage` tokens; None when the judge costs nothing or its price is unknown."""
        return None


def content_rng(seed: int, candidates: list[str]) -> random.Random:
    """A generator seeded by the seed and the texts: the same group gets the same draw in a resumed run."""
    digest = hashlib.sha256(json.dumps([seed, candidates]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


class RandomJudge(Judge):
    """A uniformly random pick: the agreement any judge should beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        best = content_rng(self.seed, candidates).randrange(len(candidates))
        return Judgment(best, "random pick", str(best + 1))


class LengthJudge(Judge):
    """The longest text wins (ties: the first): a crude baseline, since judges are known to favour length."""

    name = "length"

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        best = max(range(len(candidates)), key=lambda i: (len(candidates[i]), -i))
        return Judgment(best, f"longest ({len(candidates[best])} characters)", str(best + 1))


class HumanJudge(Judge):
    """A person at a terminal (works over ssh): shows the k texts and reads the number of the best."""

    name = "human"
    interactive = True  # no progress bar: it would garble the prompt

    def __init__(self, read: Callable[[str], str] = input, out: TextIO | None = None) -> None:
        self.read, self.out = read, out or sys.stdout
        self.shown, self.total, self.heard = 0, 0, False

    def start(self, total: int) -> None:
        self.total = total

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        k = len(candidates)
        self.shown += 1
        print(f"\n{'=' * 72}\ngroup {self.shown} of {self.total or '?'}: {task}\n", file=self.out)
        for i, text in enumerate(candidates, 1):
            print(f"[{i}] {text.strip()}\n", file=self.out)
        while True:
            try:
                line = self.read(f"best story 1-{k} (a reason may follow), s to skip, q to stop: ").strip()
                self.heard = True
            except EOFError:
                if not self.heard:  # no terminal (a batch job, input from /dev/null): nobody to ask
                    raise GhoulError("--judge human reads its answers from a terminal, and standard input ended "
                                     "before the first one: run it in a terminal, or use --judge web") from None
                line = "q"  # end of input: stop as if asked to, keeping what was judged
            if line.lower() in ("q", "quit"):
                raise KeyboardInterrupt
            if line.lower() in ("s", "skip"):
                return Judgment(None, "skipped by the judge", line)
            number, _, reason = line.partition(" ")
            if number.isdigit() and 1 <= int(number) <= k:
                return Judgment(int(number) - 1, reason.strip(), line)
            print(f"type a number from 1 to {k}, s or q", file=self.out)


# ---- a model behind an OpenAI-compatible chat completions API ----------------------------------------------------

SYSTEM_PROMPT = ("You judge short stories written by a small language model. Read every story, then answer with only "
                 'a JSON object {{"best": N, "reason": "..."}}, where N is the number (1 to {k}) of the story you pick '
                 "and the reason is one short sentence.")


def build_messages(task: str, stories: list[str]) -> list[dict[str, str]]:
    """The chat messages that show `stories` numbered from 1, in the order given."""
    shown = "\n\n".join(f"Story {i}:\n<<<\n{text.strip()}\n>>>" for i, text in enumerate(stories, 1))
    return [{"role": "system", "content": SYSTEM_PROMPT.format(k=len(stories))},
            {"role": "user", "content": f"{task}\n\n{shown}\n\n{task} Answer with the JSON object only."}]


def parse_answer(text: str, k: int) -> tuple[int, str]:
    """(1-based position, reason) from `{"best": N, "reason": "..."}` (optionally in a ```json fence), or from the
    seed's `BEST_ANSWER:[X]` letter form; ValueError saying why otherwise. Nothing is guessed."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    body = fenced.group(1) if fenced else body
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg})") from None
        best = obj.get("best") if isinstance(obj, dict) else None
        if isinstance(best, bool) or not isinstance(best, int):
            raise ValueError('no integer "best" in the JSON object')
        reason = obj.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError('"reason" is not a string')
        if not 1 <= best <= k:
            raise ValueError(f"best {best} is not between 1 and {k}")
        return best, reason
    letters = set(re.findall(r"BEST_ANSWER:\s*\[\s*([A-Za-z])\s*\]", text))
    if len(letters) == 1:
        best = ord(letters.pop().upper()) - ord("A") + 1
        if not 1 <= best <= k:
            raise ValueError(f"BEST_ANSWER letter {chr(ord('A') + best - 1)} is not among the {k} stories")
        return best, ""
    if len(letters) > 1:
        raise ValueError("several different BEST_ANSWER letters")
    raise ValueError('neither a JSON object {"best": N} nor BEST_ANSWER:[X]')


class OpenAIJudge(Judge):
    """A chat model behind the OpenAI API or any compatible server (vLLM, llama.cpp's server, Ollama).

    The stories are shown in a shuffled order, recorded in the judgment, so that position bias can be measured and
    undone. Rate limits and server errors are retried with exponential back-off; an answer that stays unparseable
    after `parse_retries` re-asks is returned as no choice. The key is read from OPENAI_API_KEY and kept in memory.
    """

    def __init__(self, model: str = "gpt-4o", base_url: str | None = None, *, seed: int = 0, max_retries: int = 5,
                 retry_delay: float = 1.0, parse_retries: int = 2, timeout: float = 60.0, json_mode: bool = True,
                 max_tokens: int = 300) -> None:
        try:
            import openai  # the optional extra ghoul[feedback]
        except ImportError:
            raise GhoulError("the openai judge needs the openai package: pip install 'ghoul[feedback]'") from None
        key = api_key(base_url)
        self.openai = openai
        # local servers ignore the key but the client requires one; retries are ours, with back-off we can tune
        self.client = openai.OpenAI(api_key=key or "unused", base_url=base_url, max_retries=0, timeout=timeout)
        self.model, self.base_url, self.seed, self.json_mode, self.max_tokens = model, base_url, seed, json_mode, \
            max_tokens
        self.max_retries, self.retry_delay, self.parse_retries = max_retries, retry_delay, parse_retries
        self.name = judge_name(f"openai:{model}", base_url)

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        shown = list(range(len(candidates)))
        content_rng(self.seed, candidates).shuffle(shown)
        messages = build_messages(task, [candidates[i] for i in shown])
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        answer, why = "", ""
        for attempt in range(1 + self.parse_retries):
            # at temperature 0 a malformed answer tends to come back unchanged: re-ask with some randomness
            answer = self._complete(messages, 0.0 if attempt == 0 else 1.0, usage)
            try:
                position, reason = parse_answer(answer, len(candidates))
            except ValueError as e:
                why = str(e)
                continue
            return Judgment(shown[position - 1], reason, answer, shown, usage)
        return Judgment(None, f"unparseable after {1 + self.parse_retries} answers: {why}", answer, shown, usage)

    def _complete(self, messages: list[dict[str, str]], temperature: float, usage: dict[str, int]) -> str:
        """One answer's text, retrying rate limits, server errors and dropped connections with back-off."""
        extra: dict[str, Any] = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        where = f"the judge at {self.base_url or 'OpenAI'}"
        for attempt in range(self.max_retries + 1):
            try:  # the raw body, read by read_completion: the client trusts a server's JSON and fails deep inside
                response = self.client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=self.max_tokens, **extra)
                break
            except (self.openai.RateLimitError, self.openai.InternalServerError, self.openai.APIConnectionError) as e:
                if attempt == self.max_retries:
                    unreached = isinstance(e, self.openai.APIConnectionError) and self.base_url
                    hint = f"is a server listening at {self.base_url}? " if unreached else ""
                    raise GhoulError(f"{where} still fails after {attempt + 1} tries ({_describe(e)}): {hint}judged "
                                     "groups are saved, rerun later to go on") from None
                time.sleep(self._delay(attempt, e))
            except self.openai.APIStatusError as e:
                raise GhoulError(f"{where} refused the request ({_describe(e)}): check the model name, --base-url "
                                 f"and {API_KEY_ENV}") from None
        try:
            text, counts = read_completion(response.text)
        except ValueError as e:  # e.g. a web page, from a --base-url that lacks /v1, or a broken server
            raise GhoulError(f"{where} did not answer with a chat completion: check --base-url (an OpenAI-compatible "
                             f"API's address usually ends in /v1); its answer {e}") from None
        for key, n in counts.items():
            usage[key] += n
        return text

    def _delay(self, attempt: int, error: Exception) -> float:
        """Exponential back-off from retry_delay, or the server's Retry-After when it asks for a longer wait."""
        delay = self.retry_delay * 2 ** attempt
        response = getattr(error, "response", None)
        after = response.headers.get("retry-after") if response is not None else None
        if after and after.replace(".", "", 1).isdigit():
            delay = max(delay, min(float(after), 60.0))
        return delay

    def cost(self, usage: dict[str, int]) -> float | None:
        price = PRICES.get(self.model) if self.base_url is None else None
        if price is None:
            return None
        return (usage.get("prompt_tokens", 0) * price[0] + usage.get("completion_tokens", 0) * price[1]) / 1e6


def read_completion(body: str) -> tuple[str, dict[str, int]]:
    """The answer's text and its token counts from a chat completion's JSON body; ValueError saying what is wrong.
    No choice, or a message without content (a refusal), is an empty answer: re-asked, then skipped."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("is not valid JSON") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise ValueError('has no "choices" list')
    text = ""
    if choices:
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if not isinstance(message, dict):
            raise ValueError('has a choice without a "message"')
        text = message.get("content") or ""
        if not isinstance(text, str):
            raise ValueError('has a message whose "content" is not text')
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    # a count that is no whole number (a string, a float) is left out: it would only spoil the cost estimate
    counts = {key: n for key in ("prompt_tokens", "completion_tokens")
              if isinstance(n := usage.get(key), int) and not isinstance(n, bool) and n >= 0}
    return text, counts


def _describe(error: Exception) -> str:
    """A short description of an API error: its status code and class, never the request (which holds the key)."""
    status = getattr(error, "status_code", None)
    return f"{status} {type(error).__name__}" if status else type(error).__name__


def make_judge(spec: str, *, seed: int = 0, base_url: str | None = None, max_retries: int = 5,
               retry_delay: float = 1.0, parse_retries: int = 2, timeout: float = 60.0, json_mode: bool = True,
               host: str = "127.0.0.1", port: int = 8765, open_browser: bool = False) -> Judge:
    """The judge named by `spec`: openai[:MODEL], reward:DIR, human, web, random or length."""
    check_judge(spec, base_url)
    kind, _, model = spec.partition(":")
    if kind == "openai":
        return OpenAIJudge(model or "gpt-4o", base_url, seed=seed, max_retries=max_retries, retry_delay=retry_delay,
                           parse_retries=parse_retries, timeout=timeout, json_mode=json_mode)
    judges_here = {"random": lambda: RandomJudge(seed), "length": LengthJudge, "human": HumanJudge}
    if kind in judges_here:
        return judges_here[kind]()
    # by name, not by an import statement: those modules stand above this one (the reward model needs torch, the
    # web page the optional fastapi and uvicorn, which check_judge has found), and register their kind on import
    importlib.import_module(JUDGE_MODULES[kind])
    return JUDGE_KINDS[kind](model, host=host, port=port, open_browser=open_browser)


# judges defined in modules above this one, which register a factory `(argument, **page options) -> Judge` here
JUDGE_MODULES = {"reward": "ghoul.feedback.reward", "web": "ghoul.web.ranking"}
JUDGE_KINDS: dict[str, Callable[..., Judge]] = {}


def api_key(base_url: str | None) -> str | None:
    """The OpenAI key from the environment; only a local server (--base-url) may do without one."""
    key = os.environ.get(API_KEY_ENV)
    if not key and base_url is None:
        raise GhoulError(f"set {API_KEY_ENV} to use the OpenAI judge, or give --base-url of a local "
                         "OpenAI-compatible server")
    return key


def check_judge(spec: str, base_url: str | None = None) -> None:
    """Refuse a judge that cannot work here, cheaply, so that commands can check before they generate or train: an
    unknown name, a missing key or package, a reward model directory that is not there."""
    kind, _, arg = spec.partition(":")
    if kind not in {j.split(":")[0] for j in JUDGES}:
        raise GhoulError(f"unknown judge '{spec}'; judges: {', '.join(JUDGES)}")
    if arg and kind not in ("openai", "reward"):
        raise GhoulError(f"judge '{spec}': only openai takes a model name (openai:MODEL), and reward a directory")
    if kind == "reward" and not arg:
        raise GhoulError("judge 'reward' needs the reward model's directory: reward:DIR")
    if kind == "reward" and not Path(arg).is_dir():
        raise GhoulError(f"judge '{spec}': {arg} does not exist: train a reward model with `ghoul reward train`")
    if kind == "openai":
        api_key(base_url)
    missing = [m for m in {"openai": ["openai"], "web": ["fastapi", "uvicorn"]}.get(kind, [])
               if importlib.util.find_spec(m) is None]
    if missing:
        raise GhoulError(f"the {kind} judge needs {' and '.join(missing)}: pip install 'ghoul[feedback]'")
