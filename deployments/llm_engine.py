"""LLM engines served by vLLM through `ray.serve.llm`, with models from the
MLflow registry.

A model is named by its registry name and alias (`models:/smollm2@champion`);
the served model id is the registry name and the version is reported next to
it. The engine settings are typed here and turned into a `ray.serve.llm`
`LLMConfig`: vLLM engine arguments, CPU (this machine: `VLLM_CPU_*` settings,
no GPU resources) or GPU (`accelerator_type`, `num_gpus` via placement).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.registry import download_version, resolve_registry_uri



HEALTH_CHECK_PERIOD_S = 2.0  # seconds between the engine replica's health checks

class EngineArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_model_len: int = Field(512, ge=16, description="Longest prompt + completion, in tokens.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="float32 on CPUs without AMX; bfloat16/float16 on GPUs."
    )
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_space_gib: int = Field(
        1, ge=1, description="CPU: VLLM_CPU_KVCACHE_SPACE (else vLLM reserves most of RAM); whole GiB, as vLLM reads it "
        "(a fraction failed only when the engine started)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU: share of GPU memory for weights and KV cache.")
    enforce_eager: bool = Field(True, description="No graph capture (CPU, fast start).")
    max_num_seqs: int = Field(16, ge=1, description="Sequences batched together by the scheduler.")
    seed: int = 0


class LLMModelConfig(BaseModel):
    """One served model: which registered version, on which engine and hardware."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Registered MLflow model name; also the served model id.")
    alias: str = Field("champion", min_length=1)
    registry_uri: str = Field("sqlite:///.local/mlflow/mlflow.db")
    accelerator: Literal["cpu", "gpu"] = "cpu"
    accelerator_type: Optional[str] = Field(None, description="GPU type for scheduling, e.g. L4 or A10G (gpu only).")
    engine: EngineArgs = Field(default_factory=EngineArgs)
    num_replicas: int = Field(1, ge=1)
    max_queued_requests: int = Field(
        128, ge=1, description="Requests that may wait for a replica beyond its 64 in flight; more get Serve's 503 "
        "at once instead of a queue that grows with the load."
    )
    alias_poll_s: Optional[float] = Field(
        None, gt=0, description="Follow a moved alias: read it every this many seconds, and on a new version roll the "
        "application's engines over to it (deployments/llm_rollout.py). None: the alias is read once, at build."
    )
    rollout_surge_percent: int = Field(
        100, ge=0, le=100, description="Extra engine replicas while a new version rolls out (Serve's max_surge_percent): "
        "100 starts each replacement before its old engine stops, so no request waits for an engine (it needs room "
        "for one more engine, on GPUs one more GPU); 0 stops the old engine first."
    )
    engine_metrics: bool = Field(
        True,
        description="vLLM's engine metrics as Ray metrics (the ray_vllm_* series the dashboards and alerts use), "
        "copied from vLLM's own Prometheus metrics (deployments/llm_metrics.py). Off, vLLM computes no engine stats.",
    )

    @model_validator(mode="after")
    def _accelerator_type_needs_gpu(self):
        if self.accelerator == "cpu" and self.accelerator_type:
            raise ValueError("accelerator_type is for accelerator: gpu")
        return self


class ResolvedModel(BaseModel):
    name: str
    alias: str
    version: str
    path: str


def resolve(model: LLMModelConfig) -> ResolvedModel:
    """Alias -> version -> a local copy of the Hugging Face folder."""
    from mlflow import MlflowClient

    uri = resolve_registry_uri(model.registry_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(model.name, model.alias)
    path = download_version(model.registry_uri, model.name, str(version.version))
    return ResolvedModel(name=model.name, alias=model.alias, version=str(version.version), path=str(path))


def registry_source(model: LLMModelConfig, resolved: ResolvedModel) -> dict[str, str]:
    """Where a served model came from, as `/v1/models` and the graph report it."""
    return {"uri": f"models:/{model.name}@{model.alias}", "version": resolved.version, "alias": model.alias}


def check_cpu_memory(model: LLMModelConfig) -> None:
    """A KV cache larger than the machine fails deep inside vLLM's engine
    process, with the cause only in its log: say it here, naming the key."""
    import psutil

    total_gib = psutil.virtual_memory().total / 2**30
    if model.accelerator == "cpu" and model.engine.kv_cache_space_gib >= total_gib:
        raise ValueError(
            f"model {model.name}: engine.kv_cache_space_gib={model.engine.kv_cache_space_gib:g} does not fit in "
            f"this node's {total_gib:.1f} GiB of memory"
        )


def check_context_length(model: LLMModelConfig, resolved: ResolvedModel) -> None:
    """A max_model_len beyond the model's context is refused by vLLM only
    once an engine starts, in every retry of the replica (a minute and more
    on a CPU): say it at build time, naming the key, from the registered
    version's own config.json."""
    config_file = Path(resolved.path) / "config.json"
    if not config_file.is_file():
        return
    context = json.loads(config_file.read_text()).get("max_position_embeddings")
    if isinstance(context, int) and model.engine.max_model_len > context:
        raise ValueError(
            f"model {model.name} (version {resolved.version}): engine.max_model_len={model.engine.max_model_len} "
            f"exceeds the model's context of {context} tokens (max_position_embeddings in its config.json)"
        )


def llm_config(model: LLMModelConfig, resolved: ResolvedModel) -> Any:
    from ray.serve.llm import LLMConfig

    check_cpu_memory(model)
    check_context_length(model, resolved)
    engine = model.engine
    engine_kwargs: dict[str, Any] = {
        "max_model_len": engine.max_model_len,
        "dtype": engine.dtype,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "enforce_eager": engine.enforce_eager,
        "max_num_seqs": engine.max_num_seqs,
        "seed": engine.seed,
        # Engine stats feed vLLM's Prometheus metrics, which the replica copies
        # into Ray's (MeteredLLMServer): cheaper than Ray's per-value stat logger.
        "disable_log_stats": not model.engine_metrics,
    }
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # A dead engine fails the replica's health check (vLLM's check_health);
    # checked every 2 s, Serve replaces the replica within ~3 checks.
    options: dict[str, Any] = {"num_replicas": model.num_replicas, "max_ongoing_requests": 64,
                               "max_queued_requests": model.max_queued_requests, "health_check_period_s": HEALTH_CHECK_PERIOD_S,
                               "max_surge_percent": model.rollout_surge_percent}
    hardware: dict[str, Any]
    if model.accelerator == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{engine.kv_cache_space_gib:g}"
        # The engine's threads use the cores; the replica itself reserves none,
        # or Ray would hold back a whole node for it.
        options["ray_actor_options"] = {"num_cpus": 0}
        hardware = {"accelerator_config": {"kind": "cpu"}}
    else:
        engine_kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        hardware = {"accelerator_type": model.accelerator_type} if model.accelerator_type else {}
    return LLMConfig(
        model_loading_config={"model_id": model.name, "model_source": resolved.path},
        engine_kwargs=engine_kwargs,
        deployment_config=options,
        runtime_env={"env_vars": env},
        log_engine_metrics=False,  # see MeteredLLMServer
        **hardware,
    )
