"""The ranking page: `ghoul rank --judge web` serves the stories of one group side by side and a person clicks the best.

The rank loop blocks in `WebJudge.judge` until the page answers; the answer is appended to rankings.jsonl before the
page is shown the next group, so every click is on disk at once and closing the browser loses nothing.
"""

from __future__ import annotations

import sys
import threading
import webbrowser
from typing import Any

from fastapi import FastAPI, HTTPException

from ghoul.feedback.judges import JUDGE_KINDS, Judge, Judgment
from ghoul.web.server import ApiBody, Server, page_app


class RankingSession:
    """Hands one group at a time from the rank loop to the page, and the page's choice back; thread-safe."""

    def __init__(self, total: int) -> None:
        self.cond = threading.Condition()
        self.total, self.judged = total, 0
        self.group = 0  # sequence number of the group on show (0: none yet)
        self.task, self.stories = "", []
        self.answer: tuple[int | None, str] | None = None
        self.finished = False

    def _state(self) -> dict[str, Any]:
        waiting = self.group > 0 and self.answer is None and not self.finished
        return {"group": self.group if waiting else None, "task": self.task, "stories": self.stories if waiting else [],
                "judged": self.judged, "total": self.total, "done": self.finished}

    def state(self) -> dict[str, Any]:
        with self.cond:
            return self._state()

    def ask(self, task: str, stories: list[str]) -> tuple[int | None, str]:
        """Show a group and wait for the page's (choice, reason); choice None is a skip."""
        with self.cond:
            self.group += 1
            self.task, self.stories, self.answer = task, list(stories), None
            self.cond.notify_all()
            while self.answer is None:
                self.cond.wait(0.25)  # a timeout, so that Ctrl-C reaches the waiting main thread
            self.judged += 1
            return self.answer

    def submit(self, group: int, choice: int | None, reason: str) -> str:
        """Record the page's answer for `group`: "ok", "stale" (that group is no longer on show: a double click, a
        second tab) or "invalid" (no such story)."""
        with self.cond:
            if self.finished or group != self.group or self.answer is not None:
                return "stale"
            if choice is not None and not 0 <= choice < len(self.stories):
                return "invalid"
            self.answer = (choice, reason)
            self.cond.notify_all()
            return "ok"

    def next_state(self, group: int, timeout: float) -> dict[str, Any]:
        """The state once the rank loop has saved `group` and shown the next one (or finished)."""
        with self.cond:
            self.cond.wait_for(lambda: self.group != group or self.finished, timeout)
            return self._state()

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()


class Choice(ApiBody):
    group: int
    choice: int | None = None  # 0-based index as shown; None: skip
    reason: str = ""


def create_app(session: RankingSession) -> FastAPI:
    """The page and its two API calls: the current state, and a choice (answered with the next state)."""
    app = page_app("ghoul ranking", "rank.html")

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return session.state()

    @app.post("/api/choose")
    def choose(answer: Choice) -> dict[str, Any]:  # a plain def: FastAPI runs it in a worker thread, so it may block
        outcome = session.submit(answer.group, answer.choice, answer.reason[:2000])
        if outcome == "stale":
            raise HTTPException(409, "that group is no longer on show; reload the page")
        if outcome == "invalid":
            raise HTTPException(422, f"group {answer.group} has no story {answer.choice}")
        return session.next_state(answer.group, timeout=30.0)

    return app


class WebJudge(Judge):
    """A person in a browser: a local page served by uvicorn in a background thread."""

    name = "web"
    interactive = True  # the rank loop shows no progress bar: the page shows the progress

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = False) -> None:
        self.host, self.port, self.open_browser = host, port, open_browser
        self.session: RankingSession | None = None
        self.server: Server | None = None
        self.url: str | None = None

    def start(self, total: int) -> None:
        self.session = RankingSession(total)
        self.server = Server(create_app(self.session), self.host, self.port)
        self.url = self.server.url
        print(f"judge {total} groups at {self.url} (each click is saved at once; Ctrl-C here stops)",
              file=sys.stderr, flush=True)
        if self.open_browser:
            webbrowser.open(self.url)

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        if self.session is None:
            raise RuntimeError("WebJudge.start must be called before judge")
        choice, reason = self.session.ask(task, candidates)
        return Judgment(choice, reason, "skip" if choice is None else f"click {choice + 1}")

    def close(self) -> None:
        if self.session is not None:
            self.session.finish()  # the page's pending request answers "done"
        if self.server is not None:
            self.server.close()


JUDGE_KINDS["web"] = lambda _, host, port, open_browser, **__: WebJudge(host, port, open_browser=open_browser)
