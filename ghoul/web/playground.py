"""`ghoul serve`: a local page to write a prompt and read stories as the model writes them, token by token.

The page reads one streamed response per group of stories (JSON lines, read with fetch); a group can then be appended
to stories.jsonl in --out-dir, in `ghoul generate`'s record format, for `ghoul rank --judge web` to judge.
"""

from __future__ import annotations

import json
import sys
import threading
import webbrowser
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from ghoul.config import option, refuse_set, require
from ghoul.dist import resolve_device
from ghoul.errors import GhoulError
from ghoul.feedback.records import STORIES_FILE
from ghoul.files import append_jsonl, read_jsonl, repair_jsonl
from ghoul.generate import GenerateConfig, encode_prompt, model_and_tokenizer, story_seed
from ghoul.model import GPT, PRESETS
from ghoul.tokenizer import Tokenizer
from ghoul.web.server import ApiBody, Server, page_app

MAX_STORIES = 16  # stories per group the page may ask for; each is generated in turn
MAX_NEW_TOKENS = 4096


@dataclass
class ServeConfig:
    checkpoint: Path | None = option(None, "model directory to sample from (default: a random --model preset)")
    model: str = option("tiny", "preset to initialise randomly when no --checkpoint is given", choices=list(PRESETS))
    out_dir: Path = option(Path("."), "directory whose stories.jsonl the page's 'send to ranking' appends to")
    host: str = option("127.0.0.1", "address to serve the page on (127.0.0.1: this machine only)")
    port: int = option(8766, "port of the page (0: any free port)")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    seed: int = option(1337, "seed of a random --model's weights")
    open_browser: bool = option(False, "open the page in a browser")

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not Path(self.checkpoint).is_dir():
            raise GhoulError(f"checkpoint {self.checkpoint} is not a directory: give a model directory written by "
                             "training (or leave out --checkpoint for a random --model preset)")
        if self.checkpoint is not None:
            refuse_set(self, ("model", "seed"), "a random model, without --checkpoint")
        require(self, ("port",), lambda v: 0 <= v < 65536, "in 0..65535 (0: any free port)")
        if Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
            raise GhoulError(f"--out-dir {self.out_dir} is a file: give the directory for stories.jsonl")


def stream_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                  generator: torch.Generator | None = None) -> Iterator[int]:
    """Continue the single row of `idx` (1, T), yielding each new token id as soon as it is sampled: the steps of
    `GPT.generate`, so the stream equals its output; it stops after `eos_id`, which is yielded."""
    for next_id in model.sample_tokens(idx, max_new_tokens, temperature, top_k, top_p, generator):
        token = int(next_id.item())  # a CPU-GPU sync per token: the page wants each one at once anyway
        yield token
        if token == eos_id:
            return


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int], ids: list[int], eos_id: int | None = None
                ) -> Iterator[str]:
    """The new text of each token, the tokens before `eos_id` appended to `ids`. The whole continuation is decoded
    every time and a trailing U+FFFD is held back: it is usually the first bytes of a character the next token ends."""
    sent = ""
    for token in tokens:
        if token == eos_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids).rstrip("\ufffd")
        if text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent):]
            sent = text


class Settings(ApiBody):
    prompt: str = ""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 64
    seed: int = 1337
    num_stories: int = 1


class SendGroup(ApiBody):
    group: int


