"""The graph spec: the `graph:` block of a graph application's Serve `args`.

    graph:
      name: recommend
      request: {user_id: {type: int}, item_ids: {type: list[int]}, k: {type: int, default: 10}}
      nodes:   {features: {kind: feature_lookup, ...}, ranker: {kind: triton_model, ...}, ...}
      flow:    {kind: sequence, steps: [{kind: node, node: features}, ...]}
      output:  {items: ranking.items, model: ranker.model}

Nodes say what runs (a kind and that kind's existing config: FeatureLookupConfig,
TritonModelConfig, ...), how it fails (`dependency`, `timeout_s`) and where it
runs (`placement`). The flow says in which order and on which branch. Data moves
by references (deployments/graph/references.py): a node's `inputs` map its
parameter names to references; each node's output is stored under its name,
each composite step's result under the step's `name`.

Typing (pydantic, `extra="forbid"`) catches shapes and each kind's settings;
deployments/graph/validate.py catches what needs the whole graph (references,
cycles, weights, defaults) with the path of the offending key.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.feature_lookup import FeatureLookupConfig
from deployments.graph.references import PATTERN as REFERENCE_PATTERN
from deployments.llm_node import LLMNodeConfig, PromptTemplate
from deployments.python_node import PythonNodeConfig
from deployments.torch_model import TorchModelConfig
from deployments.triton_model import TritonModelConfig

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
Reference = Annotated[str, Field(pattern=REFERENCE_PATTERN)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- request


class RequestField(_Strict):
    type: Literal["int", "float", "str", "bool", "list[int]", "list[float]", "list[str]"] = Field(
        description="JSON type of the field (ints are strict: 7.0 is not an int)."
    )
    default: Any = Field(None, description="Value when the field is absent; absent and no default: required.")
    required: Optional[bool] = Field(None, description="Default: required unless a default is given.")
    min_length: Optional[int] = Field(None, ge=0, description="Lists: at least this many elements.")
    max_length: Optional[int] = Field(None, ge=1, description="Lists: at most this many elements (a bound on the work per request).")
    unique: bool = Field(False, description="Lists: no value twice (a duplicate is a 422 naming it).")
    gt: Optional[float] = Field(None, description="Numbers: strictly greater than this.")

    @model_validator(mode="after")
    def _list_options_on_lists(self):
        given = [name for name in ("min_length", "max_length") if getattr(self, name) is not None] + (["unique"] if self.unique else [])
        if given and not self.type.startswith("list["):
            raise ValueError(f"{', '.join(given)}: only for list fields, this one is {self.type}")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} > max_length {self.max_length}")
        return self

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


# ---------------------------------------------------------------- nodes


class RayActorOptions(_Strict):
    num_cpus: Optional[float] = Field(None, ge=0)
    num_gpus: Optional[float] = Field(None, ge=0)
    memory: Optional[int] = Field(None, ge=0, description="Bytes.")
    resources: Optional[dict[str, float]] = None
    accelerator_type: Optional[str] = None


class _Node(_Strict):
    inputs: dict[str, Union[Reference, list[Reference]]] = Field(
        default_factory=dict, description="Parameter name -> reference (or list of references) resolved before each call."
    )
    timeout_s: Optional[float] = Field(None, gt=0, le=600, description="Bound on one call of the node (besides its own).")
    dependency: Literal["hard", "soft"] = Field(
        "hard", description="hard: a failure fails the request; soft: the node's output is null and the reason is reported."
    )
    cooldown_s: Optional[float] = Field(
        None, gt=0, le=3600,
        description="Soft nodes: after a failure, skip the node this long (null, reason `skipped`) instead of "
        "every request waiting out the same timeout.",
    )
    placement: Literal["inline", "deployment"] = Field(
        "inline", description="inline: in the calling replica; deployment: its own Serve deployment (settings below)."
    )
    num_replicas: Optional[int] = Field(None, ge=1, description="placement: deployment only.")
    autoscaling_config: Optional[dict[str, Any]] = Field(
        None, description="placement: deployment only; Ray Serve's AutoscalingConfig (checked against it)."
    )
    max_ongoing_requests: Optional[int] = Field(None, ge=1, description="placement: deployment only.")
    ray_actor_options: Optional[RayActorOptions] = Field(None, description="placement: deployment only (GPUs, CPUs, memory).")

    # Names the kind needs in `inputs` / may take; None: any (checked by the kind).
    required_inputs: ClassVar[frozenset[str]] = frozenset()
    optional_inputs: ClassVar[Optional[frozenset[str]]] = frozenset()

    @model_validator(mode="after")
    def _cooldown_is_for_soft_nodes(self):
        if self.cooldown_s is not None and self.dependency != "soft":
            raise ValueError("cooldown_s: only a soft node can be skipped (dependency: soft)")
        return self

    def needs_gpu(self) -> bool:
        return bool(self.ray_actor_options and self.ray_actor_options.num_gpus)

    @field_validator("autoscaling_config")
    @classmethod
    def _autoscaling_is_ray_s(cls, config: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if config is not None:
            from pydantic import ValidationError
            from ray.serve.config import AutoscalingConfig  # a pure pydantic model: no cluster needed

            try:
                AutoscalingConfig.model_validate(config)
            except ValidationError as error:
                reasons = [(".".join(map(str, e["loc"])) + ": " if e["loc"] else "") + e["msg"].removeprefix("Value error, ") for e in error.errors()]
                raise ValueError("; ".join(reasons)) from None
        return config


class FeatureLookupNode(_Node):
    """Feast online features of a feature service. inputs: one per join key
    (`user_id: request.user_id`, `item_id: request.item_ids`): lists are zipped
    into entity rows, scalars repeated on each. Output: a FeatureFrame
    (reference columns as `features.<view>__<feature>`)."""

    kind: Literal["feature_lookup"]
    config: FeatureLookupConfig = Field(default_factory=FeatureLookupConfig)
    optional_inputs: ClassVar[Optional[frozenset[str]]] = None  # the join keys, known once the store is open


class TritonModelNode(_Node):
    """A model on Triton, its version resolved from an MLflow alias. inputs:
    `features` (a feature lookup's output, columns in the version's recorded
    order, or a matrix). Output: {scores: [...], model: {name, version, alias}}."""

    kind: Literal["triton_model"]
    config: TritonModelConfig
    required_inputs: ClassVar[frozenset[str]] = frozenset({"features"})


class TorchModelNode(_Node):
    """A PyTorch model from MLflow run in the replica. Same inputs and output as triton_model."""

    kind: Literal["torch_model"]
    config: TorchModelConfig
    required_inputs: ClassVar[frozenset[str]] = frozenset({"features"})

    @model_validator(mode="after")
    def _cuda_needs_its_own_deployment(self):
        if self.config.device == "cuda" and self.placement == "inline":
            raise ValueError(
                "config.device cuda: an inline node runs in the calling replica, which has no GPU; "
                "use placement: deployment with ray_actor_options.num_gpus"
            )
        return self


class LLMNode(_Node):
    """One chat completion of a prompt rendered from `prompt_template` (str.format);
    every template field is an input. Output: {text, model}."""

    kind: Literal["llm"]
    config: LLMNodeConfig
    prompt_template: PromptTemplate = Field(min_length=1)
    optional_inputs: ClassVar[Optional[frozenset[str]]] = None  # the template's fields


class AggregateConfig(_Strict):
    op: Literal["top_k", "mean_scores"] = Field(
        description=(
            "top_k: inputs items, scores, k (and optional features: the rows' feature values for `best`) -> "
            "{items: [{item_id, score}], best: the top item with its features}. "
            "mean_scores: inputs outputs (a list of model outputs) -> {scores, models} (an ensemble)."
        )
    )


AGGREGATE_INPUTS = {"top_k": ({"items", "scores", "k"}, {"features"}), "mean_scores": ({"outputs"}, set())}


class AggregateNode(_Node):
    kind: Literal["aggregate"]
    config: AggregateConfig


class PythonNode(_Node):
    """A user's callable by import path, called with the inputs as keyword arguments."""

    kind: Literal["python"]
    config: PythonNodeConfig
    optional_inputs: ClassVar[Optional[frozenset[str]]] = None  # the callable's own parameters


