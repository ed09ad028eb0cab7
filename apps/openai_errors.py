"""OpenAI's error format for the chat app's own errors.

`ray.serve.llm` answers engine-side errors (bad sampling parameters, prompts
too long) as `{"error": {...}}` already; its ingress raises plain FastAPI
HTTPExceptions for unknown models, and request validation would be FastAPI's
422 `{"detail": ...}`. Clients of the OpenAI API expect

    {"error": {"message": ..., "type": ..., "param": ..., "code": <status>}}

with 400 for an invalid request, so both are rewritten here.
"""
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from apps.http_errors import field_path

ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 413: "BadRequestError"}


def openai_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "InternalServerError"), "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def install(app: FastAPI) -> FastAPI:
    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return openai_error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = field_path(tuple(first.get("loc", ())))
        message = "; ".join(f"{field_path(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors)
        return openai_error(400, message, param)

    return app
