"""Model resolution through the MLflow registry: `name@alias` -> version."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, Field

from deployments.paths import project_path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def resolve_registry_uri(uri: str) -> str:
    """Anchor a relative `sqlite:///` path at the project root (see project_path)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_absolute():
        return prefix + str(project_path(uri[len(prefix):]))
    return uri


class ServedModel(BaseModel):
    """Which registered model version served a request, and why (its alias)."""

    name: str
    version: str
    alias: str


class ModelRef(ServedModel):
    """A resolved alias, with what the registry records about the version."""

    input_features: list[str] = Field(default_factory=list, description="Input column order the model was trained on.")


def resolve_alias(registry_uri: str, name: str, alias: str) -> ModelRef:
    from mlflow import MlflowClient

    uri = resolve_registry_uri(registry_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(name, alias)
    features = json.loads(version.tags.get("input_features", "[]"))
    return ModelRef(name=name, version=str(version.version), alias=alias, input_features=features)


def served(ref: ModelRef) -> ServedModel:
    return ServedModel(name=ref.name, version=ref.version, alias=ref.alias)


def download_version(registry_uri: str, name: str, version: str) -> Path:
    """Local copy of a registered version's artifacts (the registry URI is
    explicit: MLflow's default would be a `mlflow.db` in the working dir)."""
    import mlflow
    from mlflow import MlflowClient

    uri = resolve_registry_uri(registry_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = client.get_model_version_download_uri(name, version)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri))
