"""The web judge: `ghoul rank --judge web` serves a page; each click is on disk before the next group is shown.

The browser test drives Debian's chromium (installed by .ci/setup-browser) through Playwright, offline.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ghoul.config import build
from ghoul.feedback import rank
from ghoul.feedback.records import load_stories
from ghoul.files import read_jsonl
from ghoul.web.ranking import WebJudge
from tests.feedback.conftest import write_stories

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class Ranking:
    """`ghoul rank --judge web` running in a thread, as the command runs it, on a free port."""

    def __init__(self, tmp_path: Path, stories: int = 12) -> None:
        write_stories(tmp_path / "stories.jsonl", stories)
        self.out = tmp_path / "rankings.jsonl"
        self.stories = load_stories(tmp_path / "stories.jsonl")
        self.judge = WebJudge("127.0.0.1", 0)
        self.cfg = build(rank.RankConfig, stories=tmp_path / "stories.jsonl", out=self.out, judge="web")
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while self.judge.url is None and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.judge.url, f"the ranking page did not start: {self.outcome}"
        self.url: str = self.judge.url

    def _run(self) -> None:
        try:
            self.outcome["result"] = rank.run(self.cfg, self.judge)
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            self.outcome["error"] = e

    def finish(self) -> rank.RankResult:
        self.thread.join(timeout=20)
        assert not self.thread.is_alive() and "error" not in self.outcome, self.outcome
        return self.outcome["result"]

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.out) if self.out.exists() else []


def story_id(text: str) -> int:
    return int(re.search(r"story number (\d+)", text).group(1))


def test_the_page_api_saves_each_choice_before_answering(tmp_path):
    ranking = Ranking(tmp_path)
    with httpx.Client(base_url=ranking.url, timeout=30) as client:
        assert "<title>ghoul: judge the stories</title>" in client.get("/").text
        state = client.get("/api/state").json()
        assert (state["group"], state["judged"], state["total"], state["done"]) == (1, 0, 3, False)
        assert state["task"] == "Pick the scariest story." and len(state["stories"]) == 4
        shown = [story_id(t) for t in state["stories"]]

        after = client.post("/api/choose", json={"group": 1, "choice": 2, "reason": "the cellar"}).json()
        records = ranking.records()  # on disk by the time the answer came back
        assert len(records) == 1 and records[0]["chosen"] == shown[2] and records[0]["shown"] == shown
        assert records[0]["judge"] == "web" and records[0]["reason"] == "the cellar"
        assert (after["group"], after["judged"]) == (2, 1)

        assert client.post("/api/choose", json={"group": 1, "choice": 0}).status_code == 409  # a double click
        assert client.post("/api/choose", json={"group": 2, "choice": 4}).status_code == 422  # no such story
        assert client.post("/api/choose", json={"group": 2, "choice": None}).json()["group"] == 3  # skip
        final = client.post("/api/choose", json={"group": 3, "choice": 0}).json()
        assert final["done"] and final["judged"] == 3
    result = ranking.finish()
    assert (result.judged, result.skipped) == (3, 1)
    assert [r["skipped"] for r in ranking.records()] == [False, True, False]
    with pytest.raises(httpx.ConnectError):
        httpx.get(ranking.url, timeout=2)  # the server stops with the ranking


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium: "
                    "run .ci/setup-browser (apt-get install chromium) to run the browser test")
def test_a_person_ranks_in_a_headless_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ranking = Ranking(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(ranking.url)
            picks = page.locator("button.pick")
            expect(picks).to_have_count(4)
            expect(page.locator("#task")).to_have_text("Pick the scariest story.")
            shown = [story_id(t) for t in page.locator(".story .text").all_inner_texts()]
            picks.nth(1).click()
            expect(page.locator("#progress")).to_have_text("judged 1 of 3")
            assert [r["chosen"] for r in ranking.records()] == [shown[1]]

            page.close()  # the person closes the browser: nothing is lost, the same group waits
            page = browser.new_page()
            page.goto(ranking.url)
            expect(page.locator("#progress")).to_have_text("judged 1 of 3")
            expect(page.locator("button.pick")).to_have_count(4)
            shown = [story_id(t) for t in page.locator(".story .text").all_inner_texts()]
            page.locator("#reason").fill("the ending")
            page.locator("button.pick").nth(3).click()
            expect(page.locator("#progress")).to_have_text("judged 2 of 3")
            assert ranking.records()[-1]["chosen"] == shown[3] and ranking.records()[-1]["reason"] == "the ending"

            shown = [story_id(t) for t in page.locator(".story .text").all_inner_texts()]
            page.keyboard.press("3")  # keys pick too
            expect(page.locator("#message")).to_contain_text("All groups are judged")
            assert ranking.records()[-1]["chosen"] == shown[2]
        finally:
            browser.close()
    result = ranking.finish()
    assert result.judged == 3 and result.skipped == 0
    records = ranking.records()
    assert [r["group"] for r in records] == [0, 1, 2] and all(r["judge"] == "web" for r in records)


def test_the_page_api_checks_types_and_hosts(tmp_path):
    ranking = Ranking(tmp_path, stories=8)
    port = httpx.URL(ranking.url).port
    with httpx.Client(base_url=ranking.url, timeout=30) as client:
        for answer in ({"group": 1, "choice": True}, {"group": 1, "choice": 1.0}, {"group": "1", "choice": 1},
                       {"group": 1, "choice": 1, "reason": 5}):
            response = client.post("/api/choose", json=answer)
            assert response.status_code == 422 and isinstance(response.json()["detail"], str), answer
        response = client.post("/api/choose", json={"group": 1, "choice": 1}, headers={"Host": f"evil.example:{port}"})
        assert response.status_code == 403
        assert ranking.records() == []  # nothing was recorded: no story 2 for `true`
        assert client.post("/api/choose", json={"group": 1, "choice": 1}).json()["group"] == 2
        assert client.post("/api/choose", json={"group": 2, "choice": None}).json()["done"]
    ranking.finish()
    assert [r["skipped"] for r in ranking.records()] == [False, True]
