"""Whole-graph validation, with the path of the offending key.

Pydantic has already checked each key's type and each node kind's settings;
this checks what only the whole graph can tell: every reference names a
request field or a node that has run by then, no node depends on itself,
split weights add up to 1, every switch has a default, deployment-only
settings are not given to inline nodes (in particular GPUs), and each kind
gets the inputs it takes. `check_bound` adds what is only known once the
nodes exist (a feature service's feature names, a feature view's join keys).

A problem reads `graph.flow.steps[2].variants: weights sum to 0.9, must be 1`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from deployments.graph.references import REQUEST, Reference
from deployments.graph.rollout_plans import rollout_problems
from deployments.graph.spec import STEP_KINDS, GraphSpec, Step, walk
from deployments.nodes import KINDS


def batching_kinds() -> str:
    """The kinds that take `batch:`, for an error message: "a, b and c"."""
    names = [kind.model_fields["kind"].annotation.__args__[0] for kind in KINDS if kind.batches]
    return ", ".join(names[:-1]) + " and " + names[-1]

DEPLOYMENT_ONLY = ("num_replicas", "autoscaling_config", "max_ongoing_requests", "ray_actor_options")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class GraphSpecError(ValueError):
    """Every problem of a graph spec, one `path: message` per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def validate(spec: GraphSpec, root: str = "graph") -> list[Problem]:
    problems: list[Problem] = []
    for name, node in spec.nodes.items():
        problems += _node_problems(spec, name, node, f"{root}.nodes.{name}")
    problems += _cycles(spec, root)
    walker = _FlowWalker(spec, root)
    available = walker.walk(spec.flow, f"{root}.flow", frozenset({REQUEST}))
    problems += walker.problems
    for field, text in spec.output.items():
        problems += _reference_problems(spec, text, f"{root}.output.{field}", available)
    return problems


def check(spec: GraphSpec, root: str = "graph") -> GraphSpec:
    problems = validate(spec, root)
    if problems:
        raise GraphSpecError(problems)
    return spec


# ---------------------------------------------------------------- nodes


def _node_problems(spec: GraphSpec, name: str, node: Any, path: str) -> list[Problem]:
    problems = []
    if node.placement == "inline":
        if node.needs_gpu():
            problems.append(Problem(
                f"{path}.ray_actor_options.num_gpus",
                "an inline node runs in the calling replica, which has no GPU of its own: use placement: deployment",
            ))
        for key in DEPLOYMENT_ONLY:
            if getattr(node, key) is not None and not (key == "ray_actor_options" and node.needs_gpu()):
                problems.append(Problem(f"{path}.{key}", "only for placement: deployment (this node is inline)"))
    elif node.num_replicas is not None and node.autoscaling_config is not None:
        problems.append(Problem(f"{path}.num_replicas", "give num_replicas or autoscaling_config, not both"))
    if node.batch is not None and not node.batches:
        problems.append(Problem(f"{path}.batch", f"{node.kind} nodes do not batch ({batching_kinds()} do)"))

    required, optional = node.inputs_taken()
    given = set(node.inputs)
    for missing in sorted(required - given):
        problems.append(Problem(f"{path}.inputs", f"missing {missing!r} ({node.kind} needs {sorted(required)})"))
    if optional is not None:
        for extra in sorted(given - required - optional):
            problems.append(Problem(f"{path}.inputs.{extra}", f"{node.kind} takes no input {extra!r} (it takes {sorted(required | optional)})"))
    for key, value in node.inputs.items():
        for index, text in enumerate(value if isinstance(value, list) else [value]):
            where = f"{path}.inputs.{key}" + (f"[{index}]" if isinstance(value, list) else "")
            problems += _reference_problems(spec, text, where, None)
    return problems


# ---------------------------------------------------------------- references


def _slots(spec: GraphSpec) -> set[str]:
    return set(spec.nodes) | {step.name for step, _ in walk(spec.flow) if step.slot}


