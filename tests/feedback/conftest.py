"""Fixtures of the feedback tests: a tiny model, a stories file, and a local OpenAI-compatible chat server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from ghoul.checkpoint import save_model_dir
from ghoul.files import append_jsonl
from ghoul.model import GPT, GPTConfig

KEY = "sk-test-9f8e7d6c5b4a-DO-NOT-WRITE"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny model's ops are microseconds long, and on a busy machine OpenMP's threads spend
    far longer waiting for each other than computing (a 20x slowdown measured on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised `tiny` model directory with GPT-2's tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", seed=0)


def save_tiny_model(path: Path, seed: int) -> Path:
    """A `tiny` model directory initialised from `seed` (GPT-2's tokenizer)."""
    torch.manual_seed(seed)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), path)
    return path


def write_stories(path: Path, n: int, prompts: tuple[str, ...] = ("In the attic",)) -> Path:
    """`n` stories whose texts carry their number, so a fake judge can pick by it (the larger the scarier)."""
    for i in range(n):
        text = f" story number {i} " + "boo " * (i % 5)
        append_jsonl(path, dict(id=i, prompt=prompts[i % len(prompts)], text=text, checkpoint="test",
                                sampling={}, seed=0))
    return path


def shown_numbers(request: dict[str, Any]) -> list[int]:
    """The story numbers in a chat request, in the order the judge was shown them."""
    user = request["messages"][-1]["content"]
    return [int(n) for n in re.findall(r"story number (\d+)", user)]


def completion(content: str, model: str = "gpt-4o") -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}


class FakeServer:
    """Speaks POST /v1/chat/completions; `reply(request) -> (status, body)` decides each answer (a body of bytes is
    sent as it is, as JSON)."""

    def __init__(self, reply: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []  # {"path", "headers", "body"}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append({"path": self.path, "headers": headers, "body": body})
                status, answer = server.reply(body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()  # bytes: sent as they are
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_openai(monkeypatch) -> Iterator[Callable[..., FakeServer]]:
    """Start fake servers with a given reply function; the API key is set in the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    servers: list[FakeServer] = []

    def start(reply: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> FakeServer:
        servers.append(FakeServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def pick_largest(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A judge that always picks the story with the largest number, answering its position as shown."""
    numbers = shown_numbers(request)
    position = numbers.index(max(numbers)) + 1
    return 200, completion(json.dumps({"best": position, "reason": "the largest number"}))


def files_under(path: Path) -> Iterator[Path]:
    return (p for p in path.rglob("*") if p.is_file())
