"""A declarative graph under Ray Serve: one ingress deployment that runs the
GraphExecutor, plus one deployment per node placed apart.

- `placement: inline` nodes are built in the ingress replica (no hop: cheap
  steps such as aggregation, or a feature lookup, fused with the graph);
- `placement: deployment` nodes are `GraphNode` deployments of their own
  (own replicas, autoscaling, resources such as a GPU); the ingress holds a
  `RemoteNode` whose `run` is one handle call, so the executor cannot tell
  the two apart;
- `mode: embedded` LLM nodes get an engine deployment (`ray.serve.llm`'s
  LLMServer) in the same application, called by handle.

Every replica builds its nodes from the same validated args, so what runs is
exactly what `apps.graph.load` checked.
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve

from apps import http_errors
from deployments.errors import InvalidInput
from deployments.graph.executor import GraphExecutor
from deployments.graph.nodes import LLMRunner, inline_node
from deployments.graph.spec import GraphSpec, LLMNode


def _spec(args: Any) -> GraphSpec:
    from apps.graph import parse_args

    return parse_args(args).graph


def build_node(name: str, spec: Any, llm_handles: dict[str, Any]) -> Any:
    """A node as this replica runs it: an embedded LLM node gets its engine's handle."""
    if isinstance(spec, LLMNode) and name in llm_handles:
        return LLMRunner(spec, handle=llm_handles[name])
    return inline_node(name, spec)


@serve.deployment(max_ongoing_requests=64, health_check_period_s=5, health_check_timeout_s=10)
class GraphNode:
    """One node placed apart (`placement: deployment`)."""

    def __init__(self, args: dict, node: str, llm: Any = None):
        self.name = node
        self.node = build_node(node, _spec(args).nodes[node], {node: llm} if llm is not None else {})

    async def run(self, inputs: dict[str, Any]) -> Any:
        return await self.node.run(inputs)

    def describe(self) -> dict[str, Optional[list[str]]]:
        """What the ingress's executor checks references against."""
        fields = getattr(self.node, "fields", None)
        join_keys = getattr(self.node, "join_keys", None)
        return {"fields": sorted(fields()) if fields else None, "join_keys": sorted(join_keys()) if join_keys else None}

    async def ready(self) -> tuple[bool, str]:
        probe = getattr(self.node, "ready", None)
        return await probe() if probe else (True, "no backend")


class RemoteNode:
    """The ingress's stand-in for a node placed apart: same interface, one hop."""

    def __init__(self, name: str, handle: Any, described: dict[str, Optional[list[str]]]):
        self.name, self.handle = name, handle
        if described["fields"] is not None:
            self.fields = lambda: set(described["fields"])
        if described["join_keys"] is not None:
            self.join_keys = lambda: set(described["join_keys"])

    async def run(self, inputs: dict[str, Any]) -> Any:
        return await self.handle.run.remote(inputs)

    async def ready(self) -> tuple[bool, str]:
        ok, detail = await self.handle.ready.remote()
        return ok, f"[deployment] {detail}"


api = http_errors.install(FastAPI(title="graph", description="A declarative graph (docs/graphs.md)."))
api.add_middleware(http_errors.PrefixRoot)


@serve.deployment(max_ongoing_requests=64, health_check_period_s=5, health_check_timeout_s=10)
@serve.ingress(api)
class GraphIngress:
    """Runs the graph: POST / with the graph's request; /healthz, /readyz, /graph."""

    async def __init__(self, args: dict, nodes: Optional[dict[str, Any]] = None, llms: Optional[dict[str, Any]] = None):
        spec = _spec(args)
        remote = {name: RemoteNode(name, handle, await handle.describe.remote()) for name, handle in (nodes or {}).items()}
        llm_handles = llms or {}

        def factory(name: str, node_spec: Any) -> Any:
            return remote[name] if name in remote else build_node(name, node_spec, llm_handles)

        self.executor = GraphExecutor(spec, node_factory=factory)

    @api.post("/")
    async def run(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidInput("body", "not valid JSON") from None
        answer = await self.executor.run(body)
        return JSONResponse(answer.to_dict())

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "live", "graph": self.executor.spec.name}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        return http_errors.readiness(await self._checks())

    @api.get("/graph", response_class=PlainTextResponse)
    async def picture(self) -> str:
        """The graph as Mermaid text (what `python -m apps.graph_draw` prints)."""
        from deployments.graph.draw import mermaid

        return mermaid(self.executor.spec)

    async def _checks(self) -> dict[str, tuple[bool, str]]:
        checks = {}
        for name, node in self.executor.nodes.items():
            probe = getattr(node, "ready", None)
            if probe is not None:
                try:
                    checks[name] = await probe()
                except Exception as error:  # a node deployment that is down
                    checks[name] = (False, f"{type(error).__name__}: {error}")
        return checks
