"""The graph spec: the `graph:` block of a graph application's Serve `args`.

    graph:
      name: recommend
      request: {user_id: {type: int}, item_ids: {type: list[int]}, k: {type: int, default: 10}}
      nodes:   {features: {kind: feature_lookup, ...}, ranker: {kind: triton_model, ...}, ...}
      flow:    {kind: sequence, steps: [{kind: node, node: features}, ...]}
      output:  {items: ranking.items, model: ranker.model}

Nodes say what runs (a kind registered in deployments/nodes/ and that kind's
config), how it fails (`dependency`, `timeout_s`) and where it
runs (`placement`). The flow says in which order and on which branch. Data moves
by references (deployments/graph/references.py): a node's `inputs` map its
parameter names to references; each node's output is stored under its name,
each composite step's result under the step's `name`.

The flow's shape is known here only: each step type names its children
(`children`), the slot it fills (`slot`) and the nodes it runs itself
(`runs`); `walk` visits them all. The executor, the validator and the
drawing each keep one function per step kind, keyed by `kind`.

Typing (pydantic, `extra="forbid"`) catches shapes and each kind's settings;
deployments/graph/validate.py catches what needs the whole graph (references,
cycles, weights, defaults) with the path of the offending key.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Iterator, Literal, Optional, Union

from pydantic import Field, model_validator

from deployments.nodes import KINDS
from deployments.nodes.base import Name, Reference
from deployments.nodes.base import Strict as _Strict
from deployments.rollouts.config import RolloutConfig


# ---------------------------------------------------------------- request


# Every list and string of a request is bounded, also when the graph does not
# say how: the work a request can ask for, and the memory its parsing takes.
DEFAULT_MAX_LIST_LENGTH = 1024
DEFAULT_MAX_STR_LENGTH = 4096


class RequestField(_Strict):
    type: Literal["int", "float", "str", "bool", "list[int]", "list[float]", "list[str]"] = Field(
        description="JSON type of the field (ints are strict: 7.0 is not an int)."
    )
    default: Any = Field(None, description="Value when the field is absent; absent and no default: required.")
    required: Optional[bool] = Field(None, description="Default: required unless a default is given.")
    min_length: Optional[int] = Field(None, ge=0, description="Lists: at least this many elements; strings: characters.")
    max_length: Optional[int] = Field(
        None, ge=1, description=f"Lists: at most this many elements (a bound on the work per request), default {DEFAULT_MAX_LIST_LENGTH}; "
        f"strings: characters, default {DEFAULT_MAX_STR_LENGTH} (also each string of a list[str])."
    )
    unique: bool = Field(False, description="Lists: no value twice (a duplicate is a 422 naming it).")
    gt: Optional[float] = Field(None, description="Numbers: strictly greater than this.")

    @model_validator(mode="after")
    def _list_options_on_lists(self):
        lengths = [name for name in ("min_length", "max_length") if getattr(self, name) is not None]
        if lengths and not (self.type.startswith("list[") or self.type == "str"):
            raise ValueError(f"{', '.join(lengths)}: only for list and str fields, this one is {self.type}")
        if self.unique and not self.type.startswith("list["):
            raise ValueError(f"unique: only for list fields, this one is {self.type}")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} > max_length {self.max_length}")
        return self

    @property
    def length_bound(self) -> Optional[int]:
        """The max_length that applies: the given one, else the default of lists and strings."""
        if self.max_length is not None:
            return self.max_length
        if self.type.startswith("list["):
            return DEFAULT_MAX_LIST_LENGTH
        return DEFAULT_MAX_STR_LENGTH if self.type == "str" else None

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


# ---------------------------------------------------------------- nodes

# One discriminated union of the registered kinds (deployments/nodes/__init__.py).
NodeSpec = Annotated[Union[KINDS], Field(discriminator="kind")]

# ---------------------------------------------------------------- flow


class _Step(_Strict):
    """What every step type says about its shape."""

    slot: ClassVar[bool] = False  # its result is stored under its `name`

    def children(self, path: str) -> list[tuple["Step", str]]:
        """The steps inside this one, each with its path (`<path>.steps[0]`)."""
        return []

    def runs(self) -> list[str]:
        """Nodes this step runs itself (not through its children)."""
        return []

    def references(self, path: str) -> list[tuple[str, str]]:
        """(reference, path) the step itself reads when it starts (a condition, a sticky key)."""
        return []


class NodeStep(_Step):
    """Run one node; its output is stored under the node's name."""

    kind: Literal["node"]
    node: Name

    def runs(self) -> list[str]:
        return [self.node]


class SkipStep(_Step):
    """Do nothing (a switch branch that leaves its slot null)."""

    kind: Literal["skip"]


class SequenceStep(_Step):
    """Run steps one after the other; the result is the last step's."""

    kind: Literal["sequence"]
    steps: list["Step"] = Field(min_length=1)

    def children(self, path: str) -> list[tuple["Step", str]]:
        return [(step, f"{path}.steps[{index}]") for index, step in enumerate(self.steps)]


