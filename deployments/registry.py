"""Model resolution through the MLflow registry: `name@alias` -> version."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

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


class MissingArtifact(LookupError):
    pass


def run_of_artifact(registry_uri: str, name: str, version: str, artifact_path: str) -> str:
    """The run that produced a registered version, if it holds
    `artifact_path`; MissingArtifact when it does not."""
    from mlflow import MlflowClient

    uri = resolve_registry_uri(registry_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.get_model_version(name, version).run_id
    folder, _, _ = artifact_path.rpartition("/")
    if not run_id or artifact_path not in {a.path for a in client.list_artifacts(run_id, folder or None)}:
        raise MissingArtifact(f"{name} version {version} has no artifact {artifact_path} (run {run_id})")
    return run_id


def missing_run_artifact(registry_uri: str, name: str, alias: str, artifact_path: str) -> Optional[str]:
    """Why the version `alias` names has no `artifact_path` in its run, or None (a build-time check)."""
    try:
        run_of_artifact(registry_uri, name, resolve_alias(registry_uri, name, alias).version, artifact_path)
    except MissingArtifact as error:
        return str(error)
    return None


def download_run_artifact(registry_uri: str, name: str, version: str, artifact_path: str) -> Path:
    """Local copy of one artifact of the run that produced a registered
    version (the training step's reference sample); MissingArtifact when the
    run has no such artifact."""
    import mlflow

    run_id = run_of_artifact(registry_uri, name, version, artifact_path)
    uri = resolve_registry_uri(registry_uri)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, tracking_uri=uri))
