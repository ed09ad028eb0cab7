"""The `feature_lookup` node kind: online features of a Feast feature
service for a batch of entity rows, through Feast's own `FeatureStore`.

    features:
      kind: feature_lookup
      config: {repo_path: .local/feast, feature_service: ranking}
      inputs: {user_id: request.user_id, item_id: request.item_ids}

inputs: one per join key of the service's feature views (checked once the
store is open); lists are zipped into entity rows, scalars repeated on each.
Output: a FeatureFrame (reference its columns as `features.<view>__<feature>`).
Unknown entities are a 404 naming them.

The read (`read: direct`, the default) goes straight to the store's online
store through Feast's own provider (`online_read`, the interface every online
store implements): one call per feature view for the unique entity keys of
the request (or of a batch of requests), values taken from Feast's protos.
`FeatureStore.get_online_features` does the same reads and wraps them in
request-context resolution, entity protos built twice, a response proto and
`to_dict`'s conversions, about two thirds of its CPU (docs/benchmarks.md);
`read: get_online_features` keeps that path. Both give the same frame
(tests/integration/test_feature_reads.py)."""
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

from deployments.errors import BackendTimeout, BackendUnavailable, NotFound, public_reason
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
    read: Literal["direct", "get_online_features"] = Field(
        "direct",
        description=(
            "direct: each feature view read from the online store through Feast's provider (online_read), "
            "one call per view for the unique entity keys; get_online_features: through FeatureStore.get_online_features "
            "(same values, about 2.5x the CPU)."
        ),
    )
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

    def rows(self, start: int, stop: int) -> "FeatureFrame":
        """Rows [start, stop) of the frame (its `missing` left to the caller)."""
        return FeatureFrame(
            {name: column[start:stop] for name, column in self.values.items()},
            {name: column[start:stop] for name, column in self.timestamps.items()},
            {},
        )

    def view_timestamp(self, view: str, row: int) -> int:
        """Event timestamp (epoch seconds) of a view's features in one row."""
        return max(ts[row] for name, ts in self.timestamps.items() if name.startswith(f"{view}__"))


_SCALAR_VALUES = frozenset({"int32_val", "int64_val", "float_val", "double_val", "string_val", "bool_val", "bytes_val"})


def python_value(value: Any) -> Any:
    """A Feast ValueProto as Python: scalars read off the proto, the rest
    (lists, maps, JSON, timestamps) through Feast's own conversion."""
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _SCALAR_VALUES:
        return getattr(value, kind)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value)


