"""The recommend graph: Feast features -> Triton ranker -> top-k.

`serve run configs/local.yaml` serves it under its route prefix, /recommend:

    POST /recommend          {"user_id": 7, "item_ids": [1, 2, 3], "k": 2}
    GET  /recommend/healthz  live
    GET  /recommend/readyz   ready when Feast, the Triton model and the registry are

`RecommendGraph` is the graph as a plain async class (usable in a notebook
without Ray); `Recommender` serves it as a Ray Serve deployment.
"""
import asyncio
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from ray import serve
from ray.serve import Application

from apps import http_errors, security
from deployments.aggregate import top_k
from deployments.errors import InvalidInput, NotFound
from deployments.feature_lookup import FeatureLookup, FeatureLookupConfig
from deployments.llm_node import EmbeddedLLMConfig, LLMNodeConfig, PromptTemplate, llm_node, render, template_fields
from deployments.metrics import NodeMetrics
from deployments.registry import ServedModel, served
from deployments.triton_model import TritonModel, TritonModelConfig

GRAPH = "recommend"


class ExplainConfig(BaseModel):
    """A one-sentence explanation of the top item, from an LLM (a soft dependency)."""

    model_config = ConfigDict(extra="forbid")

    llm: LLMNodeConfig = Field(description="mode: remote (an OpenAI-compatible URL) or embedded (an engine in this app).")
    cooldown_s: float = Field(
        5.0, ge=0, description="After an LLM failure, skip explanations this long instead of waiting out timeouts."
    )
    prompt_template: PromptTemplate = Field(
        "In one sentence, tell a shopper why item {item_id} suits them. Item: price {item_features__price:.2f}, "
        "popularity {item_features__popularity:.2f}. Shopper: age {user_features__age:.2f}.",
        description="str.format template over item_id, score, user_id and the feature service's features (view__feature).",
    )


class RecommendArgs(BaseModel):
    """Application args of the recommend graph (the `args:` of its Serve config)."""

    model_config = ConfigDict(extra="forbid")

    features: FeatureLookupConfig = Field(default_factory=FeatureLookupConfig)
    ranker: TritonModelConfig = Field(default_factory=TritonModelConfig)
    max_items: int = Field(100, ge=1, le=4096, description="Longest accepted item_ids list (<= Triton's max_batch_size).")
    unhealthy_after_s: float = Field(
        30.0, gt=0, description="check_health fails (Serve replaces the replica) once a backend is unreachable this long."
    )
    explain: Optional[ExplainConfig] = Field(None, description="Explain the top item with an LLM; off when absent.")
    http: Optional[security.HttpSecurity] = Field(
        None, description="API keys, body limit and request ids (apps.security); none of them when absent."
    )


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: StrictInt = Field(description="User to rank for.")
    item_ids: Annotated[list[StrictInt], Field(min_length=1, description="Candidate items to rank.")]
    k: StrictInt = Field(10, gt=0, description="How many items to return (at most len(item_ids)).")
    explain: bool = Field(True, description="Ask for an explanation of the top item (when the graph has an LLM).")


class ScoredItem(BaseModel):
    item_id: int
    score: float
    feature_timestamp: datetime = Field(description="Event time of the item's features that were used.")


class Explanation(BaseModel):
    text: Optional[str] = Field(description="null when the LLM failed or timed out (it is a soft dependency).")
    model: str
    reason: Optional[str] = Field(None, description="Why there is no text.")


class RecommendResponse(BaseModel):
    user_id: int
    items: list[ScoredItem]
    model: ServedModel
    explanation: Optional[Explanation] = None
    feature_timestamps: dict[str, datetime] = Field(description="Event time of the user's features, by feature view.")
    latency_ms: dict[str, float] = Field(description="Per node, plus `total`.")


def _utc(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc)


