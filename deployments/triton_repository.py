"""Export registered MLflow model versions into a Triton model repository.

Version folders are registry versions; `config.pbtxt` is written here from a
typed spec. The target decides how Triton runs the ONNX artifact:

- `gpu`: native ONNX Runtime backend, `KIND_GPU` instances (a GPU cluster);
- `cpu`: native ONNX Runtime backend, `KIND_CPU` instances (a CPU Triton);
- `cpu-python`: the python backend plus `triton_runners/onnx_model.py`
  executing the same `model.onnx` with onnxruntime (the Triton of the
  `nvidia-pytriton` wheel on this machine has no other backend).
"""
from __future__ import annotations

import shutil
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterable

from pydantic import BaseModel, ConfigDict, Field

RUNNER = Path(__file__).resolve().parent / "triton_runners" / "onnx_model.py"


class Target(str, Enum):
    GPU = "gpu"
    CPU = "cpu"
    CPU_PYTHON = "cpu-python"


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    data_type: str = Field("TYPE_FP32", pattern=r"^TYPE_[A-Z0-9]+$")
    dims: list[Annotated[int, Field(ge=-1)]] = Field(description="Per-request shape, without the batch dimension.")


class TritonModelSpec(BaseModel):
    """What `config.pbtxt` says about one model."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    max_batch_size: int = Field(256, ge=1, description="Rows per execution; bounds a request's item list too.")
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [64, 128])
    max_queue_delay_us: int = Field(2000, ge=0, description="How long Triton may hold a request to form a batch.")
    instance_count: int = Field(1, ge=1)


def render_config(spec: TritonModelSpec, target: Target) -> str:
    if target is Target.CPU_PYTHON:
        runtime = 'backend: "python"'
    else:
        runtime = 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"'
    kind = "KIND_GPU" if target is Target.GPU else "KIND_CPU"

    def tensors(section: str, specs: Iterable[TensorSpec]) -> str:
        body = ",\n".join(
            f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {", ".join(map(str, t.dims))} ]\n  }}'
            for t in specs
        )
        return f"{section} [\n{body}\n]"

    preferred = ", ".join(str(b) for b in spec.preferred_batch_sizes if b <= spec.max_batch_size)
    return "\n".join(
        [
            f'name: "{spec.name}"',
            runtime,
            f"max_batch_size: {spec.max_batch_size}",
            "version_policy: { all { } }",
            tensors("input", spec.inputs),
            tensors("output", spec.outputs),
            "dynamic_batching {",
            *([f"  preferred_batch_size: [ {preferred} ]"] if preferred else []),
            f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}",
            "}",
            f"instance_group [ {{ count: {spec.instance_count} kind: {kind} }} ]",
            "",
        ]
    )


def export_version(repo: Path, spec: TritonModelSpec, version: str, onnx_file: Path, target: Target) -> Path:
    """Place one registry version's ONNX artifact as a Triton version folder."""
    version_dir = repo / spec.name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, version_dir / "model.onnx")
    if target is Target.CPU_PYTHON:
        shutil.copyfile(RUNNER, version_dir / "model.py")
    (repo / spec.name / "config.pbtxt").write_text(render_config(spec, target))
    return version_dir


def export_from_registry(
    repo: Path, spec: TritonModelSpec, tracking_uri: str, target: Target, versions: Iterable[str] | None = None
) -> list[str]:
    """Export every (or the given) registered version of `spec.name`."""
    from mlflow import MlflowClient

    from deployments.registry import download_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if versions is None:
        versions = [v.version for v in client.search_model_versions(f"name='{spec.name}'")]
    exported = []
    for version in sorted(versions, key=int):
        local = download_version(tracking_uri, spec.name, version)
        onnx_files = sorted(local.rglob("*.onnx"))
        if not onnx_files:
            raise FileNotFoundError(f"model {spec.name} version {version} has no .onnx artifact in {local}")
        export_version(repo, spec, version, onnx_files[0], target)
        exported.append(str(version))
    return exported
