"""The typed `args:` of a graph application, validated once where the
config is read (`serve run`/`serve deploy` call the builder with them;
`load` reads a file; `python -m cli.check` checks one):

    applications:
      - name: recommend
        import_path: apps.graph:build
        args:
          graph: {name: ..., request: ..., nodes: ..., flow: ..., output: ...}
          http: {api_keys: [...]}          # optional (deployments/http/security)
          payload_log: {sink: {kind: file}} # optional (deployments/payloads)

Pydantic checks each key's type and each node kind's settings; the
whole-graph checks of deployments/graph/validate.py run in the validator,
so a bad graph fails here, every problem named by its path. What runs gets
this object, never a dict to check again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deployments.field_paths import reasons
from deployments.graph.spec import GraphSpec, walk
from deployments.graph.validate import GraphSpecError, Problem, validate
from deployments.http.security import CALLER_SAMPLING_RATIO_DESCRIPTION, HttpSecurity
from deployments.monitoring.config import DriftConfig
from deployments.payloads import PayloadLogConfig

IMPORT_PATH = "apps.graph:build"


class GraphArgs(BaseModel):
    """Application args of a graph app (the `args:` of its Serve config)."""

    model_config = ConfigDict(extra="forbid")

    graph: GraphSpec = Field(description="Nodes, flow and output of the graph.")
    http: Optional[HttpSecurity] = Field(
        None, description="API keys, body limit, request ids and load shedding (deployments/http/security); without it only the default body limit (1 MiB)."
    )
    readiness_period_s: float = Field(
        1.0, gt=0, le=10, description="How often each replica runs its nodes' readiness checks in the background; "
        "/readyz and Serve's health check read the last result (deployments/http/readiness.py)."
    )
    score_sample_ratio: float = Field(
        0.1, ge=0, le=1, description="Share of model calls whose scores go to ray_graph_model_scores (one observation "
        "per item): the distribution per version, at a tenth of the cost of every call's (deployments/metrics.py)."
    )
    caller_sampling_ratio: Optional[float] = Field(None, ge=0, le=1, description=CALLER_SAMPLING_RATIO_DESCRIPTION)
    unhealthy_after_s: float = Field(
        30.0, gt=0, description="check_health fails (Serve replaces the replica) once a node's backend is unreachable this long."
    )
    payload_log: Optional[PayloadLogConfig] = Field(
        None, description="Log requests, answers, chosen nodes' outputs, model versions and routes as CloudEvents "
        "to a file, a Redis stream or an HTTP receiver, sampled, off the request path (deployments/payloads)."
    )

    drift: Optional[DriftConfig] = Field(
        None, description="Drift detection on the logged requests' features and scores against the model version's "
        "training sample, in a deployment of its own (deployments/monitoring)."
    )

    @model_validator(mode="after")
    def _whole_graph(self):
        problems = validate(self.graph)
        if self.payload_log is not None:
            problems += [Problem(f"payload_log.{path}", reason) for path, reason in self.payload_log.problems(
                set(self.graph.request), set(self.graph.output), set(self.graph.nodes))]
        if self.drift is not None:
            logged = set(self.payload_log.nodes) if self.payload_log is not None else None
            problems += [Problem(f"drift.{path}" if path else "drift", reason)
                         for path, reason in self.drift.problems(self.graph.nodes, logged)]
        for step, path in walk(self.graph.flow):
            for index, guard in enumerate(getattr(step, "rollout", None) and step.rollout.guards or []):
                if guard.metric == "drift" and self.drift is None:
                    problems.append(Problem(f"{path}.rollout.guards[{index}]", "a drift guard needs the app's drift: (its monitor's flag)"))
        if problems:
            raise GraphSpecError(problems)
        return self


def parse_args(args: Any) -> GraphArgs:
    """GraphArgs, or GraphSpecError with one Problem per problem (pydantic's
    errors and the whole-graph ones alike)."""
    if isinstance(args, GraphArgs):
        return args
    try:
        return GraphArgs.model_validate(args)
    except ValidationError as error:
        raise GraphSpecError([Problem(path, reason) for path, reason in reasons(error)]) from None


def args_from_config(config: dict[str, Any], app: Optional[str] = None) -> dict[str, Any]:
    """The graph app's `args` from a full Serve config (the app named `app`, or
    the first one built by apps.graph:build: configs/local.yaml's recommend),
    or the args themselves."""
    if "applications" not in config:
        return config
    apps = [a for a in config["applications"] if (a.get("name") == app if app else a.get("import_path") == IMPORT_PATH)]
    if not apps:
        names = [a.get("name") for a in config["applications"]]
        raise ValueError(f"no graph application {('named ' + app) if app else 'built by ' + IMPORT_PATH} in {names}")
    return apps[0].get("args") or {}


def load(path: str | Path, app: Optional[str] = None) -> GraphArgs:
    """The graph app's args from a Serve config file, validated."""
    with open(path) as handle:
        return parse_args(args_from_config(yaml.safe_load(handle), app))