class RecommendGraph:
    """Feast lookup -> Triton ranker -> top-k, as a plain async object."""

    def __init__(self, args: RecommendArgs, llm_handle: Any = None):
        self.args = args
        self.features = FeatureLookup(args.features)
        self.ranker = TritonModel(args.ranker)
        self.metrics = NodeMetrics(GRAPH)
        self.explainer = llm_node(args.explain.llm, llm_handle) if args.explain else None
        self._llm_failed_at: float | None = None
        self._llm_failure = ""
        if args.explain:
            allowed = {"item_id", "score", "user_id", *self.features.feature_names}
            unknown_fields = sorted(template_fields(args.explain.prompt_template) - allowed)
            if unknown_fields:
                raise ValueError(f"explain.prompt_template refers to unknown fields {unknown_fields}; known: {sorted(allowed)}")
        unknown = sorted(set(self.ranker.ref.input_features) - set(self.features.feature_names))
        if not self.ranker.ref.input_features or unknown:
            raise ValueError(
                f"ranker {self.ranker.ref.name} v{self.ranker.ref.version} needs features {unknown or '(none recorded)'} "
                f"that feature service {args.features.feature_service!r} does not provide"
            )

    def validate(self, request: RecommendRequest) -> None:
        if len(request.item_ids) > self.args.max_items:
            raise InvalidInput("item_ids", f"at most {self.args.max_items} items per request, got {len(request.item_ids)}")
        if len(set(request.item_ids)) != len(request.item_ids):
            duplicates = sorted({i for i in request.item_ids if request.item_ids.count(i) > 1})
            raise InvalidInput("item_ids", f"duplicate item ids {duplicates}")

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        self.validate(request)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        rows = [{"user_id": request.user_id, "item_id": item} for item in request.item_ids]
        with self.metrics.measure("features", timings):
            frame = await self.features.lookup(rows)
            if frame.missing:
                raise NotFound(frame.missing)
        ref = self.ranker.current()  # one version for the whole request, even mid-rollout
        with self.metrics.measure("ranker", timings):
            scores = await self.ranker.infer(frame.matrix(ref.input_features), ref)
        with self.metrics.measure("aggregate", timings):
            best = top_k(request.item_ids, scores, request.k)
            position = {item: row for row, item in enumerate(request.item_ids)}
            items = [
                ScoredItem(item_id=item, score=score, feature_timestamp=_utc(frame.view_timestamp("item_features", position[item])))
                for item, score in best
            ]
        explanation = None
        if self.explainer is not None and request.explain and items:
            with self.metrics.measure("explain", timings):
                explanation = await self.explain(request, frame, position[items[0].item_id], items[0])
        timings["total"] = round((time.perf_counter() - started) * 1000.0, 3)
        return RecommendResponse(
            explanation=explanation,
            user_id=request.user_id,
            items=items,
            model=served(ref),
            feature_timestamps={"user_features": _utc(frame.view_timestamp("user_features", 0))},
            latency_ms=timings,
        )

    async def explain(self, request: RecommendRequest, frame, row: int, top: ScoredItem) -> Explanation:
        """Soft dependency: any failure leaves the ranking intact, text null, reason given."""
        values = {name: frame.values[name][row] for name in self.features.feature_names}
        values.update(item_id=top.item_id, score=top.score, user_id=request.user_id)
        model = self.args.explain.llm.model_name
        if self._llm_failed_at is not None:
            ago = time.monotonic() - self._llm_failed_at
            if ago < self.args.explain.cooldown_s:
                self.metrics.count_error("explain", "skipped")
                return Explanation(text=None, model=model, reason=f"skipped: the LLM failed {ago:.1f} s ago ({self._llm_failure})")
        try:
            completion = await self.explainer.chat(render(self.args.explain.prompt_template, values))
        except asyncio.TimeoutError:
            return self._llm_failed(model, "timeout", f"timeout after {self.args.explain.llm.timeout_s:g} s")
        except Exception as error:  # any LLM failure is soft here
            return self._llm_failed(model, "llm_error", f"{type(error).__name__}: {str(error)[:200]}")
        self._llm_failed_at = None
        return Explanation(text=completion.text.strip(), model=model)

    def _llm_failed(self, model: str, code: str, reason: str) -> Explanation:
        """Remember the failure: for `cooldown_s` requests skip the LLM rather
        than each waiting out the same timeout."""
        self.metrics.count_error("explain", code)
        self._llm_failed_at, self._llm_failure = time.monotonic(), reason
        return Explanation(text=None, model=model, reason=reason)

    async def ready(self) -> dict[str, tuple[bool, str]]:
        features, ranker = await asyncio.gather(self.features.ready(), self.ranker.ready())
        registry = (True, f"{self.ranker.ref.name}@{self.ranker.ref.alias} -> version {self.ranker.ref.version}")
        return {"features": features, "ranker": ranker, "registry": registry}


api = http_errors.install(FastAPI(title="recommend", description=__doc__))
api.add_middleware(http_errors.PrefixRoot)


@serve.deployment(max_ongoing_requests=64, health_check_period_s=5, health_check_timeout_s=10)
@serve.ingress(api)
class Recommender:
    def __init__(self, args: RecommendArgs | dict, llm: Any = None):
        # Config deploys hand the bound args over as a plain dict; `llm` is the
        # embedded engine's DeploymentHandle (explain.llm.mode: embedded).
        self.graph = RecommendGraph(RecommendArgs.model_validate(args), llm_handle=llm)
        self._last_ready = time.monotonic()

    async def __serve_build_asgi_app__(self):
        """Serve calls this in the replica, after __init__, with `self.app` the
        copy of `api` it froze at import. The middlewares go on here, not at
        import on the driver: they need this app's `http` args and the keys in
        the replica's environment or mounted files."""
        http = self.graph.args.http
        return security.install(self.app, http) if http is not None else self.app

    @api.post("/", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        return await self.graph.recommend(request)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "live", "replica": serve.get_replica_context().replica_id.unique_id}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        return http_errors.readiness(await self.graph.ready())

    async def check_health(self) -> None:
        """Serve replaces the replica when its backends stay unreachable.

        A short outage only turns readiness false (requests get 503); after
        `unhealthy_after_s` the replica itself is suspect (a wedged channel,
        a store file gone) and a fresh one is the better bet.
        """
        checks = await self.graph.ready()
        if all(ok for ok, _ in checks.values()):
            self._last_ready = time.monotonic()
            return
        down_for = time.monotonic() - self._last_ready
        if down_for > self.graph.args.unhealthy_after_s:
            failing = {name: detail for name, (ok, detail) in checks.items() if not ok}
            raise RuntimeError(f"backends unreachable for {down_for:.0f} s: {failing}")


def build(args: RecommendArgs) -> Application:
    """Serve validates the config's `args` against the annotation (so a bad key
    fails the build, naming its path) and calls this with the model."""
    args = RecommendArgs.model_validate(args)
    llm = args.explain.llm if args.explain else None
    if isinstance(llm, EmbeddedLLMConfig):
        from ray.serve.llm import build_llm_deployment

        from deployments.llm_engine import llm_config, resolve

        engine = build_llm_deployment(llm_config(llm.engine, resolve(llm.engine)), name_prefix="ExplainLLM:")
        return Recommender.bind(args, llm=engine)
    return Recommender.bind(args)
