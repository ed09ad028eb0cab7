"""What the init containers run: copy a registered model out of the MLflow
registry into a pod's volume, before the server that reads it starts.

    python -m kuberay.fetch triton --model ranker --repository /models
    python -m kuberay.fetch mlserver --model ranker_sklearn --repository /models
    python -m kuberay.fetch llm --model smollm2 --alias champion --dest /models/smollm2

`triton` exports every registered version of the model as a Triton
repository for the GPU target (native ONNX Runtime backend, KIND_GPU), with
the same exporter and `config.pbtxt` as the local stack; the input width is
the feature list recorded on the version the alias names. `mlserver`
exports every registered version of each model as an MLServer repository
(a folder per version: `model-settings.json` and the pickle), with the
local stack's exporter (deployments/mlserver_repository.py), so the graph
asks for a version by alias exactly as it does locally. `llm` copies the
Hugging Face folder of the version an alias names. The registry URI and its
credentials come from the environment (MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_USERNAME/PASSWORD), as the manifests set them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from deployments import mlserver_repository
from deployments.triton_repository import Target, TensorSpec, TritonModelSpec, export_from_registry

INPUT_NAME, OUTPUT_NAME = "features", "score"  # the ranker's tensors (local_stack/train.py)


def ranker_spec(registry_uri: str, model: str, alias: str) -> TritonModelSpec:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    version = client.get_model_version_by_alias(model, alias)
    features = json.loads(version.tags.get("input_features", "[]"))
    if not features:
        raise ValueError(f"{model}@{alias} (version {version.version}) records no input_features tag")
    return TritonModelSpec(
        name=model,
        inputs=[TensorSpec(name=INPUT_NAME, dims=[len(features)])],
        outputs=[TensorSpec(name=OUTPUT_NAME, dims=[1])],
    )


def export_triton(registry_uri: str, model: str, alias: str, repository: Path, target: Target = Target.GPU) -> list[str]:
    return export_from_registry(repository, ranker_spec(registry_uri, model, alias), registry_uri, target)


def export_mlserver(registry_uri: str, models: list[str], repository: Path) -> dict[str, list[str]]:
    """Every version of each model into `repository`: model -> its versions.
    A model without versions fails the pod: MLServer would start ready and
    then answer the graph's calls with "model not found"."""
    exported = {}
    for model in models:
        versions = mlserver_repository.export_from_registry(repository, model, registry_uri)
        if not versions:
            raise ValueError(f"{model}: no registered version in {registry_uri}")
        exported[model] = versions
    return exported


def fetch_llm(registry_uri: str, model: str, alias: str, dest: Path) -> str:
    """Copy the folder of `models:/<model>@<alias>` to `dest`; returns the version."""
    from mlflow import MlflowClient

    from deployments.registry import download_version

    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    version = str(client.get_model_version_by_alias(model, alias).version)
    local = download_version(registry_uri, model, version)
    shutil.copytree(local, dest, dirs_exist_ok=True)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberay.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="default: $MLFLOW_TRACKING_URI")
    commands = parser.add_subparsers(dest="command", required=True)
    triton = commands.add_parser("triton", help="export a Triton model repository")
    triton.add_argument("--model", required=True)
    triton.add_argument("--alias", default="champion", help="version whose feature list sets the input width")
    triton.add_argument("--repository", type=Path, required=True)
    triton.add_argument("--target", choices=[t.value for t in Target], default=Target.GPU.value)
    mlserver = commands.add_parser("mlserver", help="export an MLServer model repository")
    mlserver.add_argument("--model", action="append", required=True, help="registered model (repeat for several)")
    mlserver.add_argument("--repository", type=Path, required=True)
    llm = commands.add_parser("llm", help="copy an LLM's Hugging Face folder")
    llm.add_argument("--model", required=True)
    llm.add_argument("--alias", default="champion")
    llm.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.registry_uri:
        parser.error("no registry: pass --registry-uri or set MLFLOW_TRACKING_URI")
    if args.command == "triton":
        versions = export_triton(args.registry_uri, args.model, args.alias, args.repository, Target(args.target))
        print(f"{args.model}: versions {', '.join(versions)} -> {args.repository} ({args.target})")
    elif args.command == "mlserver":
        for model, versions in export_mlserver(args.registry_uri, args.model, args.repository).items():
            print(f"{model}: versions {', '.join(versions)} -> {args.repository}")
    else:
        version = fetch_llm(args.registry_uri, args.model, args.alias, args.dest)
        print(f"{args.model}@{args.alias}: version {version} -> {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
