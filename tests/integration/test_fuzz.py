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

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from local_stack.data import N_ITEMS, N_USERS

pytestmark = pytest.mark.integration

EXAMPLES = 60  # per operation and mode
# The recommend graph's valid inputs are split between random entities (mostly
# unknown: 404) and the local stack's own (the success path), so the request
# count, and the runtime, stay those of EXAMPLES positive examples.
KNOWN_EXAMPLES = EXAMPLES // 2
# Every drawn user and item exists (local_stack/data.py, all materialized), so
# all of them should answer 200; the slack is for a rare 4xx this test did not
# foresee, not for a broken success path (which answers none).
MIN_KNOWN_OK_SHARE = 0.9
SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)


def fuzz(base_url: str, schema_url: str, check, **options) -> dict[str, int]:
    """Every operation of the app's live schema (see fuzz_operations)."""
    return fuzz_operations(base_url, schemathesis.openapi.from_url(schema_url, timeout=10), check, **options)


def fuzz_operations(base_url: str, schema, check, paths: tuple[str, ...] | None = None, examples: int = EXAMPLES,
                    positive_examples: int | None = None) -> dict[str, int]:
    """The schema's operations (those under `paths`, or all), valid inputs
    then invalid ones (schemathesis' strategies driven by Hypothesis);
    `check(case, response)` asserts on each answer. Returns how many requests
    each operation got. `examples` per operation and mode, but
    `positive_examples` (when given) of valid inputs.

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
            count = positive_examples if mode == GenerationMode.POSITIVE and positive_examples is not None else examples

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(SETTINGS, max_examples=count)
            def one(case):
                response = case.call(base_url=base_url, timeout=60)
                sent[label] = sent.get(label, 0) + 1
                check(case, response)

            try:
                one()
            except Unsatisfiable:
                # No invalid input exists (GET /v2/models/{model}: any string is a
                # model name, answered 404 when it is not the graph's).
                if mode != GenerationMode.NEGATIVE:
                    raise
    return sent


def answers_clearly(case, response) -> None:
    """Below 500, and every error in the JSON error shape (422s name each
    field); the Open Inference Protocol's routes (/v2/...) in its own,
    `{"error": "<text>"}`, and a bad request there is a 400."""
    assert response.status_code < 500, f"{response.status_code} for {case.as_curl_command()}: {response.text[:300]}"
    if case.operation.path.startswith("/v2") and response.status_code >= 400:
        assert isinstance(response.json()["error"], str) and response.status_code != 422, response.text
        return
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), response.text
        if response.status_code == 422:
            assert all({"field", "reason"} <= set(f) for f in error["fields"]), response.text


def test_no_generated_request_breaks_the_recommend_graph(recommend_url):
    sent = fuzz(recommend_url, f"{recommend_url}/openapi.json", answers_clearly, positive_examples=EXAMPLES - KNOWN_EXAMPLES)
    print(f"\nrecommend fuzzed: {sent}")
    assert sent.get("POST /", 0) >= EXAMPLES  # the graph's request schema was there to fuzz
    assert sent.get("POST /v2/models/{model}/infer", 0) >= EXAMPLES  # and the protocol's infer request


def known_entities(max_items: int) -> st.SearchStrategy[dict]:
    """A user and candidate items the local stack has (ids 1..N_USERS, 1..N_ITEMS)."""
    return st.fixed_dictionaries({
        "user_id": st.integers(1, N_USERS),
        "item_ids": st.lists(st.integers(1, N_ITEMS), min_size=1, max_size=max_items, unique=True),
    })


def test_generated_requests_on_known_entities_are_ranked(recommend_url, serve_config):
    """The success path fuzzed: valid bodies from the live schema (k among
    them) with a user and items that exist, so the features, the ranker and
    the top-k all run. Explanations off: the LLM's latency is not what is
    fuzzed here (the random run above sends `explain` either way)."""
    request = serve_config["applications"][0]["args"]["graph"]["request"]
    schema = schemathesis.openapi.from_url(f"{recommend_url}/openapi.json", timeout=10)
    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == "/" and r.ok().method.upper() == "POST"]
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE), known=known_entities(request["item_ids"]["max_length"]))
    @settings(SETTINGS, max_examples=KNOWN_EXAMPLES)
    def one(case, known):
        # The schema's own fields only (it does not forbid others; the graph
        # does, with a 422), and a k the graph takes (an int64: larger is a 422).
        fields = {key: value for key, value in case.body.items() if key in request}
        if not (isinstance(fields.get("k"), int) and 0 < fields["k"] < 2**63):
            fields.pop("k", None)
        case.body = {**fields, **known, "explain": False}
        response = case.call(base_url=recommend_url, timeout=60)
        statuses[response.status_code] += 1
        answers_clearly(case, response)
        if response.status_code == 200:
            k = case.body.get("k", request["k"]["default"])
            assert len(response.json()["items"]) == min(k, len(case.body["item_ids"])), case.as_curl_command()

    one()
    print(f"\nrecommend fuzzed on known entities: {dict(statuses)}")
    sent = sum(statuses.values())
    assert sent >= KNOWN_EXAMPLES and not any(status >= 500 for status in statuses)
    assert statuses[200] >= MIN_KNOWN_OK_SHARE * sent, f"only {statuses[200]} of {sent} answered 200: {dict(statuses)}"


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
