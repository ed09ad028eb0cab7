"""The `feature_lookup` node kind: online features of a Feast feature
service for a batch of entity rows, through Feast's own `FeatureStore`.

    features:
      kind: feature_lookup
      config: {repo_path: .local/feast, feature_service: ranking}
      inputs: {user_id: request.user_id, item_id: request.item_ids}

inputs: one per join key of the service's feature views (checked once the
store is open); lists are zipped into entity rows, scalars repeated on each.
Output: a FeatureFrame (reference its columns as `features.<view>__<feature>`).
Unknown entities are a 404 naming them."""
from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from deployments.errors import BackendTimeout, BackendUnavailable, NotFound
from deployments.nodes.base import Node, NodeSpec
from deployments.nodes.batching import Batcher, Failed
from deployments.paths import project_path

os.environ.setdefault("FEAST_USAGE", "False")

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def unset_variables(feature_store_yaml: Path) -> list[str]:
    """Environment variables the file's values refer to (`${VAR}`, `$VAR`) that
    are not set. Feast expands them when it reads the file and leaves an unset
    one as literal text: a registry path `${FEAST_REGISTRY_PATH}` became a new,
    empty registry file of that name next to the yaml (and "feature service
    ranking does not exist"), a connection string `${FEAST_REDIS_CONNECTION}`
    a `KeyError: 'port'` at the first lookup."""

    def strings(node: Any):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)

    with open(feature_store_yaml) as handle:
        config = yaml.safe_load(handle)
    names = {braced or bare for text in strings(config) for braced, bare in _VARIABLE.findall(text)}
    return sorted(name for name in names if name not in os.environ)


def one_attempt_per_lookup(online_store: Any) -> None:
    """Feast's Redis online store reads with redis-py, whose default retries a
    failed connection (a refused AUTH included: AuthenticationError is a
    ConnectionError) 3 times with a jittered exponential backoff of 1 s to 10 s,
    far longer than `timeout_s`: a wrong password or a Redis that is down ended
    as a bare backend_timeout, the cause lost. Make one attempt per lookup
    instead (`retry=null` in the connection string, which Feast passes to
    redis-py as `retry=None`), unless the connection string sets `retry` itself;
    the caller retries (503, Retry-After: 1)."""
    if getattr(online_store, "type", None) != "redis" or online_store.redis_type != "redis":
        return
    params = [part.split("=", 1)[0].strip() for part in online_store.connection_string.split(",") if "=" in part]
    if "retry" not in params:
        online_store.connection_string += ",retry=null"


class FeatureLookupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_path: str = Field(".local/feast", description="Feast repo folder (feature_store.yaml); relative to the project root.")
    feature_service: str = Field("ranking", min_length=1, description="Feature service whose features are fetched.")
    timeout_s: float = Field(1.0, gt=0, le=60, description="Bound on one online lookup (async and thread calls).")
    call: Literal["auto", "async", "inline", "thread"] = Field(
        "auto",
        description=(
            "How the lookup runs in the replica's event loop. auto: Feast's async read where the online store "
            "has one (Redis), inline for SQLite (a local file read: a thread hop costs more than the read), "
            "a worker thread for other stores."
        ),
    )


@dataclass
class FeatureFrame:
    """Online features for N entity rows, by full feature name (`view__feature`)."""

    values: dict[str, list[Any]]
    timestamps: dict[str, list[int]]
    missing: dict[str, list[Any]]

    def matrix(self, names: list[str]) -> np.ndarray:
        return np.asarray([self.values[name] for name in names], dtype=np.float32).T

    def view_timestamp(self, view: str, row: int) -> int:
        """Event timestamp (epoch seconds) of a view's features in one row."""
        return max(ts[row] for name, ts in self.timestamps.items() if name.startswith(f"{view}__"))


