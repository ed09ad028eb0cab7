"""What every node kind is made of: a spec (what the config says) and a node
(what runs).

A kind is one module of this package holding its config, its client, its
spec class (a `NodeSpec` with `kind: Literal[...]`), its node class (a
`Node`) and its input rules; `deployments/nodes/__init__.py` registers it
with one line. The graph layer (spec union, validation, executor, Serve
builder) knows kinds only through this interface:

- `NodeSpec.build(name, companion)` -> the `Node` this process runs;
- `NodeSpec.inputs_taken()` -> the input names it needs and may take;
- `NodeSpec.companion(name)` -> an extra Serve deployment it needs in the
  graph's application (an embedded LLM's engine), or None;
- `Node.run(inputs)` and the optional `fields`, `join_keys`, `ready`,
  `close`, declared here with their defaults so nothing is guessed.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.nodes.batching import BatchConfig

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# `request.user_id`, `features`, `ranking.best.item_id`, `features.age[0]`:
# the syntax; deployments/graph/references.py walks them.
REFERENCE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*$"
Reference = Annotated[str, Field(pattern=REFERENCE_PATTERN)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Node:
    """A node as it runs: one `run` per request, with the node's `inputs:`
    references already resolved to plain values (numbers, lists, dicts, a
    FeatureFrame); the result is the node's output.

    `run` is the seam for `placement: deployment`: a Serve deployment wraps
    the node and the calling graph holds a stand-in whose `run` is one handle
    call (deployments/graph/serving.py). The executor never knows which."""

    # The output is {scores, model}: the executor records score metrics.
    records_scores: ClassVar[bool] = False

    async def run(self, inputs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def fields(self) -> Optional[set[str]]:
        """Names a reference may use right after the node (checked at build); None: anything."""
        return None

    def join_keys(self) -> Optional[set[str]]:
        """The entity keys its inputs must name exactly (a feature service's); None: no such rule."""
        return None

    async def ready(self) -> Optional[tuple[bool, str]]:
        """(ready, detail) of its backend; None: it has none to check."""
        return None

    async def close(self) -> None:
        """Release clients and background tasks."""


class RayActorOptions(Strict):
    num_cpus: Optional[float] = Field(None, ge=0)
    num_gpus: Optional[float] = Field(None, ge=0)
    memory: Optional[int] = Field(None, ge=0, description="Bytes.")
    resources: Optional[dict[str, float]] = None
    accelerator_type: Optional[str] = None


class NodeSpec(Strict):
    """What every node says besides its kind's config: its inputs, how it
    fails (`dependency`, `timeout_s`, `cooldown_s`) and where it runs
    (`placement` and the Serve settings of a node placed apart)."""

    # Each kind adds `kind: Literal["<kind>"]` (the union's discriminator) and its `config`.
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
    batch: Optional[BatchConfig] = Field(
        None, description="Merge concurrent requests' calls into one backend call (deployments/nodes/batching.py); "
        "kinds that can: feature_lookup, triton_model, v2_model, torch_model, python.",
    )

    # The kind merges calls when `batch` is given (its node takes it).
    batches: ClassVar[bool] = False

    # CPUs a replica of the node placed apart reserves unless its
    # ray_actor_options say: a whole one for kinds that compute in the replica
    # (a PyTorch model, user code), a quarter for kinds that mostly wait on a
    # remote backend (Feast, Triton, an LLM server), as graph ingresses do: a
    # laptop's 2-CPU Ray head then holds the demo's apps and a user's own.
    default_num_cpus: ClassVar[float] = 1.0

    # The input names the kind needs / may take besides; None: any (the kind checks them).
    required_inputs: ClassVar[frozenset[str]] = frozenset()
    optional_inputs: ClassVar[Optional[frozenset[str]]] = frozenset()

    def build(self, name: str, companion: Any = None) -> Node:
        """The node, built in this process; `companion` is the handle of the
        deployment `companion()` asked for, when there is one."""
        raise NotImplementedError

    def inputs_taken(self) -> tuple[set[str], Optional[set[str]]]:
        """(needed, also accepted or None for any)."""
        optional = None if self.optional_inputs is None else set(self.optional_inputs)
        return set(self.required_inputs), optional

    def companion(self, name: str) -> Any:
        """A Serve deployment (bound) this node needs in the graph's application, or None."""
        return None

    def registry_problems(self) -> list[tuple[str, str]]:
        """What the Serve build refuses after asking the registry, as (key
        under the node, reason): parsing has no registry to ask."""
        return []

    def needs_gpu(self) -> bool:
        return bool(self.ray_actor_options and self.ray_actor_options.num_gpus)

    def deployment_options(self, name: str) -> dict[str, Any]:
        """Serve options of the node's own deployment (`placement: deployment`)."""
        options: dict[str, Any] = {"name": f"node:{name}"}
        for key in ("num_replicas", "autoscaling_config", "max_ongoing_requests"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        actor_options = self.ray_actor_options.model_dump(exclude_none=True) if self.ray_actor_options is not None else {}
        options["ray_actor_options"] = {"num_cpus": self.default_num_cpus, **actor_options}
        return options

    @model_validator(mode="after")
    def _cooldown_is_for_soft_nodes(self):
        if self.cooldown_s is not None and self.dependency != "soft":
            raise ValueError("cooldown_s: only a soft node can be skipped (dependency: soft)")
        return self

    @field_validator("autoscaling_config")
    @classmethod
    def _autoscaling_is_ray_s(cls, config: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if config is not None:
            from pydantic import ValidationError
            from ray.serve.config import AutoscalingConfig  # a pure pydantic model: no cluster needed

            from deployments.field_paths import reasons

            try:
                AutoscalingConfig.model_validate(config)
            except ValidationError as error:
                raise ValueError("; ".join(f"{path}: {reason}" if path else reason for path, reason in reasons(error))) from None
        return config