@dataclass
class _ViewRead:
    """What a direct read of one feature view of the service needs."""

    view: Any  # feast.FeatureView
    join_keys: list[str]
    key_types: list[Any]  # feast ValueType of each join key
    features: list[str]
    columns: list[str]  # full names, `view__feature`


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
        self.provider = self.store._get_provider()
        self.service = self.store.get_feature_service(config.feature_service)
        self.views = [self._view_read(projection) for projection in self.service.feature_view_projections]
        self.join_keys = {read.view.name: read.join_keys for read in self.views}
        self.feature_names = [column for read in self.views for column in read.columns]
        self.call = config.call if config.call != "auto" else self._default_call()
        if self.call == "async" and not self.provider.async_supported.online.read:
            raise ValueError(
                f"features.call=async: the {self.store.config.online_store.type} online store has no async read"
            )

    def _view_read(self, projection: Any) -> _ViewRead:
        view = self.store.get_feature_view(projection.name)
        if projection.join_key_map or projection.name_alias:
            raise ValueError(
                f"feature service {self.config.feature_service}: view {projection.name} is projected "
                "(join_key_map or an alias), which feature_lookup does not read"
            )
        entity_types = {column.name: column.dtype.to_value_type() for column in view.entity_columns}
        features = [feature.name for feature in projection.features]
        return _ViewRead(
            view=view,
            join_keys=list(view.join_keys),
            key_types=[entity_types[key] for key in view.join_keys],
            features=features,
            columns=[f"{projection.name}__{name}" for name in features],
        )

    def _default_call(self) -> str:
        if self.provider.async_supported.online.read:
            return "async"
        return "inline" if self.store.config.online_store.type == "sqlite" else "thread"

    # ------------------------------------------------------------ direct reads

    def _entity_keys(self, read: _ViewRead, rows: list[dict[str, Any]]) -> tuple[list[Any], list[int]]:
        """The view's unique entity keys in `rows` (as Feast's EntityKey protos)
        and, per row, the position of its key among them."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        index: dict[tuple, int] = {}
        positions = [index.setdefault(tuple(row[key] for key in read.join_keys), len(index)) for row in rows]
        unique = list(index)
        columns = [python_values_to_proto_values([key[i] for key in unique], value_type)
                   for i, value_type in enumerate(read.key_types)]
        keys = [EntityKey(join_keys=read.join_keys, entity_values=[column[n] for column in columns]) for n in range(len(unique))]
        return keys, positions

    def _assemble(self, rows: list[dict[str, Any]], reads: list[tuple[_ViewRead, list[int], list[Any]]]) -> FeatureFrame:
        values: dict[str, list[Any]] = {}
        timestamps: dict[str, list[int]] = {}
        for read, positions, found in reads:
            seconds = [int(ts.timestamp()) if ts is not None else 0 for ts, _ in found]
            row_seconds = [seconds[p] for p in positions]
            for feature, column in zip(read.features, read.columns):
                unique = [python_value(data[feature]) if data is not None and feature in data else None for _, data in found]
                values[column] = [unique[p] for p in positions]
                timestamps[column] = row_seconds
        return FeatureFrame(values, timestamps, self._missing(rows, values))

    def _read_direct(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        reads = []
        for read in self.views:
            keys, positions = self._entity_keys(read, rows)
            reads.append((read, positions, self.provider.online_read(self.store.config, read.view, keys, read.features)))
        return self._assemble(rows, reads)

    async def _read_direct_async(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        planned = [(read, *self._entity_keys(read, rows)) for read in self.views]
        found = await asyncio.gather(*(
            self.provider.online_read_async(self.store.config, read.view, keys, read.features) for read, keys, _ in planned
        ))
        return self._assemble(rows, [(read, positions, result) for (read, _, positions), result in zip(planned, found)])

    # ------------------------------------------------------------ Feast's SDK reads

    def _read_sdk(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        response = self.store.get_online_features(features=self.service, entity_rows=rows, full_feature_names=True)
        return self._frame(rows, response)

    async def _read_sdk_async(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        response = await self.store.get_online_features_async(features=self.service, entity_rows=rows, full_feature_names=True)
        return self._frame(rows, response)

    def _frame(self, rows: list[dict[str, Any]], response) -> FeatureFrame:
        raw = response.to_dict(include_event_timestamps=True)
        values = {name: raw[name] for name in self.feature_names}
        timestamps = {name: raw[f"{name}__ts"] for name in self.feature_names}
        return FeatureFrame(values, timestamps, self._missing(rows, values))

    # ------------------------------------------------------------ lookups

    def _missing(self, rows: list[dict[str, Any]], values: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Entity key -> the values in `rows` that a feature view knows nothing of."""
        missing: dict[str, list[Any]] = {}
        for read in self.views:
            for index, row in enumerate(rows):
                if all(values[name][index] is None for name in read.columns):
                    for key in read.join_keys:
                        if row[key] not in missing.setdefault(key, []):
                            missing[key].append(row[key])
        return {k: v for k, v in missing.items() if v}

    async def lookup_many(self, requests: list[list[dict[str, Any]]]) -> list[FeatureFrame | Failed]:
        """One online read for the entity rows of several requests (an entity
        that several ask for is read once: reads are per view, of unique keys),
        split back into one frame per request. A failed read fails them all
        (it is the store's failure)."""
        await asyncio.sleep(0)  # an inline read yields once: requests already running may join the next batch
        try:
            frame = await self.lookup([row for rows in requests for row in rows])
        except Exception as error:
            return [Failed(error)] * len(requests)
        frames: list[FeatureFrame | Failed] = []
        start = 0
        for rows in requests:
            part = frame.rows(start, start + len(rows))
            part.missing = self._missing(rows, part.values)
            frames.append(part)
            start += len(rows)
        return frames

    async def lookup(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        direct = self.config.read == "direct"
        try:
            if self.call == "inline":
                return self._read_direct(rows) if direct else self._read_sdk(rows)
            if self.call == "async":
                pending = self._read_direct_async(rows) if direct else self._read_sdk_async(rows)
            else:
                pending = asyncio.to_thread(self._read_direct if direct else self._read_sdk, rows)
            return await asyncio.wait_for(pending, self.config.timeout_s)
        except asyncio.TimeoutError:
            raise BackendTimeout(self.backend, self.config.timeout_s) from None
        except Exception as error:  # the online store is gone or broken
            raise BackendUnavailable(self.backend, public_reason(error, self.backend)) from error

    async def ready(self) -> tuple[bool, str]:
        """A real round trip to the online store (a lookup of a key nobody has)."""
        probe = {key: 0 for keys in self.join_keys.values() for key in keys}
        try:
            await self.lookup([probe])
        except Exception as error:
            cause = error.__cause__ or error  # the store's own error: its text is for keyed callers and the log
            return False, f"{type(cause).__name__}: {cause}"
        return True, f"feature service {self.config.feature_service}"


class FeatureLookupNode(NodeSpec):
    """Feast online features of a feature service (module docstring)."""

    kind: Literal["feature_lookup"]
    config: FeatureLookupConfig = Field(default_factory=FeatureLookupConfig)
    optional_inputs: ClassVar[Optional[frozenset[str]]] = None  # the join keys, known once the store is open
    batches: ClassVar[bool] = True
    default_num_cpus: ClassVar[float] = 0.25  # waits on the online store

    def build(self, name: str, companion: Any = None) -> Node:
        return FeatureLookupRunner(name, self)


class FeatureLookupRunner(Node):
    def __init__(self, name: str, spec: FeatureLookupNode):
        self.lookup = FeatureLookup(spec.config)
        self.read = self.lookup.lookup
        if spec.batch is not None:
            timeout_s = spec.config.timeout_s
            self.read = Batcher(name, spec.batch, self.lookup.lookup_many, rows=len, timeout_s=timeout_s,
                                on_timeout=lambda: BackendTimeout(self.lookup.backend, timeout_s))

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
