"""Feature lookup node: online features of a Feast feature service for a
batch of entity rows, through Feast's own `FeatureStore`."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.errors import BackendTimeout, BackendUnavailable
from deployments.paths import project_path

os.environ.setdefault("FEAST_USAGE", "False")


class FeatureLookupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_path: str = Field(".local/feast", description="Feast repo folder (feature_store.yaml); relative to the project root.")
    feature_service: str = Field("ranking", min_length=1, description="Feature service whose features are fetched.")
    timeout_s: float = Field(1.0, gt=0, le=60, description="Bound on one online lookup.")


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
        self.store = FeatureStore(repo_path=str(project_path(config.repo_path)))
        self.service = self.store.get_feature_service(config.feature_service)
        self.join_keys = {
            p.name: self.store.get_feature_view(p.name).join_keys for p in self.service.feature_view_projections
        }
        self.feature_names = [f"{p.name}__{f.name}" for p in self.service.feature_view_projections for f in p.features]

    def _fetch(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        response = self.store.get_online_features(features=self.service, entity_rows=rows, full_feature_names=True)
        raw = response.to_dict(include_event_timestamps=True)
        values = {name: raw[name] for name in self.feature_names}
        timestamps = {name: raw[f"{name}__ts"] for name in self.feature_names}
        missing: dict[str, list[Any]] = {}
        for view, keys in self.join_keys.items():
            view_columns = [name for name in self.feature_names if name.startswith(f"{view}__")]
            for index, row in enumerate(rows):
                if all(values[name][index] is None for name in view_columns):
                    for key in keys:
                        if row[key] not in missing.setdefault(key, []):
                            missing[key].append(row[key])
        return FeatureFrame(values, timestamps, {k: v for k, v in missing.items() if v})

    async def lookup(self, rows: list[dict[str, Any]]) -> FeatureFrame:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._fetch, rows), self.config.timeout_s)
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
