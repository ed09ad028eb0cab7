"""Drive an ASGI app with a hand-made scope: exact paths (httpx would resolve
`/../`), raw header bytes (newlines, bad Content-Length) and a body in
chunks, counting how many the app pulled."""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from fastapi import FastAPI, Request

from deployments.http import security


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunks_read: int = 0
    sent: list[dict] = field(default_factory=list)

    def header(self, name: str) -> Optional[str]:
        values = self.header_values(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v.decode("latin-1") for k, v in self.headers if k.decode("latin-1").lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app,
    path: str,
    *,
    method: str = "POST",
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    chunks: Iterable[bytes] = (b"",),
    root_path: str = "",
) -> Reply:
    def raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    return asyncio.run(call_async(app, path, method, [(raw(k).lower(), raw(v)) for k, v in headers], list(chunks), root_path))


async def call_async(app, path, method="POST", headers=(), chunks=(b"",), root_path="") -> Reply:
    """`call` inside the caller's task (and context)."""
    headers, chunks = list(headers), list(chunks)
    sent: list[dict] = []
    read = 0

    async def receive() -> dict:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": root_path, "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Reply(start["status"], list(start.get("headers", [])), body, read, sent)


def tiny_app(config: Optional[dict] = None, **options):
    """A FastAPI app with security.install(config): open /healthz and /readyz,
    and POST /v1/echo answering what the request looked like inside."""
    app = FastAPI()
    log = logging.getLogger("tests.tiny_app")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "live"}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"ready": True}

    @app.post("/v1/items")
    async def items(items: list[int]) -> dict:  # FastAPI reads and parses this body itself
        return {"count": len(items)}

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        log.info("echoing %d bytes", len(body))
        return {
            "bytes": len(body),
            "api_key_name": getattr(request.state, "api_key_name", None),
            "state_request_id": getattr(request.state, "request_id", None),
            "header_request_ids": request.headers.getlist("x-request-id"),
            "context_request_id": security.current_request_id.get(),
        }

    return security.install(app, {**(config or {}), **options})
