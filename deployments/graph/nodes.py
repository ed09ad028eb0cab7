"""Node kinds as plain async classes with one method:

    async def run(self, inputs: dict[str, Any]) -> Any

`inputs` are the node's `inputs:` references already resolved (plain values:
numbers, lists, dicts, a FeatureFrame); the result is the node's output. That
one method is the seam for `placement: deployment`: a Serve deployment wraps
`inline_node(spec)` and exposes `run`, and the calling graph gets a proxy
whose `run` is `await handle.run.remote(inputs)` (see `NodeFactory`). The
executor never knows which it has.

Optional methods: `ready() -> (bool, detail)`, `fields() -> set[str]` (names a
reference may use after the node, checked at build), `close()`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from deployments.aggregate import top_k
from deployments.feature_lookup import FeatureFrame, FeatureLookup
from deployments.graph.spec import (
    AggregateNode,
    FeatureLookupNode,
    LLMNode,
    PythonNode,
    TorchModelNode,
    TritonModelNode,
)
from deployments.llm_node import EmbeddedLLMConfig, llm_node, render
from deployments.registry import served


@runtime_checkable
class Node(Protocol):
    async def run(self, inputs: dict[str, Any]) -> Any: ...


# name, spec -> a Node. In-process every node is built inline; the Serve
# builder passes a factory that returns a handle proxy for placement: deployment.
NodeFactory = Callable[[str, Any], Node]


class FeatureLookupRunner:
    """inputs: one value per join key; lists are zipped into rows, scalars repeated."""

    def __init__(self, spec: FeatureLookupNode):
        self.lookup = FeatureLookup(spec.config)

    def join_keys(self) -> set[str]:
        return {key for keys in self.lookup.join_keys.values() for key in keys}

    def fields(self) -> set[str]:
        return set(self.lookup.feature_names)

    async def run(self, inputs: dict[str, Any]) -> FeatureFrame:
        from deployments.errors import NotFound

        lengths = {len(v) for v in inputs.values() if isinstance(v, list)}
        if len(lengths) > 1:
            raise ValueError(f"entity lists of different lengths {sorted(lengths)}")
        count = lengths.pop() if lengths else 1
        rows = [{key: (v[i] if isinstance(v, list) else v) for key, v in inputs.items()} for i in range(count)]
        frame = await self.lookup.lookup(rows)
        if frame.missing:
            raise NotFound(frame.missing)
        return frame

    async def ready(self) -> tuple[bool, str]:
        return await self.lookup.ready()


class TritonRunner:
    def __init__(self, spec: TritonModelNode):
        from deployments.triton_model import TritonModel

        self.model = TritonModel(spec.config)

    def fields(self) -> set[str]:
        return {"scores", "model"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        features = inputs["features"]
        ref = self.model.current()
        if isinstance(features, FeatureFrame):
            missing = sorted(set(ref.input_features) - set(features.values))
            if not ref.input_features or missing:
                raise ValueError(f"{ref.name} v{ref.version} needs features {missing or '(none recorded)'} that the input lacks")
            batch = features.matrix(ref.input_features)
        else:
            batch = np.asarray(features, dtype=np.float32)
        scores = await self.model.infer(batch, ref)
        return {"scores": [float(s) for s in scores], "model": served(ref).model_dump()}

    async def ready(self) -> tuple[bool, str]:
        return await self.model.ready()

    async def close(self) -> None:
        await self.model.close()


class TorchRunner:
    def __init__(self, spec: TorchModelNode):
        from deployments.torch_model import TorchModel

        self.model = TorchModel(spec.config)

    def fields(self) -> set[str]:
        return {"scores", "model"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return await self.model.run(inputs)


class LLMRunner:
    """Renders the prompt from the inputs; output {text, model}. `embedded`
    needs its engine's DeploymentHandle, which only the Serve builder has."""

    def __init__(self, spec: LLMNode, handle: Any = None):
        if isinstance(spec.config, EmbeddedLLMConfig) and handle is None:
            raise ValueError("an embedded LLM runs in the graph's Serve application: in-process, use mode: remote")
        self.spec = spec
        self.llm = llm_node(spec.config, handle)

    def fields(self) -> set[str]:
        return {"text", "model"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        completion = await self.llm.chat(render(self.spec.prompt_template, inputs))
        return {"text": completion.text.strip(), "model": self.spec.config.model_name}


class AggregateRunner:
    def __init__(self, spec: AggregateNode):
        self.op = spec.config.op

    def fields(self) -> set[str]:
        return {"items", "best"} if self.op == "top_k" else {"scores", "models"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.op == "top_k":
            return _top_k(inputs["items"], inputs["scores"], inputs["k"], inputs.get("features"))
        return _mean_scores(inputs["outputs"])


def _top_k(items: list, scores: list[float], k: int, features: FeatureFrame | None) -> dict[str, Any]:
    """{items: [{item_id, score, feature_timestamps}], best: the top item plus
    its row's features (for a prompt)}. With `features`, each item says when
    the features it was scored on were written (per feature view, UTC ISO 8601):
    a stale item is visible in the answer."""
    ranked = top_k(items, np.asarray(scores, dtype=np.float64), k)
    row = {item: index for index, item in enumerate(items)}
    answer = [{"item_id": item, "score": score} for item, score in ranked]
    if features is not None:
        views = sorted({name.split("__", 1)[0] for name in features.timestamps})
        for entry in answer:
            entry["feature_timestamps"] = {view: _utc(features.view_timestamp(view, row[entry["item_id"]])) for view in views}
    best = {key: value for key, value in answer[0].items() if key != "feature_timestamps"} if answer else None
    if best is not None and features is not None:
        best.update({name: column[row[best["item_id"]]] for name, column in features.values.items()})
    return {"items": answer, "best": best}


def _utc(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat()


def _mean_scores(outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Ensemble: the mean of the members' scores (a failed soft member is left out)."""
    present = [o for o in outputs if o is not None]
    if not present:
        raise ValueError("no ensemble member answered")
    lengths = {len(o["scores"]) for o in present}
    if len(lengths) != 1:
        raise ValueError(f"ensemble members scored different numbers of items {sorted(lengths)}")
    mean = np.mean([o["scores"] for o in present], axis=0)
    return {"scores": [float(s) for s in mean], "models": [o.get("model") for o in present]}


_RUNNERS = {
    "feature_lookup": FeatureLookupRunner,
    "triton_model": TritonRunner,
    "torch_model": TorchRunner,
    "llm": LLMRunner,
    "aggregate": AggregateRunner,
}


def inline_node(name: str, spec: Any) -> Node:
    """The node, built in this process (what `placement: inline` always means,
    and what every placement means in a notebook prototype)."""
    if isinstance(spec, PythonNode):
        from deployments.python_node import PythonNode as PythonCallable

        return PythonCallable(spec.config)
    return _RUNNERS[spec.kind](spec)