NodeSpec = Annotated[
    Union[FeatureLookupNode, TritonModelNode, TorchModelNode, LLMNode, AggregateNode, PythonNode],
    Field(discriminator="kind"),
]
MODEL_KINDS = ("triton_model", "torch_model")

# ---------------------------------------------------------------- flow


class NodeStep(_Strict):
    """Run one node; its output is stored under the node's name."""

    kind: Literal["node"]
    node: Name


class SkipStep(_Strict):
    """Do nothing (a switch branch that leaves its slot null)."""

    kind: Literal["skip"]


class SequenceStep(_Strict):
    """Run steps one after the other; the result is the last step's."""

    kind: Literal["sequence"]
    steps: list["Step"] = Field(min_length=1)


class Condition(_Strict):
    field: Reference = Field(description="A request field or a feature value, e.g. request.segment, features.user_features__age[0].")
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "present", "absent"] = "eq"
    value: Any = Field(None, description="Compared with the field (a list for in / not_in; unused by present / absent).")


class SwitchCase(_Strict):
    when: Condition
    then: "Step"


class SwitchStep(_Strict):
    """The first case whose condition holds runs, else `default` (required)."""

    kind: Literal["switch"]
    name: Name = Field(description="Slot holding the result of the branch taken.")
    cases: list[SwitchCase] = Field(min_length=1)
    default: Optional["Step"] = Field(None, description="Runs when no case matches; a switch must have one.")


