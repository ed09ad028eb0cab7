"""A tiny HTTP endpoint on loopback whose answers a test flips at will:
healthy, a JSON 503 (the apps' error shape, with Retry-After), a plain-text
500, slow, or failing every other request. The load tests (fault runs and
the benchmarks' figures) drive it to see what a load client records.
"""
from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.servers import free_port

JSON_503 = {"error": {"code": "overloaded", "message": "too many requests in flight"}}


class Toggle:
    """The endpoint a live test drives: `mode` decides the next answers."""

    def __init__(self, slow_s: float) -> None:
        self.mode = "healthy"
        self.slow_s = slow_s
        self.served_503: list[float] = []  # monotonic times: the span the server actually failed
        self.answered = 0

    async def work(self, request: Request) -> Response:
        await request.body()
        mode = self.mode
        if mode == "every_other":  # one of two replicas still failing
            self.answered += 1
            mode = "failing" if self.answered % 2 else "healthy"
        if mode == "failing":
            self.served_503.append(time.monotonic())
            return JSONResponse(JSON_503, status_code=503, headers={"Retry-After": "1"})
        if mode == "unclear":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        return JSONResponse({"items": [1, 2, 3]})


class ToggleServer:
    """uvicorn in a thread on 127.0.0.1, stopped (and joined) on exit."""

    def __init__(self, slow_s: float = 0.8) -> None:
        self.toggle = Toggle(slow_s)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/work"
        app = Starlette(routes=[Route("/work", self.toggle.work, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"toggle-uvicorn-{port}", daemon=True)

    def __enter__(self) -> ToggleServer:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            self.__exit__(None, None, None)
            raise RuntimeError(f"uvicorn did not start on {self.url}")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        assert not self.thread.is_alive(), "uvicorn thread did not stop"
