"""The chat app's cap on choices per request (`max_n`): each choice is a
sequence the engine runs, and vLLM itself takes any `n`. Over the cap is a
400 in OpenAI's shape naming the field; at or under it, vLLM's app reads the
very bytes the client sent."""
import json

import pytest

from apps.chat import ChoicesLimit
from tests.unit.asgi_calls import call


async def echo_body(scope, receive, send):
    """A stand-in for vLLM's app: answers with the body it read."""
    chunks, message = [], {"more_body": True}
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"".join(chunks)})


def limited(max_n: int = 4) -> ChoicesLimit:
    return ChoicesLimit(echo_body, max_n=max_n)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("field", ["n", "best_of"])
def test_over_the_cap_is_400_naming_the_field(path, field):
    reply = call(limited(), path, chunks=[json.dumps({"model": "m", field: 5}).encode()])
    assert reply.status == 400
    assert reply.json() == {"error": {
        "message": f"{field} is 5; this server allows at most 4 choices per request",
        "type": "invalid_request_error", "param": field, "code": "too_many_choices",
    }}


def test_at_the_cap_the_app_reads_the_same_bytes_even_sent_in_chunks():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 4}).encode()
    reply = call(limited(), "/v1/chat/completions", chunks=[body[:10], body[10:30], body[30:]])
    assert reply.status == 200 and reply.body == body


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"n": true}', b'{"n": "9"}', b'{"n": 4.5}', b"{}"])
def test_what_is_not_an_integer_n_is_vllms_to_judge(body):
    reply = call(limited(), "/v1/completions", chunks=[body])
    assert reply.status == 200 and reply.body == body


def test_other_routes_and_methods_are_not_read():
    assert call(limited(max_n=1), "/v1/embeddings", chunks=[b'{"n": 9}']).body == b'{"n": 9}'
    assert call(limited(max_n=1), "/v1/chat/completions", method="GET", chunks=[b'{"n": 9}']).status == 200
    assert call(limited(max_n=1), "/tenant/v1/completions", root_path="/tenant", chunks=[b'{"n": 9}']).status == 400


def test_the_cap_is_configured_and_bounded():
    from pydantic import ValidationError

    from apps.chat import ChatArgs

    model = {"name": "smollm2", "registry_uri": "sqlite:///x.db"}
    assert ChatArgs.model_validate({"model": model}).max_n == 4
    with pytest.raises(ValidationError, match="max_n"):
        ChatArgs.model_validate({"model": model, "max_n": 0})