class FanoutStep(_Strict):
    """Run branches concurrently, then the `merge` node (its inputs reference the branches)."""

    kind: Literal["fanout"]
    branches: list["Step"] = Field(min_length=2)
    merge: Name = Field(description="Node that combines the branches (e.g. aggregate mean_scores); its output is the result.")


class Variant(_Strict):
    name: Name
    weight: float = Field(ge=0, le=1)
    then: "Step"


class SplitStep(_Strict):
    """Weighted split (A/B): a stable hash of `sticky_key` picks the variant, so
    the same key (user) always gets the same variant, in every process."""

    kind: Literal["split"]
    name: Name = Field(description="Slot holding the chosen variant's result; the answer's `routes` names the variant.")
    sticky_key: Optional[Reference] = Field(None, description="e.g. request.user_id; absent: each request drawn at random.")
    salt: Optional[str] = Field(None, description="Hash salt (default: the step's name): change it to reshuffle users.")
    variants: list[Variant] = Field(min_length=2)


class ShadowStep(_Strict):
    """Run `primary` and answer with it; mirror the same inputs to `candidate` in
    the background (never delaying or changing the answer), record the comparison."""

    kind: Literal["shadow"]
    name: Name = Field(description="Slot holding the primary's result.")
    primary: "Step"
    candidate: "Step"


Step = Annotated[
    Union[NodeStep, SkipStep, SequenceStep, SwitchStep, FanoutStep, SplitStep, ShadowStep], Field(discriminator="kind")
]
for _model in (SequenceStep, SwitchCase, SwitchStep, FanoutStep, Variant, SplitStep, ShadowStep):
    _model.model_rebuild()

# ---------------------------------------------------------------- graph


class GraphSpec(_Strict):
    name: Name = Field(description="Graph name (metrics label, shadow records).")
    request: dict[Name, RequestField] = Field(description="Request fields: the body is validated against them.")
    nodes: dict[Name, NodeSpec] = Field(min_length=1)
    flow: Step
    output: dict[Name, Reference] = Field(min_length=1, description="Answer field -> reference.")
