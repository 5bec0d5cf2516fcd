"""`ghoul serve`: the token stream equals `GPT.generate`, and the page streams stories and sends them to ranking.

The browser test drives Debian's chromium (installed by .ci/setup-browser) through Playwright, offline.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from ghoul.checkpoint import load_model_and_tokenizer, save_model_dir
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig
from ghoul.web.playground import Playground, Server, create_app, stream_text, stream_tokens
from tests.web.test_ranking import CHROMIUM, CHROMIUM_ARGS

torch.set_num_threads(1)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name("tiny")).eval()


def test_the_stream_is_what_generate_gives_greedily():
    model = tiny()
    idx = torch.tensor([[5, 17, 300, 2]])
    # 140 new tokens run past block_size 128, so the cache is refilled from the cropped context as generate does
    expected = model.generate(idx, 140, temperature=0)[0, 4:].tolist()
    assert list(stream_tokens(model, idx, 140, temperature=0)) == expected


def test_a_seeded_sampled_stream_is_reproducible_and_stops_at_eos():
    model = tiny()
    idx = torch.tensor([[7, 8, 9]])

    def sample(seed: int, eos_id: int | None = None) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return list(stream_tokens(model, idx, 30, 1.0, top_k=50, top_p=0.9, eos_id=eos_id, generator=generator))

    first = sample(3)
    assert sample(3) == first and sample(4) != first
    assert first == model.generate(idx, 30, 1.0, 50, 0.9, generator=torch.Generator().manual_seed(3))[0, 3:].tolist()
    assert sample(3, eos_id=first[5]) == first[:first.index(first[5]) + 1]  # eos is yielded, then the stream ends


class Bytes:
    """A tokenizer whose tokens are single bytes, so that one character can take several tokens."""

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_pieces_never_split_a_character():
    tokens = list("a €b".encode()) + [0]  # € is three bytes
    ids: list[int] = []
    pieces = list(stream_text(Bytes(), iter(tokens), ids, eos_id=0))
    assert pieces == ["a", " ", "€", "b"] and bytes(ids).decode() == "a €b"


def test_a_missing_checkpoint_is_an_error(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_the_random_models_options_are_refused_with_a_checkpoint(tmp_path, capsys):
    for option in (["--model", "small"], ["--seed", "7"]):
        assert main(["serve", "--checkpoint", str(tmp_path), *option]) == 2
        assert f"{option[0]} is only read with a random model, without --checkpoint" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path), "--model", "small"]) == 2
    assert "--model is only read with a random model, without --checkpoint" in capsys.readouterr().err


@pytest.fixture
def served(tmp_path: Path):
    """The page of a tiny random model saved to a directory, served on a free port, as `ghoul serve` serves it."""
    save_model_dir(tiny(), tmp_path / "model")
    model, tokenizer = load_model_and_tokenizer(tmp_path / "model")
    playground = Playground(model, tokenizer, str(tmp_path / "model"), tmp_path / "out")
    server = Server(create_app(playground), "127.0.0.1", 0)
    yield server.url, playground
    server.close()


def test_a_port_or_host_that_cannot_be_served_says_which_to_change(served, tmp_path):
    """A port another server holds is the port's fault; an address that is not this machine's (or no address at
    all) is the host's, and asking for another port would not help."""
    port = int(served[0].rsplit(":", 1)[1].strip("/"))
    main_args = ["serve", "--checkpoint", str(tmp_path / "model"), "--out-dir", str(tmp_path / "out2")]
    for host, at_port, fix in (("127.0.0.1", port, "give another --port"), ("999.1.1.1", 0, "as --host"),
                               ("192.0.2.1", 0, "as --host")):  # 192.0.2.0/24: documentation only, never local
        with pytest.raises(GhoulError, match=f"cannot serve the page on {host}:{at_port} .*{fix}"):
            Server(create_app(served[1]), host, at_port)
    assert main([*main_args, "--host", "999.1.1.1", "--port", "0"]) == 2