class Playground:
    """The model, its tokenizer and the groups of stories the page has made (kept until sent); thread-safe."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, source: str, out_dir: Path) -> None:
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.stories_path = Path(out_dir) / STORIES_FILE
        self.lock = threading.Lock()
        self.groups: dict[int, list[dict[str, Any]]] = {}
        self.sent: set[int] = set()
        self.next_group = 1

    def check(self, s: Settings) -> list[int]:
        """The prompt's token ids, once the settings pass `ghoul generate`'s checks; GhoulError otherwise."""
        GenerateConfig(prompt=s.prompt, num_samples=s.num_stories, max_new_tokens=s.max_new_tokens,
                       temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)
        if s.num_stories > MAX_STORIES or s.max_new_tokens > MAX_NEW_TOKENS:
            raise GhoulError(f"at most {MAX_STORIES} stories of {MAX_NEW_TOKENS} new tokens at a time")
        return encode_prompt(self.tokenizer, s.prompt, self.model.config.block_size)

    def generate(self, s: Settings, prompt_ids: list[int]) -> Iterator[dict[str, Any]]:
        """Events for the page: the group, each story's text pieces, each story's final text, the end."""
        with self.lock:
            group, self.next_group = self.next_group, self.next_group + 1
        yield {"group": group}
        device = self.model.lm_head.weight.device
        sampling = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new_tokens=s.max_new_tokens)
        records = []
        for i in range(s.num_stories):
            # one generator per story, seeded by (seed, story): a story does not depend on how many come before it
            generator = torch.Generator(device=device).manual_seed(story_seed(s.seed, i))
            idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
            eot, ids = self.tokenizer.eot_id, []
            tokens = stream_tokens(self.model, idx, s.max_new_tokens, s.temperature, s.top_k, s.top_p, eot, generator)
            for piece in stream_text(self.tokenizer, tokens, ids, eot):
                yield {"story": i, "text": piece}
            text = self.tokenizer.decode(ids)
            records.append(dict(prompt=s.prompt, text=text, checkpoint=self.source, sampling=sampling, seed=s.seed))
            yield {"story": i, "done": True, "full": text}  # the page shows this: any held-back bytes included
        with self.lock:
            self.groups[group] = records
        yield {"end": True, "group": group}

    def send(self, group: int) -> dict[str, Any]:
        """Append a finished group to stories.jsonl with fresh ids; returns the ids and the command to judge them."""
        with self.lock:
            if group in self.sent:
                raise GhoulError(f"group {group} is already in {self.stories_path}")
            if group not in self.groups:
                raise KeyError(group)
            self.stories_path.parent.mkdir(parents=True, exist_ok=True)
            taken = [r.get("id") if isinstance(r, dict) else None
                     for r in read_jsonl(self.stories_path, missing_ok=True)]
            if not all(isinstance(i, int) for i in taken):
                raise GhoulError(f"{self.stories_path} holds lines that are not stories (each has an integer id): "
                                 "serve with another --out-dir")
            if self.stories_path.exists():  # a torn last line is cut only once the complete ones are known ours
                repair_jsonl(self.stories_path, "id")
            first = max(taken, default=-1) + 1
            ids = list(range(first, first + len(self.groups[group])))
            for story_id, record in zip(ids, self.groups[group], strict=True):
                append_jsonl(self.stories_path, dict(id=story_id, **record))
            self.sent.add(group)
            del self.groups[group]
        size = max(2, min(len(ids), 4))
        command = f"ghoul rank --stories {self.stories_path} --judge web --group-size {size}"
        return {"ids": ids, "path": str(self.stories_path), "command": command}


def create_app(playground: Playground) -> FastAPI:
    """The page, the stream of one group of stories (JSON lines), and 'send to ranking'."""
    app = page_app("ghoul playground", "playground.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"checkpoint": playground.source, "block_size": playground.model.config.block_size,
                "stories": str(playground.stories_path)}

    @app.post("/api/generate")
    def generate(settings: Settings) -> StreamingResponse:
        try:
            prompt_ids = playground.check(settings)
        except GhoulError as e:
            raise HTTPException(422, str(e)) from None
        # a plain generator: Starlette iterates it in a worker thread, so the event loop stays free while it computes
        lines = (json.dumps(event) + "\n" for event in playground.generate(settings, prompt_ids))
        return StreamingResponse(lines, media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})

    @app.post("/api/send")
    def send(request: SendGroup) -> dict[str, Any]:
        try:
            return playground.send(request.group)
        except GhoulError as e:
            raise HTTPException(409, str(e)) from None
        except KeyError:
            raise HTTPException(404, f"no finished group {request.group}: generate it first") from None

    return app


def run(cfg: ServeConfig) -> None:
    """Serve the page until Ctrl-C."""
    device = resolve_device(cfg.device)
    model, tokenizer = model_and_tokenizer(cfg.checkpoint, cfg.model, device, cfg.seed)
    source = str(cfg.checkpoint) if cfg.checkpoint else f"random:{cfg.model}"
    server = Server(create_app(Playground(model, tokenizer, source, cfg.out_dir)), cfg.host, cfg.port)
    print(f"write prompts at {server.url} (stories sent to ranking go to {Path(cfg.out_dir) / STORIES_FILE}; "
          "Ctrl-C here stops)", file=sys.stderr, flush=True)
    if cfg.open_browser:
        webbrowser.open(server.url)
    try:
        while server.thread.is_alive():
            server.thread.join(0.5)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.close()
