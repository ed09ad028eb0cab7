"""One error shape for every HTTP app: `{"error": {"code", "message", ...}}`.

FastAPI's request validation (malformed JSON, missing or mistyped fields,
constraint violations) becomes 422 with a `fields` list naming each field
and the reason; a GraphError becomes its own status, body and headers.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from deployments.errors import GraphError, error_body
from deployments.field_paths import field_path


def request_field_path(loc: tuple) -> str:
    """FastAPI's ("body", "item_ids", 2) -> "item_ids[2]"; a body that is not JSON -> "body"."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    if not parts or (loc and loc[0] == "body" and isinstance(parts[0], int)):
        return "body"
    return field_path(parts)


def install(app: FastAPI) -> FastAPI:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": request_field_path(tuple(e.get("loc", ()))), "reason": e.get("msg", "invalid")} for e in exc.errors()]
        message = "; ".join(f"{f['field']}: {f['reason']}" for f in fields)
        return JSONResponse(error_body("project", "invalid_request", message, fields=fields), status_code=422)

    @app.exception_handler(GraphError)
    async def _graph_error(_: Request, exc: GraphError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    return app


class PrefixRoot:
    """ASGI middleware: a request for the app's route prefix itself
    (`POST /recommend` under `route_prefix: /recommend`) reaches the app's
    "/" route instead of Starlette's 307 redirect to `/recommend/`, which
    clients that POST do not follow."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("root_path") and scope["path"] == scope["root_path"]:
            scope = {**scope, "path": scope["path"] + "/", "raw_path": scope["path"].encode() + b"/"}
        await self.app(scope, receive, send)
