"""Runs a graph in-process: plain asyncio, no Ray needed.

    executor = GraphExecutor(spec)                  # builds every node (inline_node)
    answer = await executor.run({"user_id": 7, ...})
    answer.output, answer.routes, answer.errors, answer.latency_ms

Semantics:
- a node's `timeout_s` bounds its call (BackendTimeout, 503, naming the node);
- a hard node's failure fails the request: GraphErrors keep their status
  (404 unknown entities, 503 backend down), anything else is NodeFailed (500);
- a soft node's failure stores null in its slot and the reason in `errors`;
  with `cooldown_s` the node is then skipped (null, reason "skipped: ...")
  for that long, so a dead LLM does not cost every request its timeout;
- switch: the first case that holds, else the default; split: a stable hash of
  the sticky key picks the variant (`routes` names it, `route_counts` counts it);
  a split with a `rollout` takes its weights from `rollouts` (deployments/rollouts),
  and reports each variant's outcome and latency to it;
- fanout: branches concurrently (one hard failure cancels the others), then merge;
- shadow: the primary answers; once it has, the candidate runs on the same
  inputs in a background task, its result only compared (ShadowLog), its
  failures only counted; a sampled share, at most `max_in_flight` at once,
  each bounded by its `timeout_s`. `drain()` waits for those tasks (tests, shutdown).
- payload log (`payloads`, deployments/payloads): a sampled request's record
  (request, answer or error, model versions, routes, chosen node outputs) is
  queued when it ends, and a shadow's comparison when that ends; the drift
  feed (`monitor`, deployments/monitoring) takes a row of each logged request.

`spec` is a validated GraphSpec (deployments/graph/args.py validates it
once, where the config is read); what only built nodes know (a feature
service's fields and join keys) is checked here, once per process.
The Serve seam: `node_factory` (deployments/graph/serving.py places a node
apart behind the same `Node` interface).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from deployments.errors import BackendTimeout, GraphError, public_reason
from deployments.graph import request as request_schema
from deployments.graph.errors import NodeFailed, UnresolvedReference
from deployments.graph.references import REQUEST, Missing, Reference
from deployments.graph.routing import choose, holds
from deployments.graph.shadow import ShadowLog, compare
from deployments.graph.spec import STEP_KINDS, GraphSpec, ShadowStep, SplitStep, Step, SwitchStep
from deployments.graph.tracing import node_span, step_span
from deployments.graph.validate import GraphSpecError, Problem, check_bound
from deployments.metrics import NodeMetrics
from deployments.nodes import Node, NodeSpec
from deployments.payloads import PayloadLogger
from deployments.payloads.events import SHADOW_EVENT_TYPE, models_of

# name, spec -> the Node that runs it. In-process every node is built here
# (`spec.build(name)`); the Serve builder passes a factory that returns a stand-in
# for a node placed apart, and gives an embedded LLM its engine.
NodeFactory = Callable[[str, NodeSpec], Node]


def inline_node(name: str, spec: NodeSpec) -> Node:
    """The node built in this process (what `placement: inline` always means,
    and what every placement means in a notebook prototype)."""
    return spec.build(name)

# Under "ray.serve": in a Serve replica its records go to the replica's log
# file through Serve's handler, which stamps each with the request's id
# (Serve's request context, the client's X-Request-ID). Elsewhere they reach
# Ray's "ray" logger like any other.
logger = logging.getLogger("ray.serve.serve_graphs.graph")


@dataclass
class GraphAnswer:
    output: dict[str, Any]
    routes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.output, "routes": self.routes, "errors": self.errors, "latency_ms": self.latency_ms}


@dataclass
class _Run:
    """One request's state: slot -> value, plus what the answer reports."""

    state: dict[str, Any]
    routes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    logged: bool = False  # sampled for the payload log


