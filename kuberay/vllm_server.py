"""vLLM's own OpenAI server as a Deployment + Service: what the LLM node's
remote mode (`explain.llm.mode: remote`) calls by URL.

The model comes from the MLflow registry (`models:/<name>@<alias>`), fetched
by an init container (`python -m kuberay.fetch llm`) into an emptyDir, the
shape of every model server (kuberay/model_server.py); the served model id
is the registry name, as in the chat app. The engine settings are the same
typed `EngineArgs` the chat app uses, turned into vLLM's command-line flags.
"""
from __future__ import annotations

from typing import Any

from deployments.llm_engine import EngineArgs
from kuberay import model_server, pods
from kuberay.spec import ClusterSpec

MODELS = model_server.MODELS
COMPONENT = "vllm"


def engine_flags(engine: EngineArgs) -> list[str]:
    """GPU flags only: `kv_cache_space_gib` is the CPU engine's setting."""
    flags = [
        f"--dtype={engine.dtype}",
        f"--max-model-len={engine.max_model_len}",
        f"--tensor-parallel-size={engine.tensor_parallel_size}",
        f"--gpu-memory-utilization={engine.gpu_memory_utilization:g}",
        f"--max-num-seqs={engine.max_num_seqs}",
        f"--seed={engine.seed}",
    ]
    if engine.enforce_eager:
        flags.append("--enforce-eager")
    return flags


def _server_container(spec: ClusterSpec) -> dict[str, Any]:
    vllm = spec.vllm
    return model_server.container(
        spec,
        "vllm",
        vllm.image,
        # The image's python3 (the brief's `python -m vllm.entrypoints.openai.api_server`).
        command=["python3", "-m", "vllm.entrypoints.openai.api_server"],
        args=[
            f"--model={MODELS}/{vllm.model}",
            f"--served-model-name={vllm.model}",
            "--host=0.0.0.0",  # reached on the pod IP through the Service
            f"--port={vllm.port}",
            *engine_flags(vllm.engine),
        ],
        env=[
            pods.secret_env("HF_TOKEN", spec.secrets.hf_token),
            # vLLM then answers /v1 only to `Authorization: Bearer <key>` (the Ray pods have it).
            pods.secret_env("VLLM_API_KEY", spec.secrets.vllm_api_key),
            # The weights are local; nothing is fetched from a hub at start.
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "DO_NOT_TRACK", "value": "1"},
            # Caches (compiled kernels, CUDA graphs) go to writable volumes:
            # the root filesystem is read-only.
            {"name": "HOME", "value": "/tmp"},
            {"name": "XDG_CACHE_HOME", "value": "/cache"},
            {"name": "HF_HOME", "value": "/cache/huggingface"},
        ],
        ports=[{"name": "http", "containerPort": vllm.port}],
        resources=vllm.resources.manifest(),
        # Loading weights and capturing CUDA graphs takes minutes: the
        # startup probe allows 10, then liveness takes over.
        startupProbe=pods.http_probe("/health", "http", period_s=10, failures=60),
        readinessProbe=pods.http_probe("/health", "http", period_s=5, failures=3),
        livenessProbe=pods.http_probe("/health", "http", period_s=10, failures=3, timeout_s=5),
        volumeMounts=[
            pods.mount("models", MODELS, read_only=True),
            pods.mount("cache", "/cache"),
            pods.mount("tmp", "/tmp"),
            pods.mount("dshm", "/dev/shm"),
        ],
    )


def deployment(spec: ClusterSpec) -> dict[str, Any]:
    vllm = spec.vllm
    return model_server.deployment(spec, model_server.ModelServer(
        component=COMPONENT,
        name=vllm.name,
        replicas=vllm.replicas,
        init=model_server.fetch_container(
            spec, "fetch-model", ["llm", "--model", vllm.model, "--alias", vllm.alias, "--dest", f"{MODELS}/{vllm.model}"]),
        server=_server_container(spec),
        volumes=[
            pods.empty_dir("models", size_limit="50Gi"),
            pods.empty_dir("cache", size_limit="10Gi"),
            pods.empty_dir("tmp", size_limit="2Gi"),
            # Shared memory for the engine's worker processes (NCCL with tensor parallelism).
            pods.empty_dir("dshm", size_limit="4Gi", memory=True),
        ],
        placement=vllm.placement,
        termination_grace_s=60,
    ))


def service(spec: ClusterSpec) -> dict[str, Any]:
    vllm = spec.vllm
    return model_server.service(spec, COMPONENT, vllm.name, [{"name": "http", "port": vllm.port, "targetPort": "http"}])


def manifests(spec: ClusterSpec) -> list[dict[str, Any]]:
    return [deployment(spec), service(spec)]