def test_the_api_streams_json_lines_and_sends_a_group(served):
    url, playground = served
    with httpx.Client(base_url=url, timeout=30) as client:
        settings = {"prompt": "The door", "temperature": 0, "max_new_tokens": 8, "num_stories": 2}
        with client.stream("POST", "/api/generate", json=settings) as response:
            assert response.headers["content-type"].startswith("application/x-ndjson")
            events = [httpx.Response(200, content=line).json() for line in response.iter_lines() if line]
        assert events[0] == {"group": 1} and events[-1] == {"end": True, "group": 1}
        finals = [e["full"] for e in events if e.get("done")]
        assert len(finals) == 2 and finals[0] == finals[1]  # greedy: both stories alike
        assert "".join(e["text"] for e in events if e.get("story") == 0 and "text" in e) == finals[0]
        assert client.post("/api/generate", json={**settings, "top_p": 2}).status_code == 422
        sent = client.post("/api/send", json={"group": 1}).json()
        assert sent["ids"] == [0, 1] and "ghoul rank --stories" in sent["command"]
        assert client.post("/api/send", json={"group": 1}).status_code == 409  # sent twice
        assert client.post("/api/send", json={"group": 7}).status_code == 404
    records = read_jsonl(playground.stories_path)
    assert [r["text"] for r in records] == finals and records[0]["prompt"] == "The door"
    assert records[0]["sampling"] == {"temperature": 0.0, "top_k": None, "top_p": None, "max_new_tokens": 8}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium: "
                    "run .ci/setup-browser (apt-get install chromium) to run the browser test")
def test_a_person_reads_streamed_stories_and_sends_them_to_ranking(served):
    from playwright.sync_api import expect, sync_playwright

    url, playground = served
    prompt = "The cellar door"
    ids = playground.tokenizer.encode(prompt)
    greedy = playground.model.generate(torch.tensor([ids]), 24, temperature=0, eos_id=playground.tokenizer.eot_id)
    new = [t for t in greedy[0, len(ids):].tolist() if t != playground.tokenizer.eot_id]
    expected = playground.tokenizer.decode(new)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#model")).to_contain_text("model")
            page.locator("#prompt").fill(prompt)
            page.locator("#temperature").fill("0")
            page.locator("#max_new_tokens").fill("24")
            page.locator("#num_stories").fill("2")
            page.locator("#generate").click()
            expect(page.locator(".story")).to_have_count(2)
            expect(page.locator("#stories")).to_have_attribute("data-done", "true")
            texts = page.locator(".story .text").all_text_contents()
            assert texts == [prompt + expected] * 2
            expect(page.locator("#send")).to_be_enabled()
            page.locator("#send").click()
            expect(page.locator("#sent code")).to_contain_text("ghoul rank --stories")
        finally:
            browser.close()
    records = read_jsonl(playground.stories_path)
    assert [(r["id"], r["prompt"], r["text"]) for r in records] == [(0, prompt, expected), (1, prompt, expected)]
    assert all(r["seed"] == 1337 and r["checkpoint"] == playground.source for r in records)


@pytest.mark.parametrize("body, field", [
    ('{"temperature": NaN, "max_new_tokens": 2}', "temperature: Input should be a finite number"),
    ('{"temperature": Infinity, "max_new_tokens": 2}', "temperature: Input should be a finite number"),
    ('{"seed": 1e400, "max_new_tokens": 2}', "seed: Input should be a valid integer"),
    ('{"num_stories": true, "max_new_tokens": 2}', "num_stories: Input should be a valid integer"),
    ('{"temperature": "0.5", "max_new_tokens": 2}', "temperature: Input should be a valid number"),
    ('{"max_new_tokens": 2, "tempreature": 0.5}', "tempreature: Extra inputs are not permitted"),
])
def test_a_request_is_validated_before_the_stream_starts(served, body, field):
    url, playground = served
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/api/generate", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json() == {"detail": field}
        assert client.post("/api/send", json={"group": True}).status_code == 422


def test_only_requests_for_this_server_are_answered(served):
    url, playground = served
    port = httpx.URL(url).port
    with httpx.Client(base_url=url, timeout=30) as client:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", f"localhost.evil.example:{port}"):
            response = client.get("/api/info", headers={"Host": host})  # what a DNS-rebound page sends
            assert response.status_code == 403 and "own address" in response.json()["detail"], host
            assert client.post("/api/generate", json={"max_new_tokens": 2}, headers={"Host": host}).status_code == 403
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    assert not playground.stories_path.exists()