class GraphExecutor:
    def __init__(self, spec: GraphSpec, node_factory: NodeFactory = inline_node, shadow_log: ShadowLog | None = None,
                 score_sample_ratio: float = 1.0, payloads: PayloadLogger | None = None):
        self.spec = spec
        self.payloads = payloads
        self.monitor = None  # the drift monitor's feed (deployments/monitoring/feed.py), under Serve
        self.rollouts = None  # the splits' rollout weights and reports (deployments/rollouts/feed.py)
        self._draw = random.random
        self.nodes = {name: node_factory(name, node) for name, node in spec.nodes.items()}
        self._check_built()
        self.request_model = request_schema.request_model(spec.name, spec.request)
        self.metrics = NodeMetrics(spec.name, score_sample_ratio)
        self.shadows = shadow_log or ShadowLog(graph=spec.name)
        self.route_counts: Counter[tuple[str, str]] = Counter()
        self._background: set[asyncio.Task] = set()
        self._failed: dict[str, tuple[float, str]] = {}  # soft node -> (when, why) of its last failure, for cooldown_s
        self._steps = {
            "node": lambda step, run, path, shadowed: self._node(step.node, run),
            "skip": self._skip,
            "sequence": self._sequence,
            "fanout": self._fanout,
            "switch": self._switch,
            "split": self._split,
            "shadow": self._shadow,
        }
        assert set(self._steps) == STEP_KINDS

    def _check_built(self) -> None:
        """What only the built nodes know: output fields, a feature view's join keys."""
        problems = check_bound(self.spec, {name: node.fields() for name, node in self.nodes.items()})
        for name, node in self.nodes.items():
            keys, given = node.join_keys(), set(self.spec.nodes[name].inputs)
            if keys is not None:
                if keys != given:
                    problems.append(Problem(f"graph.nodes.{name}.inputs", f"the feature service's join keys are {sorted(keys)}, inputs give {sorted(given)}"))
        if problems:
            raise GraphSpecError(problems)

    # ------------------------------------------------------------ requests

    async def run(self, body: Any) -> GraphAnswer:
        started = time.perf_counter()
        logged = self.payloads is not None and self.payloads.sampled()
        run = _Run(state={}, logged=logged)
        try:
            run.state[REQUEST] = request_schema.parse(self.request_model, body)
            await self._step(self.spec.flow, run, "graph.flow")
            output = {name: self._resolve(text, f"graph.output.{name}", run.state) for name, text in self.spec.output.items()}
        except Exception as error:
            if logged:
                self._log_payload(body, run, None, error, started)
            raise
        run.timings["total"] = round((time.perf_counter() - started) * 1000.0, 3)
        if logged:
            self._log_payload(body, run, output, None, started)
        return GraphAnswer(output=output, routes=run.routes, errors=run.errors, latency_ms=run.timings)

    def _log_payload(self, body: Any, run: _Run, output: dict[str, Any] | None, error: Exception | None,
                     started: float) -> None:
        """The request's record for the payload log (deployments/payloads): references, encoded off the request path."""
        state = run.state
        status = 200 if error is None else (error.status if isinstance(error, GraphError) else 500)
        self.payloads.log({
            "graph": self.spec.name,
            "status": status,
            "error": None if error is None else (error.body()["error"] if isinstance(error, GraphError) else {"code": "internal_error"}),
            "request": state.get(REQUEST, body),
            "response": output,
            "models": models_of(state),
            "routes": run.routes,
            "errors": run.errors,
            "nodes": {name: state[name] for name in self.payloads.config.nodes if name in state},
            "latency_ms": {**run.timings, "total": round((time.perf_counter() - started) * 1000.0, 3)},
        })
        if self.monitor is not None and error is None:
            self.monitor.observe(state)

    async def drain(self) -> None:
        """Wait for the shadow tasks in flight."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        for node in self.nodes.values():
            await node.close()

    # ------------------------------------------------------------ steps

    async def _step(self, step: Step, run: _Run, path: str, shadowed: bool = False) -> Any:
        result = await self._steps[step.kind](step, run, path, shadowed)
        if step.slot:
            run.state[step.name] = result
        return result

    async def _skip(self, step: Step, run: _Run, path: str, shadowed: bool) -> None:
        return None

    async def _sequence(self, step: Any, run: _Run, path: str, shadowed: bool) -> Any:
        result = None
        for child, child_path in step.children(path):
            result = await self._step(child, run, child_path, shadowed)
        return result

    async def _fanout(self, step: Any, run: _Run, path: str, shadowed: bool) -> Any:
        await self._all([self._step(child, run, child_path, shadowed) for child, child_path in step.children(path)])
        return await self._node(step.merge, run)

    async def _switch(self, step: SwitchStep, run: _Run, path: str, shadowed: bool) -> Any:
        with step_span(self.spec.name, step.name, "switch") as span:
            for index, case in enumerate(step.cases):
                value = self._resolve(case.when.field, f"{path}.cases[{index}].when.field", run.state)
                if holds(case.when, value):
                    run.routes[step.name] = f"cases[{index}]"
                    span.set_attribute("graph.route", run.routes[step.name])
                    return await self._step(case.then, run, f"{path}.cases[{index}].then", shadowed)
            run.routes[step.name] = "default"
            span.set_attribute("graph.route", "default")
            return await self._step(step.default, run, f"{path}.default", shadowed)

    async def _split(self, step: SplitStep, run: _Run, path: str, shadowed: bool) -> Any:
        key = self._resolve(step.sticky_key, f"{path}.sticky_key", run.state) if step.sticky_key else None
        rolled = step.rollout is not None and self.rollouts is not None
        if rolled:
            weights = self.rollouts.weights(step.name)
        elif step.rollout is not None:  # no controller to say otherwise: the champion only
            weights = [0.0 if v.name == step.rollout.challenger else 1.0 for v in step.variants]
        else:
            weights = [v.weight for v in step.variants]
        index = choose(weights, step.salt or step.name, key)
        variant = step.variants[index]
        run.routes[step.name] = variant.name
        with step_span(self.spec.name, step.name, "split") as span:
            span.set_attribute("graph.route", variant.name)
            then = self._step(variant.then, run, f"{path}.variants[{index}].then", shadowed)
            if shadowed:
                return await then
            self.route_counts[(step.name, variant.name)] += 1
            started = time.perf_counter()
            try:
                with self.metrics.variant(step.name, variant.name):
                    result = await then
            except Exception:
                if rolled:  # what the rollout's guards judge: the variant's failures and latencies
                    self.rollouts.record(step.name, variant.name, False, (time.perf_counter() - started) * 1000.0)
                raise
            if rolled:
                self.rollouts.record(step.name, variant.name, True, (time.perf_counter() - started) * 1000.0)
            return result

    async def _shadow(self, step: ShadowStep, run: _Run, path: str, shadowed: bool) -> Any:
        before = dict(run.state)
        started = time.perf_counter()
        with step_span(self.spec.name, step.name, "shadow"):
            result = await self._step(step.primary, run, f"{path}.primary", shadowed)
            primary_ms = (time.perf_counter() - started) * 1000.0
            # No shadows of shadows; a sampled share; at most max_in_flight at
            # once (beyond it dropped and counted). The task copies the
            # context: its spans hang under this step, its log record has the
            # request's id.
            if not shadowed and (step.sample_ratio >= 1.0 or self._draw() < step.sample_ratio) \
                    and self.shadows.may_start(step.name, step.max_in_flight):
                task = asyncio.get_running_loop().create_task(self._candidate(step, before, result, primary_ms, path, run.logged))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return result

    async def _candidate(self, step: ShadowStep, state: dict[str, Any], primary: Any, primary_ms: float, path: str,
                         logged: bool) -> None:
        """Never raises: a failure (or a call past `timeout_s`) is counted, a result is compared."""
        shadow_run = _Run(state=state)
        started = time.perf_counter()
        try:
            call = self._step(step.candidate, shadow_run, f"{path}.candidate", shadowed=True)
            candidate = await (asyncio.wait_for(call, step.timeout_s) if step.timeout_s else call)
        except Exception as error:
            if isinstance(error, asyncio.TimeoutError):
                error = BackendTimeout(f"shadow {step.name}", step.timeout_s)
            reason = error.message if isinstance(error, GraphError) else f"{type(error).__name__}: {error}"
            self.shadows.failed(step.name, reason)
            self.metrics.count_error(f"{step.name}:shadow", getattr(error, "code", "internal_error"))
            if logged:
                self.payloads.log({"step": step.name, "failed": reason}, SHADOW_EVENT_TYPE, step.name)
            return
        finally:
            self.shadows.finished(step.name)
        candidate_ms = (time.perf_counter() - started) * 1000.0
        record = compare(step.name, primary, candidate, primary_ms, candidate_ms, step.top_k)
        self.shadows.compared(record)
        if self.rollouts is not None:
            self.rollouts.agreement(step.name, record.topk_agreement)
        if logged:
            self.payloads.log({**record.as_dict(), "candidate": candidate}, SHADOW_EVENT_TYPE, step.name)

    async def _all(self, calls: list) -> list[Any]:
        tasks = [asyncio.ensure_future(call) for call in calls]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # ------------------------------------------------------------ nodes

    async def _node(self, name: str, run: _Run) -> Any:
        spec = self.spec.nodes[name]
        cooling = self._cooling(name, spec)
        if cooling is not None:
            self.metrics.count_error(name, "skipped")
            run.errors[name], run.state[name] = cooling, None
            return None
        try:
            with self.metrics.measure(name, run.timings), node_span(self.spec.name, name, spec.kind, spec.placement, spec.dependency):
                output = await self._call(name, spec, run.state)
            if self.nodes[name].records_scores and output is not None:
                self.metrics.observe_scores(name, output["model"], output["scores"])
        except GraphError as error:
            if spec.dependency == "hard":
                raise
            logger.warning("node %s failed (soft: answered without it): %s", name, error.message)
            run.errors[name] = error.message
            if spec.cooldown_s:
                self._failed[name] = (time.monotonic(), error.message)
            output = None
        else:
            self._failed.pop(name, None)
        run.state[name] = output
        return output

    def _cooling(self, name: str, spec: Any) -> str | None:
        """The reason to skip a soft node that failed less than `cooldown_s` ago."""
        if name not in self._failed:
            return None
        failed_at, reason = self._failed[name]
        ago = time.monotonic() - failed_at
        if ago >= spec.cooldown_s:
            return None  # this request tries again
        return f"skipped: {name} failed {ago:.1f} s ago ({reason})"

    async def _call(self, name: str, spec: Any, state: dict[str, Any]) -> Any:
        """The node's call with its timeout; every failure as a GraphError."""
        try:
            inputs = {key: self._inputs(value, f"graph.nodes.{name}.inputs.{key}", state) for key, value in spec.inputs.items()}
            call = self.nodes[name].run(inputs)
            return await (asyncio.wait_for(call, spec.timeout_s) if spec.timeout_s else call)
        except GraphError:
            raise
        except asyncio.TimeoutError:
            if spec.timeout_s:
                raise BackendTimeout(name, spec.timeout_s) from None
            raise NodeFailed(name, "timed out") from None
        except Exception as error:
            raise NodeFailed(name, public_reason(error, f"node {name}")) from error

    def _inputs(self, value: str | list[str], where: str, state: dict[str, Any]) -> Any:
        if isinstance(value, list):
            return [self._resolve(text, f"{where}[{i}]", state) for i, text in enumerate(value)]
        return self._resolve(value, where, state)

    @staticmethod
    def _resolve(text: str, where: str, state: dict[str, Any]) -> Any:
        try:
            return Reference.parse(text).resolve(state)
        except Missing as missing:
            raise UnresolvedReference(where, text, str(missing)) from None
