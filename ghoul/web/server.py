"""A local page's server: uvicorn in a background thread, shared by the ranking page and the story playground."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from ghoul.errors import GhoulError

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class ApiBody(BaseModel):
    """A JSON body of the pages' API, checked strictly: `true` is no story number, "1" no temperature, and numbers
    are finite; unknown keys are refused rather than ignored."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


def host_allowed(host: str, server: tuple[str, int] | None) -> bool:
    """Whether a request's Host header names this server: a loopback name or the address the request came in on,
    with the port it came in on. A page on the internet reaching us through DNS rebinding sends its own name."""
    if server is None:
        return False
    address, port = server
    host = host.lower()
    if host.startswith("["):  # an IPv6 address: [::1]:8766
        name, _, given = host.partition("]")
        name, given = name + "]", given.removeprefix(":")
    else:
        name, _, given = host.partition(":")
    local = f"[{address}]" if ":" in address else address
    return name in (*LOOPBACK_NAMES, local) and (given or "80") == str(port)


def page_app(title: str, page: str) -> FastAPI:
    """An app serving the page static/`page` at / and the pages' shared stylesheet; no API docs (local tools)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def only_this_host(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not host_allowed(request.headers.get("host", ""), request.scope.get("server")):
            return JSONResponse({"detail": "this page answers only at its own address, e.g. http://127.0.0.1:PORT/ "
                                           "or http://localhost:PORT/, not at another site's name"}, status_code=403)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input, and fails to render an infinite number (1e400) as JSON: a 500
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'the request'}: {e['msg']}"
                           for e in error.errors())
        return JSONResponse({"detail": detail}, status_code=422)

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
            # a port taken, or reserved (below 1024), is the port's fault; an address not of this machine the host's
            fix = ("give another --port" if e.errno in (errno.EADDRINUSE, errno.EACCES) else
                   "give an address of this machine as --host (127.0.0.1: this machine only; 0.0.0.0: every network)")
            raise GhoulError(f"cannot serve the page on {host}:{port} ({e.strerror}): {fix}") from None
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