class Condition(_Strict):
    field: Reference = Field(description="A request field or a feature value, e.g. request.segment, features.user_features__age[0].")
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "present", "absent"] = "eq"
    value: Any = Field(None, description="Compared with the field (a list for in / not_in; unused by present / absent).")


class SwitchCase(_Strict):
    when: Condition
    then: "Step"


class SwitchStep(_Step):
    """The first case whose condition holds runs, else `default` (required)."""

    kind: Literal["switch"]
    name: Name = Field(description="Slot holding the result of the branch taken.")
    cases: list[SwitchCase] = Field(min_length=1)
    default: Optional["Step"] = Field(None, description="Runs when no case matches; a switch must have one.")
    slot: ClassVar[bool] = True

    def children(self, path: str) -> list[tuple["Step", str]]:
        cases = [(case.then, f"{path}.cases[{index}].then") for index, case in enumerate(self.cases)]
        return cases + ([(self.default, f"{path}.default")] if self.default is not None else [])

    def references(self, path: str) -> list[tuple[str, str]]:
        return [(case.when.field, f"{path}.cases[{index}].when.field") for index, case in enumerate(self.cases)]


class FanoutStep(_Step):
    """Run branches concurrently, then the `merge` node (its inputs reference the branches)."""

    kind: Literal["fanout"]
    branches: list["Step"] = Field(min_length=2)
    merge: Name = Field(description="Node that combines the branches (e.g. aggregate mean_scores); its output is the result.")

    def children(self, path: str) -> list[tuple["Step", str]]:
        return [(branch, f"{path}.branches[{index}]") for index, branch in enumerate(self.branches)]

    def runs(self) -> list[str]:
        return [self.merge]


class Variant(_Strict):
    name: Name
    weight: Optional[float] = Field(None, ge=0, le=1, description="Share of traffic; left out when a rollout sets it.")
    then: "Step"


class SplitStep(_Step):
    """Weighted split (A/B): a stable hash of `sticky_key` picks the variant, so
    the same key (user) always gets the same variant, in every process."""

    kind: Literal["split"]
    name: Name = Field(description="Slot holding the chosen variant's result; the answer's `routes` names the variant.")
    sticky_key: Optional[Reference] = Field(None, description="e.g. request.user_id; absent: each request drawn at random.")
    salt: Optional[str] = Field(None, description="Hash salt (default: the step's name): change it to reshuffle users.")
    variants: list[Variant] = Field(min_length=2)
    rollout: Optional[RolloutConfig] = Field(
        None, description="Step the challenger variant's weight up while guards against the champion hold, then move "
        "the champion alias to it; roll back on a breach (deployments/rollouts).")
    slot: ClassVar[bool] = True

    def children(self, path: str) -> list[tuple["Step", str]]:
        return [(variant.then, f"{path}.variants[{index}].then") for index, variant in enumerate(self.variants)]

    def references(self, path: str) -> list[tuple[str, str]]:
        return [(self.sticky_key, f"{path}.sticky_key")] if self.sticky_key else []


class ShadowStep(_Step):
    """Run `primary` and answer with it; mirror the same inputs to `candidate` in
    the background (never delaying or changing the answer), record the comparison."""

    kind: Literal["shadow"]
    name: Name = Field(description="Slot holding the primary's result.")
    primary: "Step"
    candidate: "Step"
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests mirrored to the candidate.")
    max_in_flight: int = Field(
        16, ge=1, le=10_000, description="Mirrored calls under way at once per replica; beyond it a mirror is dropped "
        "and counted, so a stalled candidate cannot pile up tasks.")
    timeout_s: Optional[float] = Field(10.0, gt=0, le=600, description="Bound on one mirrored call (then counted as failed).")
    top_k: int = Field(5, ge=1, le=1000, description="k of the top-k agreement between primary and candidate scores.")
    slot: ClassVar[bool] = True

    def children(self, path: str) -> list[tuple["Step", str]]:
        return [(self.primary, f"{path}.primary"), (self.candidate, f"{path}.candidate")]


Step = Annotated[
    Union[NodeStep, SkipStep, SequenceStep, SwitchStep, FanoutStep, SplitStep, ShadowStep], Field(discriminator="kind")
]
STEP_KINDS = frozenset({"node", "skip", "sequence", "switch", "fanout", "split", "shadow"})
for _model in (SequenceStep, SwitchCase, SwitchStep, FanoutStep, Variant, SplitStep, ShadowStep):
    _model.model_rebuild()


def walk(step: Step, path: str = "graph.flow") -> Iterator[tuple[Step, str]]:
    """Every step of the flow with its path, depth first, parents first."""
    yield step, path
    for child, child_path in step.children(path):
        yield from walk(child, child_path)


# ---------------------------------------------------------------- graph


class GraphSpec(_Strict):
    name: Name = Field(description="Graph name (metrics label, shadow records).")
    request: dict[Name, RequestField] = Field(description="Request fields: the body is validated against them.")
    nodes: dict[Name, NodeSpec] = Field(min_length=1)
    flow: Step
    output: dict[Name, Reference] = Field(min_length=1, description="Answer field -> reference.")
