"""A picture of a graph: the flow laid out as boxes and arrows, written as
Mermaid text (for Markdown, notebooks, GitHub) or as Graphviz DOT (rendered
to an image offline by `dot`). One layout, two writers, so both show the same.

Boxes: request and answer (stadiums), nodes (name and kind; dashed when
soft, `[deployment]` when placed in their own deployment), decisions
(diamonds: switch, split, shadow, fanout) and joins (small circles). Each
appearance of a node gets its own box, so a node used in two branches does
not draw a false loop. A shadow's candidate hangs off a dashed arrow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from deployments.graph.spec import STEP_KINDS, GraphSpec, Step


@dataclass
class Box:
    id: str
    label: str
    shape: str  # box | diamond | circle | stadium
    dashed: bool = False
    deployment: bool = False


@dataclass
class Edge:
    source: str
    target: str
    label: Optional[str] = None
    dashed: bool = False


@dataclass
class Layout:
    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def box(self, label: str, shape: str, **style: Any) -> str:
        box = Box(f"n{len(self.boxes)}", label, shape, **style)
        self.boxes.append(box)
        return box.id


Entry = tuple[str, Optional[str], bool]  # (source box, edge label, dashed)


def layout(spec: GraphSpec) -> Layout:
    drawing = Layout()
    start = drawing.box("request", "stadium")
    exits = _draw(spec, spec.flow, drawing, [(start, None, False)])
    end = drawing.box("answer: " + ", ".join(spec.output), "stadium")
    _connect(drawing, exits, end)
    return drawing


def _connect(drawing: Layout, entries: list[Entry], target: str) -> None:
    for source, label, dashed in entries:
        drawing.edges.append(Edge(source, target, label, dashed))


def _condition(case: Any) -> str:
    when = case.when
    value = "" if when.op in ("present", "absent") else f" {when.value!r}"
    return f"{when.field} {when.op}{value}"


def _draw(spec: GraphSpec, step: Step, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    """Draws `step` reached from `entries`; returns the entries of what follows."""
    return _KINDS[step.kind](spec, step, drawing, entries)


def _skip(spec: GraphSpec, step: Any, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    skip = drawing.box("skip", "circle")
    _connect(drawing, entries, skip)
    return [(skip, None, False)]


def _sequence(spec: GraphSpec, step: Any, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    for child in step.steps:
        entries = _draw(spec, child, drawing, entries)
    return entries


def _switch(spec: GraphSpec, step: Any, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    decision = drawing.box(f"switch {step.name}", "diamond")
    _connect(drawing, entries, decision)
    exits = []
    for case in step.cases:
        exits += _draw(spec, case.then, drawing, [(decision, _condition(case), False)])
    if step.default is not None:
        exits += _draw(spec, step.default, drawing, [(decision, "default", False)])
    return _join(drawing, exits)


def _split(spec: GraphSpec, step: Any, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    key = f" by {step.sticky_key}" if step.sticky_key else ""
    decision = drawing.box(f"split {step.name}{key}", "diamond")
    _connect(drawing, entries, decision)
    exits = []
    for variant in step.variants:
        share = f"{variant.weight:.0%}" if variant.weight is not None else \
            ("rolled out" if variant.name == step.rollout.challenger else "champion")
        exits += _draw(spec, variant.then, drawing, [(decision, f"{variant.name} {share}", False)])
    return _join(drawing, exits)


def _fanout(spec: GraphSpec, step: Any, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    fork = drawing.box("fanout", "diamond")
    _connect(drawing, entries, fork)
    exits = []
    for branch in step.branches:
        exits += _draw(spec, branch, drawing, [(fork, None, False)])
    return _node(spec, step.merge, drawing, exits)


def _shadow(spec: GraphSpec, step: Any, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    fork = drawing.box(f"shadow {step.name}", "diamond")
    _connect(drawing, entries, fork)
    exits = _draw(spec, step.primary, drawing, [(fork, "primary", False)])
    mirrored = _draw(spec, step.candidate, drawing, [(fork, "mirror", True)])
    compare = drawing.box("compared with the primary (recorded)", "box", dashed=True)
    _connect(drawing, [(source, None, True) for source, _, _ in mirrored], compare)
    return exits


def _node(spec: GraphSpec, name: str, drawing: Layout, entries: list[Entry]) -> list[Entry]:
    node = spec.nodes[name]
    extras = [node.kind]
    if node.timeout_s:
        extras.append(f"{node.timeout_s:g} s")
    if node.dependency == "soft":
        extras.append("soft")
    label = f"{name}\n{' · '.join(extras)}" + ("\n[deployment]" if node.placement == "deployment" else "")
    box = drawing.box(label, "box", dashed=node.dependency == "soft", deployment=node.placement == "deployment")
    _connect(drawing, entries, box)
    return [(box, None, False)]


def _join(drawing: Layout, exits: list[Entry]) -> list[Entry]:
    join = drawing.box("", "circle")
    _connect(drawing, exits, join)
    return [(join, None, False)]


_KINDS = {
    "node": lambda spec, step, drawing, entries: _node(spec, step.node, drawing, entries),
    "skip": _skip,
    "sequence": _sequence,
    "switch": _switch,
    "split": _split,
    "fanout": _fanout,
    "shadow": _shadow,
}
assert set(_KINDS) == STEP_KINDS


# ---------------------------------------------------------------- writers


def mermaid(spec: GraphSpec) -> str:
    drawing = layout(spec)
    shapes = {"box": ('["', '"]'), "diamond": ('{"', '"}'), "circle": ('(("', '"))'), "stadium": ('(["', '"])')}
    lines = ["flowchart TD"]
    for box in drawing.boxes:
        left, right = shapes[box.shape]
        text = box.label.replace('"', "#quot;").replace("\n", "<br/>") or " "
        lines.append(f"    {box.id}{left}{text}{right}")
    for edge in drawing.edges:
        arrow = "-.->" if edge.dashed else "-->"
        label = f'|"{edge.label.replace(chr(34), "#quot;")}"|' if edge.label else ""
        lines.append(f"    {edge.source} {arrow}{label} {edge.target}")
    soft = [b.id for b in drawing.boxes if b.dashed]
    deployed = [b.id for b in drawing.boxes if b.deployment]
    lines.append("    classDef soft stroke-dasharray: 5 5")
    lines.append("    classDef deployment fill:#e8f0fe,stroke:#1a73e8")
    if soft:
        lines.append(f"    class {','.join(soft)} soft")
    if deployed:
        lines.append(f"    class {','.join(deployed)} deployment")
    return "\n".join(lines) + "\n"


def dot(spec: GraphSpec) -> str:
    drawing = layout(spec)
    shapes = {"box": "box", "diamond": "diamond", "circle": "circle", "stadium": "box"}

    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"digraph {quote(spec.name)} {{", '    graph [rankdir=TB, fontname="Helvetica"];', '    node [fontname="Helvetica", fontsize=11];', '    edge [fontname="Helvetica", fontsize=10];']
    for box in drawing.boxes:
        styles = ["rounded"] if box.shape in ("box", "stadium") else []
        styles += ["dashed"] if box.dashed else []
        styles += ["filled"] if box.deployment or box.shape == "stadium" else []
        attributes = [f"label={quote(box.label)}", f"shape={shapes[box.shape]}"]
        if box.shape == "circle" and not box.label:
            attributes += ["width=0.15", "fixedsize=true"]
        if styles:
            attributes.append(f"style={quote(','.join(styles))}")
        if box.deployment:
            attributes.append('fillcolor="#e8f0fe"')
        elif box.shape == "stadium":
            attributes.append('fillcolor="#f1f3f4"')
        lines.append(f"    {box.id} [{', '.join(attributes)}];")
    for edge in drawing.edges:
        attributes = ([f"label={quote(edge.label)}"] if edge.label else []) + (["style=dashed"] if edge.dashed else [])
        lines.append(f"    {edge.source} -> {edge.target}" + (f" [{', '.join(attributes)}]" if attributes else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_png(spec: GraphSpec, path: str) -> None:
    """An image through Graphviz's `dot` (Debian's graphviz: `make venv` installs it)."""
    import shutil
    import subprocess

    binary = shutil.which("dot")
    if binary is None:
        raise RuntimeError("Graphviz's dot is not installed: `apt-get install graphviz` (make venv does it)")
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else "png"
    subprocess.run([binary, f"-T{fmt}", "-o", path], input=dot(spec).encode(), check=True, capture_output=True)