def _reference_problems(spec: GraphSpec, text: str, path: str, available: frozenset[str] | None) -> list[Problem]:
    reference = Reference.parse(text)
    if reference.root == REQUEST:
        if not reference.path:
            return []
        field = reference.path[0]
        if field not in spec.request:
            return [Problem(path, f"request has no field {field!r} (fields: {sorted(spec.request)})")]
        return []
    if reference.root not in _slots(spec):
        return [Problem(path, f"unknown node {reference.root!r} (nodes: {sorted(spec.nodes)}, or request)")]
    if available is not None and reference.root not in available:
        return [Problem(path, f"{reference.root!r} has not run at this point of the flow")]
    return []


def _roots(node: Any) -> Iterator[tuple[str, str]]:
    """(input key, referenced root) of a node's inputs."""
    for key, value in node.inputs.items():
        for text in value if isinstance(value, list) else [value]:
            yield key, Reference.parse(text).root


def _cycles(spec: GraphSpec, root: str) -> list[Problem]:
    """A node whose inputs (through other nodes or steps containing them) need its own output."""
    step_nodes = {step.name: _nodes_in(step) for step, _ in walk(spec.flow) if step.slot}
    depends: dict[str, set[str]] = {}
    for name, node in spec.nodes.items():
        targets: set[str] = set()
        for _, ref_root in _roots(node):
            if ref_root in spec.nodes:
                targets.add(ref_root)
            targets |= step_nodes.get(ref_root, set())
        depends[name] = targets
    problems, reported = [], set()
    for start in spec.nodes:
        cycle = _find_cycle(start, depends)
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            key = next(k for k, r in _roots(spec.nodes[start]) if r == cycle[1] or cycle[1] in step_nodes.get(r, ()))
            problems.append(Problem(f"{root}.nodes.{start}.inputs.{key}", f"cycle: {' -> '.join(cycle)}"))
    return problems


def _find_cycle(start: str, depends: dict[str, set[str]]) -> list[str] | None:
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        current, trail = stack.pop()
        for target in sorted(depends.get(current, ())):
            if target == start:
                return trail + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, trail + [target]))
    return None


# ---------------------------------------------------------------- flow


def _nodes_in(step: Step) -> set[str]:
    return {name for each, _ in walk(step) for name in each.runs()}


