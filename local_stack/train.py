"""Train the demo ranker on features from Feast's offline store, export it to
ONNX and register it in MLflow as model `ranker` with aliases.

Two versions are trained (a small and a larger network) so that the
registry has a `champion` and a `challenger` to route between. The same two
are trained again and logged with `mlflow.pytorch` as `ranker_torch`, for
the `torch_model` node.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from local_stack.feast_setup import FEATURE_SERVICE
from local_stack.paths import StackPaths

MODEL_NAME = "ranker"
INPUT_NAME = "features"
OUTPUT_NAME = "score"


@dataclass(frozen=True)
class Recipe:
    alias: str
    hidden: int
    epochs: int
    seed: int


RECIPES = (Recipe("champion", hidden=16, epochs=2, seed=1), Recipe("challenger", hidden=64, epochs=8, seed=2))

# The training features a version was trained on, as an artifact of its run:
# the reference distribution drift detection compares serving traffic with
# (deployments/monitoring). A sample: enough for the tests' power, small to load.
REFERENCE_ARTIFACT = "reference/features.parquet"
REFERENCE_ROWS = 5000


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) identity."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def training_frame(paths: StackPaths) -> tuple[pd.DataFrame, list[str]]:
    """Point-in-time join of the interactions with the ranking feature service."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(paths.feast_repo))
    service = store.get_feature_service(FEATURE_SERVICE)
    entity_df = pd.read_parquet(paths.data / "interactions.parquet")
    frame = store.get_historical_features(entity_df=entity_df, features=service, full_feature_names=True).to_df()
    columns = [f"{p.name}__{f.name}" for p in service.feature_view_projections for f in p.features]
    frame = frame.dropna(subset=columns).sort_values(["user_id", "item_id", "event_timestamp"]).reset_index(drop=True)
    return frame, columns


def _network(n_inputs: int, hidden: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(n_inputs, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
        torch.nn.Sigmoid(),
    )


def train_one(recipe: Recipe, x_train, y_train, x_test, y_test):
    import torch

    torch.manual_seed(recipe.seed)
    net = _network(x_train.shape[1], recipe.hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCELoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).float().unsqueeze(1)
    for epoch in range(recipe.epochs):
        perm = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            idx = perm[start : start + 256]
            optimizer.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            held_out = auc(y_test, net(torch.from_numpy(x_test)).squeeze(1).numpy())
        print(f"    {recipe.alias}: epoch {epoch + 1}/{recipe.epochs} loss {loss.item():.4f} held-out AUC {held_out:.4f}", flush=True)
    return net.eval(), held_out


def export_onnx(net, n_inputs: int, path: Path) -> None:
    import torch

    torch.onnx.export(
        net,
        (torch.zeros(1, n_inputs),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def _split(paths: StackPaths) -> tuple[Any, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(frame, feature columns, x, y, held-out mask by user): the same split for every model trained here."""
    frame, columns = training_frame(paths)
    users = frame["user_id"].unique()
    test_users = set(np.random.default_rng(0).choice(users, size=len(users) // 5, replace=False))
    is_test = frame["user_id"].isin(test_users).to_numpy()
    x = frame[columns].to_numpy(np.float32)
    y = frame["label"].to_numpy(np.int64)
    print(f"    {len(frame)} interactions ({is_test.sum()} held out by user), {len(columns)} features, click rate {y.mean():.3f}")
    return frame, columns, x, y, is_test


def _experiment(paths: StackPaths, name: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(paths.mlflow_uri)
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=paths.mlflow_artifacts.as_uri())
    mlflow.set_experiment(name)


def train_and_register(paths: StackPaths) -> dict[str, str]:
    """Returns {alias: version}."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    frame, columns, x, y, is_test = _split(paths)
    _experiment(paths, "ranker")
    client = MlflowClient()
    aliases = {}
    for recipe in RECIPES:
        net, held_out = train_one(recipe, x[~is_test], y[~is_test], x[is_test], y[is_test])
        onnx_path = paths.root / "mlflow" / f"{recipe.alias}.onnx"
        export_onnx(net, len(columns), onnx_path)
        with mlflow.start_run(run_name=f"ranker-{recipe.alias}"):
            mlflow.log_params({"hidden": recipe.hidden, "epochs": recipe.epochs, "seed": recipe.seed})
            mlflow.log_metric("held_out_auc", held_out)
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)),
                name="model",
                input_example=x[:2],
                registered_model_name=MODEL_NAME,
                save_as_external_data=False,  # one self-contained model.onnx for Triton
            )
            log_reference(frame[columns], onnx_path.read_bytes(), paths.root / "mlflow")
        version = str(info.registered_model_version)
        client.set_model_version_tag(MODEL_NAME, version, "input_features", json.dumps(columns))
        client.set_model_version_tag(MODEL_NAME, version, "feature_service", FEATURE_SERVICE)
        client.set_model_version_tag(MODEL_NAME, version, "held_out_auc", f"{held_out:.4f}")
        client.set_registered_model_alias(MODEL_NAME, recipe.alias, version)
        aliases[recipe.alias] = version
        print(f"    registered {MODEL_NAME} version {version} as @{recipe.alias} (held-out AUC {held_out:.4f})", flush=True)
    return aliases


def reference_sample(features: pd.DataFrame, onnx_model: bytes) -> pd.DataFrame:
    """REFERENCE_ROWS rows of the training features (the same ones every
    time) and the version's score of each (`score`: what prediction drift
    compares with), from the ONNX model itself."""
    import onnxruntime

    sample = features.sample(n=min(REFERENCE_ROWS, len(features)), random_state=0).reset_index(drop=True)
    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    scores = session.run([OUTPUT_NAME], {INPUT_NAME: sample.to_numpy(np.float32)})[0].reshape(-1)
    return sample.assign(score=scores.astype(np.float32))


def log_reference(features: pd.DataFrame, onnx_model: bytes, scratch: Path, run_id: str | None = None) -> None:
    """The reference sample as REFERENCE_ARTIFACT of the active run (or of `run_id`)."""
    import mlflow

    folder = scratch / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(REFERENCE_ARTIFACT).name
    reference_sample(features, onnx_model).to_parquet(path, index=False)
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
    else:
        from mlflow import MlflowClient

        MlflowClient().log_artifact(run_id, str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))


