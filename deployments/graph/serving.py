"""A declarative graph under Ray Serve: one ingress deployment that runs the
GraphExecutor, plus one deployment per node placed apart.

- `placement: inline` nodes are built in the ingress replica (no hop: cheap
  steps such as aggregation, or a feature lookup, fused with the graph);
- `placement: deployment` nodes are `GraphNode` deployments of their own
  (own replicas, autoscaling, resources such as a GPU); the ingress holds a
  `RemoteNode` whose `run` is one handle call, so the executor cannot tell
  the two apart;
- a kind may ask for a companion deployment in the same application (an
  embedded LLM node's engine, `ray.serve.llm`'s LLMServer), called by handle.

Every replica gets the args the builder validated (`GraphArgs`, not a dict
to check again), so what runs is exactly what was checked.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from ray import serve
from tritonclient.grpc import service_pb2

from deployments.errors import BackendUnavailable, GraphError, InvalidInput
from deployments.graph import oip, oip_grpc
from deployments.graph.args import GraphArgs
from deployments.graph.executor import GraphExecutor
from deployments.http import app as http_app
from deployments.http import security
from deployments.http.readiness import CachedReadiness, may_see_details, readiness_response
from deployments.nodes import Node, NodeSpec
from deployments.payloads import PayloadLogger


@serve.deployment(max_ongoing_requests=64, health_check_period_s=5, health_check_timeout_s=10)
class GraphNode:
    """One node placed apart (`placement: deployment`), built from its own
    validated spec; `companion` is the handle of the deployment its kind
    asked for (an embedded LLM's engine)."""

    def __init__(self, name: str, spec: NodeSpec, companion: Any = None):
        self.name = name
        self.node = spec.build(name, companion)

    async def run(self, inputs: dict[str, Any]) -> Any:
        return await self.node.run(inputs)

    def describe(self) -> dict[str, Any]:
        """What the ingress's executor checks references against and records."""
        fields, join_keys = self.node.fields(), self.node.join_keys()
        return {
            "fields": sorted(fields) if fields is not None else None,
            "join_keys": sorted(join_keys) if join_keys is not None else None,
            "records_scores": self.node.records_scores,
        }

    async def ready(self) -> tuple[bool, str]:
        return await self.node.ready() or (True, "no backend")


# A call to a node placed apart, and up to two more when the hop itself failed:
# in a rolling update the ingress's router may still list both stopped
# replicas of a node (its update comes late on a busy machine); each failed
# call drops one, so the third waits for a new replica. The node's
# `timeout_s` bounds them all.
HOP_ATTEMPTS = 3


class RemoteNode(Node):
    """The ingress's stand-in for a node placed apart: same interface, one hop."""

    def __init__(self, name: str, handle: Any, described: dict[str, Any]):
        self.name, self.handle = name, handle
        self._fields = set(described["fields"]) if described["fields"] is not None else None
        self._join_keys = set(described["join_keys"]) if described["join_keys"] is not None else None
        self.records_scores = described["records_scores"]

    def fields(self) -> Optional[set[str]]:
        return self._fields

    def join_keys(self) -> Optional[set[str]]:
        return self._join_keys

    async def run(self, inputs: dict[str, Any]) -> Any:
        """The node's answer, its own errors unchanged (a GraphError keeps its
        status across the hop). When the hop fails (the replica died mid-call,
        or was stopping in a rolling update) the call goes again, to another
        replica: a node is a read (features, a model, a completion), safe to
        repeat. After HOP_ATTEMPTS failed hops it is a 503 with Retry-After
        naming the node."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
        from ray.serve.exceptions import DeploymentUnavailableError

        for attempt in range(HOP_ATTEMPTS):
            try:
                return await self.handle.run.remote(inputs)
            except RayTaskError as error:  # the node raised: its own error, as it raised it
                if isinstance(error.cause, GraphError):
                    raise error.cause from None
                raise
            except (RayActorError, ActorDiedError, ActorUnavailableError, DeploymentUnavailableError) as error:
                if attempt + 1 == HOP_ATTEMPTS:
                    raise BackendUnavailable(f"node {self.name}", f"its replica is unavailable ({type(error).__name__})") from None

    async def ready(self) -> tuple[bool, str]:
        ok, detail = await self.handle.ready.remote()
        return ok, f"[deployment] {detail}"


def document_request(app: FastAPI, model: type[BaseModel], graph: str) -> None:
    """/openapi.json describes the graph's request body, typed by its
    `graph.request`: `POST /` takes the raw Request (so a bad body is the
    graph's own 422, naming each field), which FastAPI cannot document by
    itself. Clients, docs pages and schema-driven fuzzers see the fields."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            name = model.__name__
            schema.setdefault("components", {}).setdefault("schemas", {})[name] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            operation = schema["paths"]["/"]["post"]
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
            operation["responses"]["422"] = {"description": "Invalid request: `error.fields` names each field and the reason."}
            document_v2(schema, graph)
        return app.openapi_schema

    app.openapi = openapi


def document_v2(schema: dict[str, Any], graph: str) -> None:
    """The Open Inference Protocol's routes in /openapi.json: the model path
    parameter is the graph's name, the infer body the protocol's request."""
    paths = schema["paths"]
    for path, method in (("/v2/models/{model}", "get"), ("/v2/models/{model}/ready", "get"), ("/v2/models/{model}/infer", "post")):
        for parameter in paths.get(path, {}).get(method, {}).get("parameters", []):
            if parameter["name"] == "model":
                parameter["schema"] = {"type": "string", "enum": [graph], "title": "Model"}
    infer = paths.get("/v2/models/{model}/infer", {}).get("post")
    if infer is not None:
        infer["requestBody"] = {"required": True, "content": {"application/json": {"schema": oip.INFER_REQUEST_SCHEMA}}}
        infer["responses"]["400"] = {"description": 'A bad tensor: {"error": "<what, naming the tensor>"} (the protocol\'s format).'}


def replica_payload_log(args: GraphArgs) -> Optional[PayloadLogger]:
    """The replica's payload logger: its own file (named by the replica's id)
    and each record's id the request's (Serve's X-Request-ID)."""
    if args.payload_log is None:
        return None
    from ray.serve.context import _get_serve_request_context

    replica = serve.get_replica_context().replica_id.unique_id
    return PayloadLogger(args.graph.name, args.payload_log, writer=f"replica-{replica}",
                         request_id=lambda: _get_serve_request_context().request_id or uuid.uuid4().hex)


api = http_app.install(FastAPI(title="graph", description="A declarative graph (docs/graphs.md)."))
api.add_middleware(http_app.PrefixRoot)


# A quarter of a core reserved per ingress replica: its event loop mostly
# waits on the backends, and a 2-core laptop's Ray head (2 logical CPUs)
# then holds the demo's graphs, its LLM and a graph of the user's own.
# Clusters size it in their config (configs/cluster.yaml: 1).
INGRESS_NUM_CPUS = 0.25


@serve.deployment(max_ongoing_requests=64, health_check_period_s=5, health_check_timeout_s=10,
                  ray_actor_options={"num_cpus": INGRESS_NUM_CPUS})
@serve.ingress(api)
class GraphIngress:
    """Runs the graph: POST / with the graph's request; /healthz, /readyz, /graph, /rollout."""

    async def __init__(self, args: GraphArgs, nodes: Optional[dict[str, Any]] = None, companions: Optional[dict[str, Any]] = None,
                       monitor: Any = None, rollouts: Any = None):
        """`args` as the builder validated them; `nodes`: handles of the nodes
        placed apart; `companions`: handles of the deployments inline nodes
        asked for (an embedded LLM's engine); `monitor`: the drift monitor's
        handle (deployments/monitoring), which the logged requests feed;
        `rollouts`: the rollout controller's (deployments/rollouts), which
        the splits report to and take their weights from."""
        self.args = args
        remote = {name: RemoteNode(name, handle, await handle.describe.remote()) for name, handle in (nodes or {}).items()}
        companions = companions or {}

        def factory(name: str, spec: NodeSpec) -> Node:
            return remote[name] if name in remote else spec.build(name, companions.get(name))

        self.executor = GraphExecutor(args.graph, node_factory=factory, score_sample_ratio=args.score_sample_ratio,
                                      payloads=replica_payload_log(args))
        if monitor is not None:
            from deployments.monitoring.feed import DriftFeed

            self.executor.monitor = DriftFeed(args.drift, send=lambda rows: monitor.add.remote(rows), graph=args.graph.name)
        if rollouts is not None:
            from deployments.graph.rollout_plans import plans
            from deployments.rollouts.feed import RolloutFeed, initial_weights

            rollout_plans = plans(args.graph)
            self.executor.rollouts = RolloutFeed(rollout_plans, await asyncio.to_thread(initial_weights, rollout_plans),
                                                 send=lambda counts: rollouts.report.remote(counts))
        self.readiness = CachedReadiness(self._checks, period_s=args.readiness_period_s, name=f"graph {args.graph.name}")
        self._keys_on = args.http is not None and bool(args.http.api_keys)
        # The keys and their buckets, shared by the HTTP routes and the gRPC calls.
        self._guard = security.key_guard(args.http) if args.http is not None else None
        # The clock of unhealthy_after_s starts once the replica is built (the
        # build itself takes seconds: Feast, Triton's client, the registry).
        self._last_ready = time.monotonic()

    async def __serve_build_asgi_app__(self):
        """Serve calls this in the replica, after __init__, with `self.app` the
        copy of `api` it froze at import. The middlewares go on here, not at
        import on the driver: they need this app's `http` args and the keys in
        the replica's environment or mounted files."""
        document_request(self.app, self.executor.request_model, self.executor.spec.name)
        if self.args.http is not None:
            security.install(self.app, self.args.http, guard=self._guard)
        else:
            security.bound_body(self.app)
        return security.cap_caller_sampling(self.app, self.args.caller_sampling_ratio)

    @api.post("/")
    async def run(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidInput("body", "not valid JSON") from None
        answer = await self.executor.run(body)
        return JSONResponse(answer.to_dict())

    # ---------------------------------------- the Open Inference Protocol (deployments/graph/oip.py)

    @api.get("/v2")
    async def v2_server(self) -> dict:
        return oip.server_metadata()

    @api.get("/v2/health/live")
    async def v2_live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def v2_ready(self) -> JSONResponse:
        ready = all(ok for ok, _ in (await self.readiness.current()).values())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{model}")
    async def v2_metadata(self, model: str) -> JSONResponse:
        return await self._v2(model, lambda: oip.model_metadata(self.executor.spec))

    @api.get("/v2/models/{model}/ready")
    async def v2_model_ready(self, model: str) -> JSONResponse:
        async def ready() -> dict:
            ok = all(ok for ok, _ in (await self.readiness.current()).values())
            if not ok:
                raise BackendUnavailable(f"graph {model}", "not ready (GET /readyz names the failing check)")
            return {"name": model, "ready": True}

        return await self._v2(model, ready)

    @api.post("/v2/models/{model}/infer")
    async def v2_infer(self, model: str, request: Request) -> JSONResponse:
        raw = await request.body()
        return await self._v2(model, lambda: oip.infer(self.executor, model, raw, oip.headers_of(request.scope["headers"])))

    async def _v2(self, model: str, answer) -> JSONResponse:
        """The protocol's answer, or its error format with the error's status."""
        try:
            oip.check_model(model, self.executor.spec.name)
            body = answer()
            if hasattr(body, "__await__"):
                body = await body
        except GraphError as error:
            return JSONResponse(oip.protocol_body(error), status_code=error.status, headers=error.headers)
        return JSONResponse(body)

    # ---------------------------------------- the same protocol over gRPC, through Serve's gRPC proxy
    # (deployments/graph/oip_grpc.py): each method is the RPC of its name, the
    # message in and out; `grpc_context` carries the metadata and the status.

    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc(grpc_context, service_pb2.ServerLiveResponse(), lambda: service_pb2.ServerLiveResponse(live=True))

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        async def ready() -> Any:
            return service_pb2.ServerReadyResponse(ready=all(ok for ok, _ in (await self.readiness.current()).values()))

        return await self._grpc(grpc_context, service_pb2.ServerReadyResponse(), ready)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:
        async def ready() -> Any:
            oip.check_model(request.name, self.executor.spec.name)
            return service_pb2.ModelReadyResponse(ready=all(ok for ok, _ in (await self.readiness.current()).values()))

        return await self._grpc(grpc_context, service_pb2.ModelReadyResponse(), ready)

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        def metadata() -> Any:
            oip.check_model(request.name, self.executor.spec.name)
            return oip_grpc.metadata_message(oip.model_metadata(self.executor.spec))

        return await self._grpc(grpc_context, service_pb2.ModelMetadataResponse(), metadata)

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:
        async def infer() -> Any:
            body, binary = oip_grpc.request_from_message(request)
            return oip_grpc.response_message(await oip.infer_request(self.executor, request.model_name, body, binary))

        return await self._grpc(grpc_context, service_pb2.ModelInferResponse(), infer)

    async def _grpc(self, grpc_context: Any, empty: Any, answer) -> Any:
        """The answer, after the API-key check on the call's metadata; a
        GraphError as the call's status code and details."""
        try:
            if self._guard is not None and grpc_context is not None:
                await security.admit_call(*self._guard, oip_grpc.metadata_pairs(grpc_context))
            body = answer()
            if hasattr(body, "__await__"):
                body = await body
        except GraphError as error:
            return oip_grpc.fail(grpc_context, error, empty)
        return body

    # ---------------------------------------- health

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "live", "graph": self.executor.spec.name, "replica": serve.get_replica_context().replica_id.unique_id}

    @api.get("/readyz")
    async def readyz(self, request: Request) -> JSONResponse:
        """Ready or not, per node; each node's detail to keyed callers (deployments/http/readiness.py)."""
        return readiness_response(await self.readiness.current(), detailed=may_see_details(request.scope, self._keys_on))

    @api.get("/graph", response_class=PlainTextResponse)
    async def picture(self) -> str:
        """The graph as Mermaid text (what `python -m cli.graph_draw` prints)."""
        from deployments.graph.draw import mermaid

        return mermaid(self.executor.spec)

    @api.get("/rollout")
    async def rollout(self) -> dict:
        """The weights this replica routes its rolled-out splits by now (the
        record and the decisions: `python -m cli.rollout CONFIG`)."""
        feed = self.executor.rollouts
        splits = {} if feed is None else {
            split: dict(zip(plan.variants, feed.weights(split))) for split, plan in feed.plans.items()}
        return {"replica": serve.get_replica_context().replica_id.unique_id, "splits": splits}

    def __del__(self):
        """Serve's shutdown hook: what the payload log holds is written (2 s at most)."""
        payloads = getattr(getattr(self, "executor", None), "payloads", None)
        if payloads is not None:
            payloads.close(timeout_s=2.0)

    async def check_health(self) -> None:
        """Serve replaces the replica when its backends stay unreachable.

        A short outage only turns readiness false (requests get 503); after
        `unhealthy_after_s` the replica itself is suspect (a wedged channel,
        a store file gone) and a fresh one is the better bet. Soft nodes do
        not count: the graph answers without them.
        """
        checks = {name: check for name, check in (await self.readiness.current()).items()
                  if name not in self.executor.spec.nodes or self.executor.spec.nodes[name].dependency == "hard"}
        if all(ok for ok, _ in checks.values()):
            self._last_ready = time.monotonic()
            return
        down_for = time.monotonic() - self._last_ready
        if down_for > self.args.unhealthy_after_s:
            failing = {name: detail for name, (ok, detail) in checks.items() if not ok}
            raise RuntimeError(f"backends unreachable for {down_for:.0f} s: {failing}")

    async def _checks(self) -> dict[str, tuple[bool, str]]:
        checks = {}
        for name, node in self.executor.nodes.items():
            self.executor.metrics.count_readiness_check(name)
            try:
                check = await node.ready()
            except Exception as error:  # a node deployment that is down
                check = (False, f"{type(error).__name__}: {error}")
            if check is not None:
                checks[name] = check
        return checks
