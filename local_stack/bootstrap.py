"""Bootstrap the local stack, idempotently, into `.local/`:

1. demo data (parquet), 2. Feast apply + materialize (SQLite online store),
3. ranker training + MLflow registration with aliases, 4. the Triton model
repository exported from the registry (python-backend runner on this CPU),
5. the LLM folders (a tiny Llama; SmolLM2 converted from its GGUF package),
registered in MLflow with aliases, 6. Prometheus and promtool, unpacked from
Debian's package (local_stack/prometheus.py).

    python -m local_stack.bootstrap [--root .local] [--force]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from local_stack.paths import StackPaths

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("FEAST_USAGE", "False")


@contextmanager
def step(title: str):
    print(f"==> {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"    done in {time.monotonic() - started:.1f} s", flush=True)


def ranker_spec(paths: StackPaths):
    """The ranker's Triton spec; its input width is the registered feature list."""
    import json

    from mlflow import MlflowClient

    from deployments.triton_repository import TensorSpec, TritonModelSpec
    from local_stack.train import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, RECIPES

    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    version = client.get_model_version_by_alias(MODEL_NAME, RECIPES[0].alias)
    n_features = len(json.loads(version.tags["input_features"]))

    return TritonModelSpec(
        name=MODEL_NAME,
        inputs=[TensorSpec(name=INPUT_NAME, dims=[n_features])],
        outputs=[TensorSpec(name=OUTPUT_NAME, dims=[1])],
    )


def ensure(paths: StackPaths = StackPaths(), force: bool = False) -> StackPaths:
    from local_stack import data, feast_setup, train

    if force and paths.root.exists():
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(exist_ok=True)

    if not (paths.data / "interactions.parquet").exists():
        with step(f"demo data -> {paths.data}"):
            written = data.generate(paths.data)
            print(f"    {data.N_USERS} users, {data.N_ITEMS} items -> {', '.join(p.name for p in written.values())}")
    if not feast_setup.is_materialized(paths):
        with step(f"Feast apply + materialize -> {paths.feast_repo}"):
            feast_setup.apply_and_materialize(paths)
    if not train.is_registered(paths):
        with step(f"train ranker, export ONNX, register in MLflow -> {paths.mlflow_db}"):
            train.train_and_register(paths)
    if not train.is_registered(paths, train.TORCH_MODEL_NAME):
        with step(f"train the ranker again, register it with mlflow.pytorch as {train.TORCH_MODEL_NAME} (the torch_model node's)"):
            train.register_torch_ranker(paths)
    if not train.is_registered(paths, train.SKLEARN_MODEL_NAME, ("champion",)):
        with step(f"train a scikit-learn ranker, register it as {train.SKLEARN_MODEL_NAME} (served by MLServer)"):
            train.register_sklearn_ranker(paths)
    if not (paths.mlserver_repo / train.SKLEARN_MODEL_NAME).exists():
        with step(f"export the registry to an MLServer repository -> {paths.mlserver_repo}"):
            from deployments.mlserver_repository import export_from_registry

            versions = export_from_registry(paths.mlserver_repo, train.SKLEARN_MODEL_NAME, paths.mlflow_uri)
            print(f"    {train.SKLEARN_MODEL_NAME}: versions {', '.join(versions)} (MLServer's scikit-learn runtime)")
    if not train.references_logged(paths):
        with step(f"the training features' sample as {train.REFERENCE_ARTIFACT} of each ranker version"):
            print(f"    versions {', '.join(train.ensure_references(paths))}")
    if not train.canary_aliases_set(paths):
        with step("the canary app's aliases (configs/local.yaml rolls ranker@canary out against ranker@stable)"):
            print("    " + ", ".join(f"@{alias} -> version {version}" for alias, version in train.ensure_canary_aliases(paths).items()))
    if not (paths.triton_repo / train.MODEL_NAME / "config.pbtxt").exists():
        with step(f"export the registry to a Triton repository -> {paths.triton_repo}"):
            from deployments.triton_repository import Target, export_from_registry

            versions = export_from_registry(paths.triton_repo, ranker_spec(paths), paths.mlflow_uri, Target.CPU_PYTHON)
            print(f"    {train.MODEL_NAME}: versions {', '.join(versions)} (python backend running model.onnx with onnxruntime)")
    from local_stack import prometheus

    if not prometheus.is_unpacked(paths):
        with step(f"Prometheus and promtool from Debian's package (unpacked, no service) -> {prometheus.binaries(paths)}"):
            print(f"    {prometheus.PACKAGE} {prometheus.unpack(paths)}")
    from local_stack import llm_models

    for name, build in llm_models.LLM_MODELS.items():
        if not llm_models.is_registered(paths, name):
            with step(f"build LLM {name} and register it in MLflow"):
                folder = build(paths.root / "llm" / name)
                version = llm_models.register(paths, name, folder)
                print(f"    {name}: version {version} as @{', @'.join(llm_models.LLM_ALIASES)} ({folder})")
    print(f"local stack ready in {paths.root}", flush=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=StackPaths().root)
    parser.add_argument("--force", action="store_true", help="delete the folder and build it anew")
    args = parser.parse_args()
    ensure(StackPaths(args.root.resolve()), force=args.force)


if __name__ == "__main__":
    main()
