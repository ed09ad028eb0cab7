"""The Serve builder of declarative graphs: a graph spec in a Serve config's
application `args` (docs/graphs.md).

    applications:
      - name: recommend
        import_path: apps.graph:build
        args:
          graph: {name: ..., request: ..., nodes: ..., flow: ..., output: ...}

`build(args)` gives an ingress deployment running the graph
(deployments/graph/serving.py), one `GraphNode` deployment per node with
`placement: deployment` (its own num_replicas / autoscaling_config /
ray_actor_options / max_ongoing_requests), and the companion deployments
node kinds ask for (an embedded LLM node's engine). `in_process(args)` is
the same graph as a plain async object, with no Ray: a notebook prototype,
tests. `load(path)` reads and validates the args from a config file. A
split with a `rollout:` gets the app's RolloutController deployment
(deployments/rollouts/serving.py); in process, the same loop runs on the
caller's event loop.
"""
from __future__ import annotations

from typing import Any

from deployments.graph.args import GraphArgs, args_from_config, load, parse_args
from deployments.graph.executor import GraphExecutor
from deployments.graph.rollout_plans import plans
from deployments.payloads import PayloadLogger

__all__ = ["GraphArgs", "args_from_config", "build", "in_process", "load", "parse_args"]


def in_process(args: GraphArgs | dict[str, Any]) -> GraphExecutor:
    """The graph as a plain async object: every node inline, in this process
    (with its payload log, if the args ask for one: `executor.payloads`)."""
    args = parse_args(args)
    payloads = PayloadLogger(args.graph.name, args.payload_log) if args.payload_log is not None else None
    executor = GraphExecutor(args.graph, payloads=payloads)
    rollout_plans = plans(args.graph)
    if rollout_plans:
        from deployments.rollouts.feed import in_process_feed

        executor.rollouts = in_process_feed(rollout_plans)
    return executor


def refuse_what_the_registry_lacks(args: GraphArgs) -> None:
    """GraphSpecError naming each key whose registry artifact is missing
    (a drift monitor's or an outlier node's reference sample), before any
    replica starts: parsing has no registry to ask."""
    from deployments.graph.validate import GraphSpecError, Problem
    from deployments.registry import missing_run_artifact

    problems = [Problem(f"graph.nodes.{name}.{key}", reason)
                for name, node in args.graph.nodes.items() for key, reason in node.registry_problems()]
    if args.drift is not None:
        model = args.graph.nodes[args.drift.model_node].config
        missing = missing_run_artifact(model.registry_uri, model.model, model.alias, args.drift.reference_artifact)
        if missing is not None:
            problems.append(Problem("drift.reference_artifact", missing))
    if problems:
        raise GraphSpecError(problems)


def build(args: GraphArgs) -> Any:
    """The Serve builder: Serve validates `args` against the annotation (a bad
    graph fails the deploy, each problem named by its path) and calls this."""
    from deployments.graph.serving import GraphIngress, GraphNode

    args = parse_args(args)
    refuse_what_the_registry_lacks(args)
    companions = {name: node.companion(name) for name, node in args.graph.nodes.items()}
    companions = {name: companion for name, companion in companions.items() if companion is not None}
    apart = {
        name: GraphNode.options(**node.deployment_options(name)).bind(name, node, companions.pop(name, None))
        for name, node in args.graph.nodes.items()
        if node.placement == "deployment"
    }
    monitor = None
    if args.drift is not None:
        from deployments.monitoring.serving import DriftMonitor

        model = args.graph.nodes[args.drift.model_node].config
        monitor = DriftMonitor.bind(args.graph.name, args.drift, model.registry_uri, model.model, model.alias)
    controller = None
    rollout_plans = plans(args.graph)
    if rollout_plans:
        from deployments.rollouts.serving import RolloutController

        controller = RolloutController.bind(args.graph.name, rollout_plans, monitor)
    return GraphIngress.bind(args, nodes=apart, companions=companions, monitor=monitor, rollouts=controller)