class FeatureLookup:
    """Reads one feature service; reports entities that have no features."""

    backend = "feast"

    def __init__(self, config: FeatureLookupConfig):
        from feast import FeatureStore

        self.config = config
        repo = project_path(config.repo_path)
        unset = unset_variables(repo / "feature_store.yaml")
        if unset:
            raise ValueError(f"{repo / 'feature_store.yaml'} needs the environment variable(s) {', '.join(unset)}, unset here")
        self.store = FeatureStore(repo_path=str(repo))
        one_attempt_per_lookup(self.store.config.online_store)
        self.service = self.store.get_feature_service(config.feature_service)
        self.join_keys = {
            p.name: self.store.get_feature_view(p.name).join_keys for p in self.service.feature_view_projections
        }
        self.feature_names = [f"{p.name}__{f.name}" for p in self.service.feature_view_projections for f in p.features]
        self.call = config.call if config.call != "auto" else self._default_call()
        if self.call == "async" and not self.store._get_provider().async_supported.online.read:
            raise ValueError(
                f"features.call=async: the {self.store.config.online_store.type} online store has no async read"
            )

    def _default_call(self) -> str:
        if self.store._get_provider().async_supported.online.read:
            return "async"
        return "inline" if self.store.config.online_store.type == "sqlite" else "thread"

    def _fetch(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        response = self.store.get_online_features(features=self.service, entity_rows=rows, full_feature_names=True)
        return self._frame(rows, response)

    async def _fetch_async(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        response = await self.store.get_online_features_async(features=self.service, entity_rows=rows, full_feature_names=True)
        return self._frame(rows, response)

    def _frame(self, rows: list[dict[str, Any]], response) -> FeatureFrame:
        raw = response.to_dict(include_event_timestamps=True)
        values = {name: raw[name] for name in self.feature_names}
        timestamps = {name: raw[f"{name}__ts"] for name in self.feature_names}
        return FeatureFrame(values, timestamps, self._missing(rows, values))

    def _missing(self, rows: list[dict[str, Any]], values: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Entity key -> the values in `rows` that a feature view knows nothing of."""
        missing: dict[str, list[Any]] = {}
        for view, keys in self.join_keys.items():
            view_columns = [name for name in self.feature_names if name.startswith(f"{view}__")]
            for index, row in enumerate(rows):
                if all(values[name][index] is None for name in view_columns):
                    for key in keys:
                        if row[key] not in missing.setdefault(key, []):
                            missing[key].append(row[key])
        return {k: v for k, v in missing.items() if v}

    async def lookup_many(self, requests: list[list[dict[str, Any]]]) -> list[FeatureFrame | Failed]:
        """One online read for the entity rows of several requests (a row that
        several ask for read once), split back into one frame per request.
        A failed read fails them all (it is the store's failure)."""
        index: dict[tuple, int] = {}
        unique: list[dict[str, Any]] = []
        positions = []
        for rows in requests:
            mine = []
            for row in rows:
                key = tuple(sorted(row.items()))
                if key not in index:
                    index[key] = len(unique)
                    unique.append(row)
                mine.append(index[key])
            positions.append(mine)
        try:
            frame = await self.lookup(unique)
        except Exception as error:
            return [Failed(error)] * len(requests)
        frames: list[FeatureFrame | Failed] = []
        for rows, mine in zip(requests, positions):
            values = {name: [column[i] for i in mine] for name, column in frame.values.items()}
            timestamps = {name: [column[i] for i in mine] for name, column in frame.timestamps.items()}
            frames.append(FeatureFrame(values, timestamps, self._missing(rows, values)))
        return frames

    async def lookup(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        try:
            if self.call == "inline":
                return self._fetch(rows)
            pending = self._fetch_async(rows) if self.call == "async" else asyncio.to_thread(self._fetch, rows)
            return await asyncio.wait_for(pending, self.config.timeout_s)
        except asyncio.TimeoutError:
            raise BackendTimeout(self.backend, self.config.timeout_s) from None
        except Exception as error:  # the online store is gone or broken
            raise BackendUnavailable(self.backend, f"{type(error).__name__}: {error}") from error

    async def ready(self) -> tuple[bool, str]:
        """A real round trip to the online store (a lookup of a key nobody has)."""
        probe = {key: 0 for keys in self.join_keys.values() for key in keys}
        try:
            await self.lookup([probe])
        except Exception as error:
            return False, str(error)
        return True, f"feature service {self.config.feature_service}"


class FeatureLookupNode(NodeSpec):
    """Feast online features of a feature service (module docstring)."""

    kind: Literal["feature_lookup"]
    config: FeatureLookupConfig = Field(default_factory=FeatureLookupConfig)
    optional_inputs: ClassVar[Optional[frozenset[str]]] = None  # the join keys, known once the store is open
    batches: ClassVar[bool] = True

    def build(self, name: str, companion: Any = None) -> Node:
        return FeatureLookupRunner(name, self)


class FeatureLookupRunner(Node):
    def __init__(self, name: str, spec: FeatureLookupNode):
        self.lookup = FeatureLookup(spec.config)
        self.read = self.lookup.lookup
        if spec.batch is not None:
            if spec.config.call == "auto" and self.lookup.call == "inline":
                # An inline read never yields the event loop: nothing could gather behind it.
                self.lookup.call = "thread"
            self.read = Batcher(name, spec.batch, self.lookup.lookup_many, rows=len)

    def join_keys(self) -> set[str]:
        return {key for keys in self.lookup.join_keys.values() for key in keys}

    def fields(self) -> set[str]:
        return set(self.lookup.feature_names)

    async def run(self, inputs: dict[str, Any]) -> FeatureFrame:
        lengths = {len(v) for v in inputs.values() if isinstance(v, list)}
        if len(lengths) > 1:
            raise ValueError(f"entity lists of different lengths {sorted(lengths)}")
        count = lengths.pop() if lengths else 1
        rows = [{key: (v[i] if isinstance(v, list) else v) for key, v in inputs.items()} for i in range(count)]
        frame = await self.read(rows)
        if frame.missing:
            raise NotFound(frame.missing)
        return frame

    async def ready(self) -> tuple[bool, str]:
        return await self.lookup.ready()
