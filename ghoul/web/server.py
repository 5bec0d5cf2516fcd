"""A local page's server: uvicorn in a background thread, shared by the ranking page and the story playground."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from ghoul.errors import GhoulError

STATIC = Path(__file__).parent / "static"


def page_app(title: str, page: str) -> FastAPI:
    """An app serving the page static/`page` at / and the pages' shared stylesheet; no API docs (local tools)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (STATIC / page).read_text(encoding="utf-8")

    @app.get("/ghoul.css")
    def stylesheet() -> Response:
        return Response((STATIC / "ghoul.css").read_text(encoding="utf-8"), media_type="text/css")

    return app


class Server:
    """uvicorn in a background thread, on a socket bound here so that port 0 gives a known free port."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise GhoulError(f"cannot serve the page on {host}:{port} ({e.strerror}): give another --port") from None
        port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise GhoulError(f"the page did not start on {host}:{port}")
        self.url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}/"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
