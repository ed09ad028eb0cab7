"""The API's error bodies: one shape, naming the field and the reason."""
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.http import app as http_app
from pydantic import BaseModel, ConfigDict, StrictInt
from deployments.errors import BackendTimeout, BackendUnavailable, InvalidInput, NotFound


@pytest.mark.parametrize(
    "loc, path",
    [
        (("body", "k"), "k"),
        (("body", "item_ids", 2), "item_ids[2]"),
        (("body", 14), "body"),
        (("body",), "body"),
        (("query", "q"), "q"),
    ],
)
def test_field_path(loc, path):
    assert http_app.request_field_path(loc) == path


def test_error_bodies():
    assert InvalidInput("k", "must be > 0").body() == {
        "error": {"code": "invalid_request", "message": "k: must be > 0", "fields": [{"field": "k", "reason": "must be > 0"}]}
    }
    assert NotFound({"user_id": [9]}).body()["error"]["missing"] == {"user_id": [9]}
    assert BackendUnavailable("triton", "connection refused").status == 503
    assert BackendTimeout("triton", 0.5).body()["error"] == {
        "code": "backend_timeout",
        "message": "triton did not answer within 0.5 s",
        "backend": "triton",
        "timeout_s": 0.5,
    }


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: StrictInt
    item_ids: list[StrictInt]


def test_handlers_shape_fastapi_errors():
    app = http_app.install(FastAPI())

    @app.post("/r")
    async def r(request: RecommendRequest):
        raise BackendUnavailable("triton", "down")

    client = TestClient(app)
    bad = client.post("/r", json={"user_id": "x", "item_ids": [1]})
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"] == [{"field": "user_id", "reason": "Input should be a valid integer"}]
    down = client.post("/r", json={"user_id": 1, "item_ids": [1]})
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert down.json()["error"]["backend"] == "triton"


@pytest.mark.parametrize(
    "error",
    [BackendTimeout("triton", 0.5), BackendUnavailable("feast", "down"), NotFound({"item_id": [70001]}), InvalidInput("k", "must be > 0")],
    ids=lambda e: type(e).__name__,
)
def test_errors_cross_a_process_boundary_unchanged(error):
    """A node placed in its own deployment raises in another replica: the
    graph must answer with the same status, headers and body."""
    import pickle

    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert (again.status, again.headers, again.body()) == (error.status, error.headers, error.body())
