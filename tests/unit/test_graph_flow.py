"""How a graph runs in-process: sequence, switch, fan-out + merge, soft and
hard dependencies, timeouts, request validation. The nodes are real Python
callables given by import path (tests/graph_callables.py)."""
import asyncio

import pytest

from apps.graph import in_process
from deployments.errors import BackendTimeout, GraphError, InvalidInput
from deployments.graph.errors import NodeFailed, UnresolvedReference
from tests.graph_callables import graph_args, node, py, sequence


def run(args: dict, body: dict):
    return asyncio.run(in_process(args).run(body))


def test_a_sequence_passes_outputs_along():
    nodes = {"d": py("double", value="request.x"), "s": py("add", a="d", b="request.x")}
    answer = run(graph_args(nodes, sequence("d", "s"), {"doubled": "d", "sum": "s"}), {"x": 5})
    assert answer.output == {"doubled": 10, "sum": 15}
    assert set(answer.latency_ms) == {"d", "s", "total"}


def switch_graph() -> dict:
    nodes = {"d": py("double", value="request.x"), "e": py("echo", value="request.x"), "big": py("add", a="request.x", b="request.x")}
    switch = {
        "kind": "switch",
        "name": "picked",
        "cases": [
            {"when": {"field": "request.x", "op": "gt", "value": 100}, "then": node("big")},
            {"when": {"field": "request.x", "op": "gt", "value": 10}, "then": node("d")},
        ],
        "default": node("e"),
    }
    return graph_args(nodes, switch, {"y": "picked"})


@pytest.mark.parametrize(("x", "expected", "route"), [(500, 1000, "cases[0]"), (50, 100, "cases[1]"), (5, 5, "default")])
def test_a_switch_takes_the_first_case_that_holds_else_the_default(x, expected, route):
    answer = run(switch_graph(), {"x": x})
    assert answer.output == {"y": expected}
    assert answer.routes == {"picked": route}


def test_a_switch_on_an_absent_optional_field_takes_the_default():
    args = switch_graph()
    args["graph"]["request"]["segment"] = {"type": "str", "required": False}
    args["graph"]["flow"]["cases"][0]["when"] = {"field": "request.segment", "value": "vip"}
    answer = run(args, {"x": 5})
    assert answer.routes == {"picked": "default"}


def test_a_switch_condition_on_a_field_missing_at_run_time_fails_clearly():
    """A field inside a node's output that validation could not know."""
    nodes = {"s": py("scores", n="request.x"), "e": py("echo", value="request.x")}
    switch = {
        "kind": "switch",
        "name": "picked",
        "cases": [{"when": {"field": "s.segment", "value": 1}, "then": node("e")}],
        "default": node("e"),
    }
    with pytest.raises(UnresolvedReference) as caught:
        run(graph_args(nodes, sequence("s", switch), {"y": "picked"}), {"x": 2})
    assert caught.value.status == 500
    assert caught.value.message == "graph.flow.steps[1].cases[0].when.field: 's.segment' has no field 'segment' (fields: ['model', 'scores'])"


def test_fanout_runs_branches_concurrently_then_merges():
    nodes = {
        "a": py("sleep_then", value="request.x", seconds="request.delay"),
        "b": py("sleep_then", value="request.x", seconds="request.delay"),
        "m": py("add", a="a", b="b"),
    }
    request = {"x": {"type": "int"}, "delay": {"type": "float"}}
    fanout = {"kind": "fanout", "branches": [node("a"), node("b")], "merge": "m"}
    answer = run(graph_args(nodes, fanout, {"y": "m"}, request), {"x": 3, "delay": 0.3})
    assert answer.output == {"y": 6}
    assert answer.latency_ms["total"] < 500  # two 300 ms branches side by side, not 600 ms


def test_a_hard_failure_in_one_fanout_branch_cancels_the_other():
    nodes = {
        "slow": py("sleep_then", value="request.x", seconds="request.delay"),
        "bad": py("fail", value="request.x"),
        "m": py("add", a="slow", b="bad"),
    }
    request = {"x": {"type": "int"}, "delay": {"type": "float"}}
    fanout = {"kind": "fanout", "branches": [node("slow"), node("bad")], "merge": "m"}
    executor = in_process(graph_args(nodes, fanout, {"y": "m"}, request))

    async def go():
        started = asyncio.get_running_loop().time()
        with pytest.raises(NodeFailed):
            await executor.run({"x": 1, "delay": 5.0})
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(go()) < 1.0


def test_an_ensemble_merges_model_outputs_with_mean_scores():
    nodes = {
        "a": py("scores", n="request.x"),
        "b": py("scores", n="request.x", params={"offset": 1.0}),
        "mean": {"kind": "aggregate", "config": {"op": "mean_scores"}, "inputs": {"outputs": ["a", "b"]}},
    }
    fanout = {"kind": "fanout", "branches": [node("a"), node("b")], "merge": "mean"}
    answer = run(graph_args(nodes, fanout, {"y": "mean"}), {"x": 3})
    assert answer.output["y"]["scores"] == pytest.approx([0.5, 0.6, 0.7])
    assert [m["name"] for m in answer.output["y"]["models"]] == ["fake+0", "fake+1"]


def test_a_soft_node_s_failure_leaves_null_and_the_reason():
    nodes = {"d": py("double", value="request.x"), "bad": {**py("fail", value="d"), "dependency": "soft"}}
    answer = run(graph_args(nodes, sequence("d", "bad"), {"y": "d", "extra": "bad"}), {"x": 2})
    assert answer.output == {"y": 4, "extra": None}
    assert answer.errors == {"bad": "node bad failed: RuntimeError"}, "the class, not the text: that goes to the log"


