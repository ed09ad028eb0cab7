"""Schema-driven fuzzing (schemathesis) of the served HTTP APIs.

Schemathesis reads each app's live /openapi.json and sends what it
generates from it: valid bodies and, in its negative phase, bodies that break
the schema (wrong types, missing and extra fields, out-of-range numbers,
nulls, huge lists). Whatever it sends, the app must answer below 500, every
error in its JSON error shape, and stay healthy afterwards. The recommend
graph's schema is the graph's own request model (deployments/graph/serving.py,
`document_request`).
"""
from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

pytestmark = pytest.mark.integration

EXAMPLES = 60  # per operation and mode


def fuzz(base_url: str, schema_url: str, check) -> dict[str, int]:
    """Every operation of the app's live schema (see fuzz_operations)."""
    return fuzz_operations(base_url, schemathesis.openapi.from_url(schema_url, timeout=10), check)


def fuzz_operations(base_url: str, schema, check, paths: tuple[str, ...] | None = None, examples: int = EXAMPLES) -> dict[str, int]:
    """The schema's operations (those under `paths`, or all), valid inputs
    then invalid ones (schemathesis' strategies driven by Hypothesis);
    `check(case, response)` asserts on each answer. Returns how many requests
    each operation got.

    Not through schemathesis' pytest plugin, whose lazy loading (from_fixture)
    fails under this pytest; the strategies are the same."""
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if paths is not None and operation.path not in paths:
            continue
        label = f"{operation.method.upper()} {operation.path}"
        takes_input = bool(operation.body) or any(True for _ in operation.iter_parameters())
        # Nothing to break in an operation without a body or parameters (GET /healthz).
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
            def one(case):
                response = case.call(base_url=base_url, timeout=60)
                sent[label] = sent.get(label, 0) + 1
                check(case, response)

            one()
    return sent


def answers_clearly(case, response) -> None:
    """Below 500, and every error in the JSON error shape (422s name each field)."""
    assert response.status_code < 500, f"{response.status_code} for {case.as_curl_command()}: {response.text[:300]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), response.text
        if response.status_code == 422:
            assert all({"field", "reason"} <= set(f) for f in error["fields"]), response.text


def test_no_generated_request_breaks_the_recommend_graph(recommend_url):
    sent = fuzz(recommend_url, f"{recommend_url}/openapi.json", answers_clearly)
    print(f"\nrecommend fuzzed: {sent}")
    assert sent.get("POST /", 0) >= EXAMPLES  # the graph's request schema was there to fuzz


def test_the_recommend_graph_is_healthy_after_the_fuzzing(recommend_url):
    assert httpx.get(f"{recommend_url}/readyz", timeout=10).status_code == 200
    answer = httpx.post(recommend_url, json={"user_id": 7, "item_ids": [1, 2, 3], "k": 2, "explain": False}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["items"]) == 2


CHAT_OPERATIONS = ("/v1/models", "/v1/completions", "/v1/chat/completions")


def answers_in_openai_shape(case, response) -> None:
    """Below 500, and every error in OpenAI's shape (what the openai client parses)."""
    assert response.status_code < 500, f"{response.status_code} for {case.as_curl_command()}: {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{response.status_code} {response.text[:300]} for {case.as_curl_command()}"
        assert isinstance(body["error"].get("message"), str) and "type" in body["error"], response.text


def test_no_generated_request_breaks_the_chat_api(chat_url):
    """vLLM's own OpenAI schema, the three routes clients use; generated
    `max_tokens` are capped by the engine's max_model_len (a longer one is a 400)."""
    base = chat_url.removesuffix("/v1")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    sent = fuzz_operations(base, schema, answers_in_openai_shape, paths=CHAT_OPERATIONS, examples=15)
    print(f"\nchat fuzzed: {sent}")
    assert sent.get("POST /v1/chat/completions", 0) >= 15
    assert httpx.get(f"{chat_url}/models", timeout=10).status_code == 200
