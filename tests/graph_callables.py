"""Small real nodes for the graph tests, used as `kind: python` callables by
import path (the same way a user plugs in their own code)."""
from __future__ import annotations

import asyncio


def echo(value):
    return value


def add(a, b):
    return a + b


def double(value):
    return value * 2


def scores(n, offset=0.0):
    """A model-like output: n scores and a model name."""
    return {"scores": [offset + i / 10 for i in range(n)], "model": {"name": f"fake+{offset:g}", "version": "1", "alias": "x"}}


async def sleep_then(value, seconds):
    await asyncio.sleep(seconds)
    return value


def fail(value=None):
    raise RuntimeError("this node always fails")


def unknown_user(user_id):
    from deployments.errors import NotFound

    raise NotFound({"user_id": [user_id]})


BATCHES: list[list] = []  # what batched_double was called with, call by call


async def batched_double(value: list) -> list:
    """A batched callable (`batch:` on its node): a list per input, a list of results."""
    BATCHES.append(list(value))
    await asyncio.sleep(0.01)  # a backend call: other requests gather meanwhile
    return [ValueError(f"{v} is negative") if v < 0 else v * 2 for v in value]


class Counter:
    """A stateful callable: counts its calls (an instance per node)."""

    calls: dict[str, int] = {}

    def __init__(self, label):
        self.label = label

    def __call__(self, value):
        Counter.calls[self.label] = Counter.calls.get(self.label, 0) + 1
        return {"label": self.label, "value": value}


# ---- helpers that write graph specs for the tests (plain dicts, as in a config)


def py(callable_name: str, params: dict | None = None, **inputs) -> dict:
    """A `kind: python` node calling tests.graph_callables:<callable_name>."""
    node = {"kind": "python", "config": {"callable": f"tests.graph_callables:{callable_name}"}, "inputs": inputs}
    if params:
        node["config"]["params"] = params
    return node


def node(name: str) -> dict:
    return {"kind": "node", "node": name}


def sequence(*steps) -> dict:
    return {"kind": "sequence", "steps": [node(s) if isinstance(s, str) else s for s in steps]}


def graph_args(nodes: dict, flow: dict, output: dict, request: dict | None = None) -> dict:
    request = request if request is not None else {"x": {"type": "int"}, "user_id": {"type": "int", "default": 0}}
    return {"graph": {"name": "test", "request": request, "nodes": nodes, "flow": flow, "output": output}}


def rows_of_three(values):
    """A flat list -> rows of 3 (a model's input matrix)."""
    return [values[i : i + 3] for i in range(0, len(values), 3)]