def test_a_hard_node_s_failure_fails_the_request_with_a_clear_status(caplog):
    nodes = {"bad": py("fail", value="request.x")}
    with pytest.raises(NodeFailed) as caught:
        run(graph_args(nodes, sequence("bad"), {"y": "bad"}), {"x": 2})
    assert caught.value.status == 500
    assert caught.value.body() == {
        "error": {"code": "node_failed", "message": "node bad failed: RuntimeError", "node": "bad", "reason": "RuntimeError"}
    }
    # the exception's text (it may name hosts, files or data) is in the log, not the body
    assert "node bad failed: RuntimeError: this node always fails" in caplog.text


NODE_TIMEOUT_S = 0.2  # the slow node's timeout_s
NODE_SLEEP_S = 3.0  # how long the slow node would take: what a missed timeout waits
# The timeout's end: the event loop waking for the timer and the cancelled
# node unwinding, milliseconds; 0.3 s covers a busy 2-core host, far below
# NODE_SLEEP_S - NODE_TIMEOUT_S (a timeout not enforced).
SCHEDULING_TOLERANCE_S = 0.3


def slow_graph(dependency: str) -> dict:
    nodes = {
        "slow": {**py("sleep_then", value="request.x", seconds="request.delay"), "timeout_s": NODE_TIMEOUT_S, "dependency": dependency},
    }
    request = {"x": {"type": "int"}, "delay": {"type": "float"}}
    return graph_args(nodes, sequence("slow"), {"y": "slow"}, request)


def test_a_hard_node_past_its_timeout_is_a_503_after_exactly_the_timeout():
    executor = in_process(slow_graph("hard"))

    async def go():
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendTimeout) as caught:
            await executor.run({"x": 1, "delay": NODE_SLEEP_S})
        return caught.value, asyncio.get_running_loop().time() - started

    error, elapsed = asyncio.run(go())
    assert (error.status, error.code, error.details) == (503, "backend_timeout", {"backend": "slow", "timeout_s": NODE_TIMEOUT_S})
    assert NODE_TIMEOUT_S <= elapsed < NODE_TIMEOUT_S + SCHEDULING_TOLERANCE_S


def test_a_soft_node_past_its_timeout_is_null_with_the_reason():
    answer = run(slow_graph("soft"), {"x": 1, "delay": NODE_SLEEP_S})
    assert answer.output == {"y": None}
    assert answer.errors == {"slow": f"slow did not answer within {NODE_TIMEOUT_S} s"}


def test_a_node_within_its_timeout_answers():
    assert run(slow_graph("hard"), {"x": 1, "delay": 0.01}).output == {"y": 1}


def test_a_bad_request_is_a_422_naming_every_field():
    nodes = {"d": py("double", value="request.x")}
    with pytest.raises(InvalidInput) as caught:
        run(graph_args(nodes, sequence("d"), {"y": "d"}), {"x": "seven", "zz": 1})
    assert caught.value.status == 422
    assert caught.value.details["fields"] == [
        {"field": "x", "reason": "Input should be a valid integer"},
        {"field": "zz", "reason": "Extra inputs are not permitted"},
    ]


def test_lists_and_strings_are_bounded_when_the_graph_does_not_say_how():
    from deployments.graph.spec import DEFAULT_MAX_LIST_LENGTH, DEFAULT_MAX_STR_LENGTH

    request = {"x": {"type": "int"}, "ids": {"type": "list[int]", "default": []}, "note": {"type": "str", "default": ""},
               "tags": {"type": "list[str]", "default": []}, "short": {"type": "str", "default": "", "max_length": 3}}
    args = graph_args({"d": py("double", value="request.x")}, sequence("d"), {"y": "d"}, request=request)
    assert run(args, {"x": 1, "ids": [0] * DEFAULT_MAX_LIST_LENGTH, "note": "n" * DEFAULT_MAX_STR_LENGTH}).output == {"y": 2}
    too_much = {"x": 1, "ids": [0] * (DEFAULT_MAX_LIST_LENGTH + 1), "note": "n" * (DEFAULT_MAX_STR_LENGTH + 1),
                "tags": ["ok", "t" * (DEFAULT_MAX_STR_LENGTH + 1)], "short": "four"}
    with pytest.raises(InvalidInput) as caught:
        run(args, too_much)
    assert [f["field"] for f in caught.value.details["fields"]] == ["ids", "note", "tags[1]", "short"]
    assert all("at most" in f["reason"] for f in caught.value.details["fields"])


def test_a_class_callable_is_built_once_with_its_params():
    from tests.graph_callables import Counter

    Counter.calls.clear()
    nodes = {"c": py("Counter", params={"label": "one"}, value="request.x")}
    executor = in_process(graph_args(nodes, sequence("c"), {"y": "c"}))

    async def go():
        return [await executor.run({"x": i}) for i in range(3)]

    answers = asyncio.run(go())
    assert [a.output["y"] for a in answers] == [{"label": "one", "value": i} for i in range(3)]
    assert Counter.calls == {"one": 3}


def test_a_node_s_own_graph_error_keeps_its_status():
    """A node raising a GraphError (here 404 unknown entities) is not turned into a 500."""
    from deployments.errors import NotFound

    nodes = {"u": py("unknown_user", user_id="request.x")}
    with pytest.raises(NotFound) as caught:
        run(graph_args(nodes, sequence("u"), {"y": "u"}), {"x": 99})
    assert (caught.value.status, caught.value.details) == (404, {"missing": {"user_id": [99]}})