class _FlowWalker:
    """Walks the flow in execution order, tracking which slots have run: one
    function per step kind, each returning the slots certainly available
    after its step."""

    def __init__(self, spec: GraphSpec, root: str):
        self.spec, self.root, self.problems = spec, root, []
        self._named: dict[str, str] = {}
        self._kinds: dict[str, Callable[[Any, str, frozenset[str]], frozenset[str]]] = {
            "node": lambda step, path, available: self._node(step.node, f"{path}.node", available),
            "skip": lambda step, path, available: available,
            "sequence": self._sequence,
            "fanout": self._fanout,
            "switch": self._switch,
            "split": self._split,
            "shadow": self._shadow,
        }
        assert set(self._kinds) == STEP_KINDS

    def walk(self, step: Step, path: str, available: frozenset[str]) -> frozenset[str]:
        for text, where in step.references(path):  # read when the step starts
            self.problems.extend(_reference_problems(self.spec, text, where, available))
        if step.slot:
            self._name(step, path)
        after = self._kinds[step.kind](step, path, available)
        return after | {step.name} if step.slot else after

    def _node(self, name: str, path: str, available: frozenset[str]) -> frozenset[str]:
        node = self.spec.nodes.get(name)
        if node is None:
            self.problems.append(Problem(path, f"unknown node {name!r} (nodes: {sorted(self.spec.nodes)})"))
            return available
        for key, ref_root in _roots(node):
            if ref_root != REQUEST and ref_root in _slots(self.spec) and ref_root not in available:
                self.problems.append(Problem(path, f"node {name}'s input {key} reads {ref_root!r}, which has not run at this point of the flow"))
        return available | {name}

    def _name(self, step: Any, path: str) -> None:
        if step.name in self.spec.nodes or step.name == REQUEST:
            self.problems.append(Problem(f"{path}.name", f"{step.name!r} is already a node's name (or request)"))
        elif step.name in self._named:
            self.problems.append(Problem(f"{path}.name", f"{step.name!r} is also the name of {self._named[step.name]}"))
        self._named.setdefault(step.name, path)

    def _branches(self, step: Step, path: str, available: frozenset[str]) -> list[frozenset[str]]:
        return [self.walk(child, child_path, available) for child, child_path in step.children(path)]

    def _sequence(self, step: Any, path: str, available: frozenset[str]) -> frozenset[str]:
        for child, child_path in step.children(path):
            available = self.walk(child, child_path, available)
        return available

    def _fanout(self, step: Any, path: str, available: frozenset[str]) -> frozenset[str]:
        after = available.union(*self._branches(step, path, available))
        return self._node(step.merge, f"{path}.merge", after)

    def _switch(self, step: Any, path: str, available: frozenset[str]) -> frozenset[str]:
        branches = self._branches(step, path, available)
        if step.default is None:
            self.problems.append(Problem(f"{path}.default", "a switch needs a default (the branch taken when no case matches)"))
        return _common(branches, available)

    def _split(self, step: Any, path: str, available: frozenset[str]) -> frozenset[str]:
        if step.rollout is not None:
            _, problems = rollout_problems(self.spec, step, path, self.root)
            self.problems += [Problem(where, reason) for where, reason in problems]
        else:
            missing = [index for index, variant in enumerate(step.variants) if variant.weight is None]
            for index in missing:
                self.problems.append(Problem(f"{path}.variants[{index}].weight", "required (or a rollout: to set the weights)"))
            total = sum(variant.weight or 0.0 for variant in step.variants)
            if not missing and not math.isclose(total, 1.0, abs_tol=1e-9):
                self.problems.append(Problem(f"{path}.variants", f"weights sum to {total:g}, must be 1"))
        names = [variant.name for variant in step.variants]
        for duplicate in sorted({n for n in names if names.count(n) > 1}):
            self.problems.append(Problem(f"{path}.variants", f"variant {duplicate!r} appears twice"))
        return _common(self._branches(step, path, available), available)

    def _shadow(self, step: Any, path: str, available: frozenset[str]) -> frozenset[str]:
        primary, _candidate = self._branches(step, path, available)  # the candidate's slots stay in its own state
        return primary


def _common(branches: Iterable[frozenset[str]], base: frozenset[str]) -> frozenset[str]:
    result = None
    for branch in branches:
        result = branch if result is None else result & branch
    return base if result is None else result


# ---------------------------------------------------------------- once the nodes exist


def check_bound(spec: GraphSpec, fields: dict[str, set[str] | None], root: str = "graph") -> list[Problem]:
    """References into a node's output whose fields the built node can name
    (`fields[node]`, e.g. a feature service's feature names): the first segment
    after the node must be one of them. Covers inputs, switch conditions, output."""
    problems = []

    def look(text: str, path: str) -> None:
        reference = Reference.parse(text)
        known = fields.get(reference.root)
        if known is None or not reference.path or not isinstance(reference.path[0], str):
            return
        if reference.path[0] not in known:
            problems.append(Problem(path, f"{reference.root} has no field {reference.path[0]!r} (it has {sorted(known)})"))

    for name, node in spec.nodes.items():
        for key, value in node.inputs.items():
            for index, text in enumerate(value if isinstance(value, list) else [value]):
                look(text, f"{root}.nodes.{name}.inputs.{key}" + (f"[{index}]" if isinstance(value, list) else ""))
    for step, path in walk(spec.flow, f"{root}.flow"):
        for text, where in step.references(path):
            look(text, where)
    for field, text in spec.output.items():
        look(text, f"{root}.output.{field}")
    return problems
