"""The `python` node kind: a user's own Python callable, given by import
path (`package.module:attribute`).

A function is called with the node's resolved inputs as keyword arguments
(plus the config's `params`); a class is instantiated once with `params`
and the instance is called with the inputs, so it can hold state (a loaded
model, a client). Either may be sync or async; a sync callable that blocks
can be sent to a worker thread with `thread: true`. Its inputs are the
callable's parameters (those `params` does not bind), checked at load.

With `batch` (as with Ray Serve's `@serve.batch`), the callable takes a
batch: each input parameter gets a list, one value per request, and it
returns a list of results in the same order; a result that is an exception
fails that request alone. `max_batch_size` counts requests.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any, Callable, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.nodes.base import Node, NodeSpec
from deployments.nodes.batching import Batcher, Failed

IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


def import_callable(path: str) -> Callable[..., Any]:
    """`pkg.module:name` (or `pkg.module:Class.method`) -> the object; ValueError says why not."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(f"cannot import module {module_name!r}: {type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{path} is not callable")
    return target


class PythonNodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callable: str = Field(
        pattern=IMPORT_PATH, description="Import path `module:function` or `module:Class` (a class is instantiated with params)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments: the class's constructor's, or a function's besides the inputs."
    )
    thread: bool = Field(False, description="Run a sync callable in a worker thread (it blocks the event loop otherwise).")

    @field_validator("callable")
    @classmethod
    def _importable(cls, path: str) -> str:
        import_callable(path)
        return path


class PythonNode(NodeSpec):
    """A user's callable by import path, called with the inputs as keyword arguments."""

    kind: Literal["python"]
    config: PythonNodeConfig
    batches: ClassVar[bool] = True

    def inputs_taken(self) -> tuple[set[str], Optional[set[str]]]:
        """The callable's parameters not bound by `params` (a class: its __call__'s)."""
        target = import_callable(self.config.callable)
        try:
            signature = inspect.signature(target.__call__ if inspect.isclass(target) else target)
        except (TypeError, ValueError):
            return set(), None
        params = [p for p in signature.parameters.values() if p.name != "self"]
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return set(), None
        bound = set(self.config.params) if not inspect.isclass(target) else set()
        named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in bound]
        required = {p.name for p in named if p.default is p.empty}
        return required, {p.name for p in named} - required

    def build(self, name: str, companion: Any = None) -> Node:
        return PythonCallable(name, self)


class PythonCallable(Node):
    def __init__(self, name: str, spec: PythonNode):
        self.config = config = spec.config
        target = import_callable(config.callable)
        if inspect.isclass(target):
            self._call, self._params = target(**config.params), {}
        else:
            self._call, self._params = target, dict(config.params)
        self._batcher = Batcher(name, spec.batch, self._call_batch) if spec.batch is not None else None

    async def run(self, inputs: dict[str, Any]) -> Any:
        if self._batcher is not None:
            return await self._batcher(inputs)
        return await self._invoke({**self._params, **inputs})

    async def _call_batch(self, batch: list[dict[str, Any]]) -> list[Any]:
        """One call with a list per input; exceptions in its answer fail their own request."""
        names = batch[0].keys()
        results = await self._invoke({**self._params, **{name: [inputs[name] for inputs in batch] for name in names}})
        if not isinstance(results, (list, tuple)) or len(results) != len(batch):
            raise TypeError(f"{self.config.callable} with batch: must return a list of {len(batch)} results, one per request")
        return [Failed(result) if isinstance(result, BaseException) else result for result in results]

    async def _invoke(self, arguments: dict[str, Any]) -> Any:
        if self.config.thread:
            result = await asyncio.to_thread(self._call, **arguments)
        else:
            result = self._call(**arguments)
        if inspect.isawaitable(result):
            result = await result
        return result
