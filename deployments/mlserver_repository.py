"""Export registered scikit-learn model versions into an MLServer model
repository: one folder per registry version, holding the version's pickled
model and the `model-settings.json` that tells MLServer's scikit-learn
runtime to serve it under the model's name and that version, so a graph's
`v2_model` node asks for `models/<name>/versions/<version>` exactly as it
asks Triton.

    .local/mlserver/ranker_sklearn/1/model-settings.json   {"name": "ranker_sklearn", "parameters": {"version": "1", ...}}
    .local/mlserver/ranker_sklearn/1/model.pkl             the MLflow artifact (mlflow.sklearn, pickle format)

Used by the local stack (local_stack/mlserver_server.py) and by the cluster's
init container (`python -m kuberay.fetch mlserver`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from deployments.registry import download_version, resolve_registry_uri

IMPLEMENTATION = "mlserver_sklearn.SKLearnModel"
ARTIFACT = "model.pkl"  # mlflow.sklearn's file name


def settings(name: str, version: str) -> dict:
    return {"name": name, "implementation": IMPLEMENTATION, "parameters": {"uri": f"./{ARTIFACT}", "version": version}}


def export_version(repository: Path, name: str, version: str, registry_uri: str) -> Path:
    """One version's folder, written whole or not at all."""
    source = download_version(registry_uri, name, version) / ARTIFACT
    if not source.exists():
        raise FileNotFoundError(f"{name} version {version} has no {ARTIFACT}: log it with mlflow.sklearn (pickle format)")
    folder = repository / name / version
    staging = folder.with_name(f".{version}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy(source, staging / ARTIFACT)
    (staging / "model-settings.json").write_text(json.dumps(settings(name, version), indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def export_from_registry(repository: Path, name: str, registry_uri: str) -> list[str]:
    """Every registered version of `name` into `repository`; the versions, in order."""
    from mlflow import MlflowClient

    uri = resolve_registry_uri(registry_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
    for version in versions:
        export_version(repository, name, str(version), registry_uri)
    return [str(v) for v in versions]