def ensure_references(paths: StackPaths) -> list[str]:
    """Log the reference sample into the runs of registered versions that
    lack it (a stack trained before the artifact existed); the versions done."""
    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(paths.mlflow_uri)
    mlflow.set_registry_uri(paths.mlflow_uri)
    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    missing = [v for v in client.search_model_versions(f"name='{MODEL_NAME}'")
               if v.run_id and not client.list_artifacts(v.run_id, str(Path(REFERENCE_ARTIFACT).parent))]
    if missing:
        frame, columns = training_frame(paths)
        for version in missing:
            model = mlflow.onnx.load_model(f"models:/{MODEL_NAME}/{version.version}")
            log_reference(frame[columns], model.SerializeToString(), paths.root / "mlflow", run_id=version.run_id)
    return [str(v.version) for v in missing]


def references_logged(paths: StackPaths) -> bool:
    """Whether every registered ranker version has its reference sample (a
    marker file, so that a ready stack asks MLflow nothing)."""
    return (paths.root / "mlflow" / "reference" / ".logged").exists() or _mark_if_logged(paths)


def _mark_if_logged(paths: StackPaths) -> bool:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    if not versions or any(not client.list_artifacts(v.run_id, str(Path(REFERENCE_ARTIFACT).parent)) for v in versions):
        return False
    marker = paths.root / "mlflow" / "reference" / ".logged"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return True


# The same recipes trained again and logged with mlflow.pytorch: the model a
# `torch_model` node runs in its own Serve deployment (the seed's CPU-only
# TorchServe role; configs/local.yaml's ensemble app), versions and aliases
# as the ONNX ranker's.
TORCH_MODEL_NAME = "ranker_torch"


