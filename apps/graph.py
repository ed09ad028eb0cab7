"""The one builder of declarative graphs: a graph spec in a Serve config's
application `args` (docs/graphs.md).

    applications:
      - name: recommend
        import_path: apps.graph:build
        args:
          graph: {name: ..., request: ..., nodes: ..., flow: ..., output: ...}

`GraphArgs` types the args (pydantic, extra="forbid"; the whole-graph checks
of deployments/graph/validate.py run in its validator, so a bad graph fails
where the config is loaded, naming the key). `in_process(args)` builds the
graph as a plain `GraphExecutor`: a notebook prototype, tests, no Ray.

`build(args)` is the Serve builder (deployments/graph/serving.py): an ingress
deployment running the GraphExecutor, one `GraphNode` deployment per node
with `placement: deployment` (its own num_replicas / autoscaling_config /
ray_actor_options / max_ongoing_requests), and an engine deployment per
`mode: embedded` LLM node.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from apps.security import HttpSecurity
from deployments.graph.executor import GraphExecutor
from deployments.graph.spec import GraphSpec
from deployments.graph.validate import GraphSpecError, Problem, validate

IMPORT_PATH = "apps.graph:build"


class GraphArgs(BaseModel):
    """Application args of a graph app (the `args:` of its Serve config)."""

    model_config = ConfigDict(extra="forbid")

    graph: GraphSpec = Field(description="Nodes, flow and output of the graph.")
    http: Optional[HttpSecurity] = Field(
        None, description="API keys, body limit, request ids and load shedding (apps.security); none of them when absent."
    )
    unhealthy_after_s: float = Field(
        30.0, gt=0, description="check_health fails (Serve replaces the replica) once a node's backend is unreachable this long."
    )

    @model_validator(mode="after")
    def _whole_graph(self):
        problems = validate(self.graph)
        if problems:
            raise ValueError("\n".join(map(str, problems)))
        return self


def parse_args(args: Any) -> GraphArgs:
    """GraphArgs, or GraphSpecError with one `path: message` per problem
    (pydantic's errors and the whole-graph ones alike)."""
    try:
        return GraphArgs.model_validate(args)
    except ValidationError as error:
        problems = []
        for e in error.errors():
            if e["type"] == "value_error" and not e["loc"]:  # the whole-graph validator: already `path: message` lines
                problems += [Problem(*line.split(": ", 1)) for line in str(e["ctx"]["error"]).splitlines()]
            else:
                path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
                problems.append(Problem(path, e["msg"]))
        raise GraphSpecError(problems) from None


def args_from_config(config: dict[str, Any], app: Optional[str] = None) -> dict[str, Any]:
    """The graph app's `args` from a full Serve config (the app named `app`, or
    the only one built by apps.graph:build), or the args themselves."""
    if "applications" not in config:
        return config
    apps = [a for a in config["applications"] if (a.get("name") == app if app else a.get("import_path") == IMPORT_PATH)]
    if len(apps) != 1:
        names = [a.get("name") for a in config["applications"]]
        raise ValueError(f"expected one graph application {('named ' + app) if app else 'built by ' + IMPORT_PATH}, found {len(apps)} in {names}")
    return apps[0].get("args") or {}


def load(path: str | Path, app: Optional[str] = None) -> GraphArgs:
    with open(path) as handle:
        return parse_args(args_from_config(yaml.safe_load(handle), app))


def in_process(args: GraphArgs | dict[str, Any]) -> GraphExecutor:
    """The graph as a plain async object: every node inline, in this process."""
    args = args if isinstance(args, GraphArgs) else parse_args(args)
    return GraphExecutor(args.graph)


def _engine(name: str, node: Any) -> Any:
    """An embedded LLM node's engine: ray.serve.llm's LLMServer, in this app."""
    from deployments.llm_engine import llm_deployment, resolve

    engine = node.config.engine
    return llm_deployment(engine, resolve(engine), name_prefix=f"GraphLLM:{name}:")


def _node_options(name: str, node: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"name": f"node:{name}"}
    if node.num_replicas is not None:
        options["num_replicas"] = node.num_replicas
    if node.autoscaling_config is not None:
        options["autoscaling_config"] = node.autoscaling_config
    if node.max_ongoing_requests is not None:
        options["max_ongoing_requests"] = node.max_ongoing_requests
    if node.ray_actor_options is not None:
        options["ray_actor_options"] = node.ray_actor_options.model_dump(exclude_none=True)
    return options


def build(args: GraphArgs) -> Any:
    """The Serve builder: Serve validates `args` against the annotation (a bad
    graph fails the deploy, each problem named by its path) and calls this."""
    from deployments.graph.serving import GraphIngress, GraphNode
    from deployments.llm_node import EmbeddedLLMConfig

    args = args if isinstance(args, GraphArgs) else parse_args(args)
    plain = args.model_dump(mode="json", exclude_unset=True)
    engines = {name: _engine(name, node) for name, node in args.graph.nodes.items()
               if getattr(node, "kind", None) == "llm" and isinstance(node.config, EmbeddedLLMConfig)}
    apart = {}
    for name, node in args.graph.nodes.items():
        if node.placement == "deployment":
            apart[name] = GraphNode.options(**_node_options(name, node)).bind(plain, name, engines.pop(name, None))
    return GraphIngress.bind(plain, nodes=apart, llms=engines)
