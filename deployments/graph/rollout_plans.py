"""A split's `rollout:` resolved against its graph (deployments/rollouts):
which variant is the champion, and the registered model and aliases the
two variants serve, read from the first model node under each. Every
problem comes with the path of its key; `plans` gives what the controller
and the replicas act on."""
from __future__ import annotations

from typing import Any, Optional

from deployments.graph.spec import GraphSpec, ShadowStep, SplitStep, walk
from deployments.monitoring.config import MODEL_KINDS
from deployments.rollouts import RolloutPlan


def _model_node(spec: GraphSpec, step: Any) -> Optional[str]:
    """The first model node the step runs, depth first."""
    for each, _ in walk(step):
        for name in each.runs():
            node = spec.nodes.get(name)
            if node is not None and node.kind in MODEL_KINDS:
                return name
    return None


def rollout_problems(spec: GraphSpec, step: SplitStep, path: str, root: str = "graph") -> tuple[Optional[RolloutPlan], list[tuple[str, str]]]:
    """(the plan, or None with problems as (path, reason))."""
    rollout, problems = step.rollout, []
    if rollout is None:
        return None, []
    names = [variant.name for variant in step.variants]
    if len(names) != 2:
        problems.append((f"{path}.variants", f"a rollout splits between two variants, the champion and the challenger ({len(names)} given)"))
    if rollout.challenger not in names:
        problems.append((f"{path}.rollout.challenger", f"{rollout.challenger!r} is not a variant of the split ({names})"))
    for index, variant in enumerate(step.variants):
        if variant.weight is not None:
            problems.append((f"{path}.variants[{index}].weight", "set by the rollout: leave it out"))
    served = {}
    for index, variant in enumerate(step.variants):
        name = _model_node(spec, variant.then)
        if name is None:
            problems.append((f"{path}.variants[{index}].then", f"runs no model node ({', '.join(MODEL_KINDS)}): a rollout moves a model's alias"))
            continue
        config = spec.nodes[name].config
        if not getattr(config, "alias_poll_s", None):
            problems.append((f"{root}.nodes.{name}.config.alias_poll_s", f"the {spec.nodes[name].kind} node of variant "
                             f"{variant.name!r} must follow its alias (alias_poll_s) for a rollout's promotion to reach it"))
        served[variant.name] = config
    shadows = {each.name for each, _ in walk(spec.flow) if isinstance(each, ShadowStep)}
    for index, guard in enumerate(rollout.guards):
        if guard.metric == "shadow_agreement" and guard.shadow not in shadows:
            problems.append((f"{path}.rollout.guards[{index}].shadow", f"{guard.shadow!r} is not a shadow step of the graph "
                             f"(shadow steps: {sorted(shadows)})"))
    if len(served) == 2 and rollout.challenger in served:
        champion = next(name for name in served if name != rollout.challenger)
        mine, theirs = served[champion], served[rollout.challenger]
        if (mine.model, mine.registry_uri) != (theirs.model, theirs.registry_uri):
            problems.append((f"{path}.rollout", f"the variants serve different models ({mine.model} in {mine.registry_uri}, "
                             f"{theirs.model} in {theirs.registry_uri}): a rollout moves one model's alias"))
        elif mine.alias == theirs.alias:
            problems.append((f"{path}.rollout", f"both variants serve {mine.model}@{mine.alias}: nothing to roll out"))
        if not problems:
            return RolloutPlan(graph=spec.name, split=step.name, champion=champion, challenger=rollout.challenger,
                               variants=names, model=mine.model, registry_uri=mine.registry_uri,
                               champion_alias=mine.alias, challenger_alias=theirs.alias, config=rollout), []
    return None, problems


def plans(spec: GraphSpec) -> dict[str, RolloutPlan]:
    """Every split's rollout plan (the spec was validated: no problems left)."""
    found = {}
    for step, path in walk(spec.flow):
        if isinstance(step, SplitStep) and step.rollout is not None:
            plan, problems = rollout_problems(spec, step, path)
            if plan is None:
                raise ValueError(f"{path}.rollout: {problems}")
            found[step.name] = plan
    return found