def register_torch_ranker(paths: StackPaths) -> dict[str, str]:
    """Returns {alias: version} of `ranker_torch`."""
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _, columns, x, y, is_test = _split(paths)
    _experiment(paths, TORCH_MODEL_NAME)
    client = MlflowClient()
    aliases = {}
    for recipe in RECIPES:
        net, held_out = train_one(recipe, x[~is_test], y[~is_test], x[is_test], y[is_test])
        with mlflow.start_run(run_name=f"{TORCH_MODEL_NAME}-{recipe.alias}"):
            mlflow.log_params({"hidden": recipe.hidden, "epochs": recipe.epochs, "seed": recipe.seed})
            mlflow.log_metric("held_out_auc", held_out)
            info = mlflow.pytorch.log_model(net, name="model", input_example=x[:2], registered_model_name=TORCH_MODEL_NAME)
        version = str(info.registered_model_version)
        client.set_model_version_tag(TORCH_MODEL_NAME, version, "input_features", json.dumps(columns))
        client.set_model_version_tag(TORCH_MODEL_NAME, version, "feature_service", FEATURE_SERVICE)
        client.set_registered_model_alias(TORCH_MODEL_NAME, recipe.alias, version)
        aliases[recipe.alias] = version
        print(f"    registered {TORCH_MODEL_NAME} version {version} as @{recipe.alias} (held-out AUC {held_out:.4f})", flush=True)
    return aliases


# A scikit-learn ranker on the same features and split (standardised inputs,
# logistic regression: a click probability), served by MLServer beside the
# ONNX ranker on Triton (configs/local.yaml's ensemble app): one version, @champion.
SKLEARN_MODEL_NAME = "ranker_sklearn"


def register_sklearn_ranker(paths: StackPaths) -> str:
    """Returns the registered version of `ranker_sklearn`."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _, columns, x, y, is_test = _split(paths)
    _experiment(paths, SKLEARN_MODEL_NAME)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[~is_test], y[~is_test])
    held_out = auc(y[is_test], model.predict_proba(x[is_test])[:, 1])
    with mlflow.start_run(run_name=SKLEARN_MODEL_NAME):
        mlflow.log_metric("held_out_auc", held_out)
        # Plain pickle, MLServer's scikit-learn runtime loads it with joblib (deployments/mlserver_repository.py).
        info = mlflow.sklearn.log_model(model, name="model", input_example=x[:2], serialization_format="pickle",
                                        registered_model_name=SKLEARN_MODEL_NAME)
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(SKLEARN_MODEL_NAME, version, "input_features", json.dumps(columns))
    client.set_model_version_tag(SKLEARN_MODEL_NAME, version, "feature_service", FEATURE_SERVICE)
    client.set_registered_model_alias(SKLEARN_MODEL_NAME, "champion", version)
    print(f"    registered {SKLEARN_MODEL_NAME} version {version} as @champion (held-out AUC {held_out:.4f})", flush=True)
    return version


def is_registered(paths: StackPaths, name: str = MODEL_NAME, aliases: tuple[str, ...] = tuple(r.alias for r in RECIPES)) -> bool:
    if not paths.mlflow_db.exists():
        return False
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return False
    return all(alias in model.aliases for alias in aliases)


# The demo's canary app (configs/local.yaml) rolls ranker@canary out against
# ranker@stable: aliases of its own, first on the versions of the two
# recipes, so that its promotion (it moves @stable) leaves the recommend
# app's @champion, the benchmarks and the tests where they are.
CANARY_ALIASES = {"stable": RECIPES[0].alias, "canary": RECIPES[1].alias}


def canary_aliases_set(paths: StackPaths) -> bool:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    return all(alias in client.get_registered_model(MODEL_NAME).aliases for alias in CANARY_ALIASES)


def ensure_canary_aliases(paths: StackPaths) -> dict[str, str]:
    """Set the canary app's aliases that are missing (never moves one that exists)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    existing = client.get_registered_model(MODEL_NAME).aliases
    set_now = {}
    for alias, recipe_alias in CANARY_ALIASES.items():
        if alias not in existing:
            version = str(client.get_model_version_by_alias(MODEL_NAME, recipe_alias).version)
            client.set_registered_model_alias(MODEL_NAME, alias, version)
            set_now[alias] = version
    return set_now
