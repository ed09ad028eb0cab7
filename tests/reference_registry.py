"""A private MLflow registry for the tests of what reads a model version's
reference sample (drift detection, the outlier node): model `scorer`, v1
(@champion) whose run holds `reference/features.parquet`, v2 (@bare) whose
run does not, both tagged with their input features."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def registry_with_reference(root: Path, reference: pd.DataFrame, input_features: list[str]) -> str:
    """The registry's URI (SQLite under `root`)."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("scorer", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model("scorer")
    path = root / "features.parquet"
    reference.to_parquet(path)
    for alias, with_reference in (("champion", True), ("bare", False)):
        run = client.create_run(experiment)
        if with_reference:
            client.log_artifact(run.info.run_id, str(path), "reference")
        version = client.create_model_version("scorer", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        client.set_model_version_tag("scorer", version.version, "input_features", json.dumps(input_features))
        client.set_registered_model_alias("scorer", alias, version.version)
    mlflow.set_tracking_uri("")
    return uri
