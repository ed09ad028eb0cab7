"""Checks that the Serve config and the cluster spec describe the same
cluster: the render refuses a pair that would deploy, pass every schema and
then fail at run time.

- every `registry_uri` in the Serve config is the spec's MLflow;
- a model node on a v2 server the render deploys (`triton_model`, and
  `v2_model` with `server: triton` or `server: mlserver`) calls that
  server's Service, on its gRPC or HTTP port, for a model the server's init
  container exports; a `v2_model` on another server is one this render
  does not deploy, and is not checked;
- a remote LLM node calls the vLLM Service (with the model it serves) or
  the chat app through the serve Service;
- Serve listens on 0.0.0.0 and on the port the serve Service targets;
- the GPU replicas Serve may autoscale to fit in the GPU worker groups
  that declare their GPU type to Ray's autoscaler;
- every application requires API keys (`args.http.api_keys`), each read
  from a file of the Secret the worker pods mount (`secrets.api_keys` in
  kuberay/cluster.yaml): `<mount_path>/<key>`, never an environment
  variable (the pods set none for keys), never a path the pods do not have;
- an LLM node that calls the chat app through the serve Service, or the
  vLLM server, sends a key (the vLLM server's: VLLM_API_KEY of the Ray pods).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterator, Optional

from kuberay.rayservice import PAYLOAD_LOG_REDIS_URL_ENV, VLLM_API_KEY_ENV
from kuberay.spec import ClusterSpec

# A Secret's data keys, hence the file names of a mounted Secret (never ".", "..",
# or "..*": the kubelet's own `..data` entries).
SECRET_KEY = re.compile(r"^(?!\.\.)(?!\.$)[-._a-zA-Z0-9]+$")


def _registry_uris(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}"
            if key == "registry_uri":
                yield child, value
            else:
                yield from _registry_uris(value, child)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _registry_uris(value, f"{path}[{index}]")


def _gpu_demand(app: dict[str, Any]) -> tuple[Optional[str], int]:
    """(GPU type, GPUs) the app's LLM deployment can scale to: one engine
    replica uses tensor_parallel_size GPUs of its accelerator_type."""
    model = (app.get("args") or {}).get("model")
    if not isinstance(model, dict) or model.get("accelerator") != "gpu":
        return None, 0
    replicas = model.get("num_replicas", 1)
    for deployment in app.get("deployments") or []:
        if str(deployment.get("name", "")).endswith(f":{model.get('name')}"):
            autoscaling = deployment.get("autoscaling_config") or {}
            replicas = autoscaling.get("max_replicas", deployment.get("num_replicas", replicas))
    return model.get("accelerator_type"), int(replicas) * int((model.get("engine") or {}).get("tensor_parallel_size", 1))


def _api_key_problems(spec: ClusterSpec, app: dict[str, Any], prefix: str) -> list[str]:
    """The app's keys are on, and every key file is a key of the mounted Secret."""
    volume = spec.secrets.api_keys
    mount = PurePosixPath(volume.mount_path)
    http = (app.get("args") or {}).get("http")
    keys = http.get("api_keys") if isinstance(http, dict) else None
    field = f"{prefix}.args.http.api_keys"
    if not keys or not isinstance(keys, list):
        return [
            f"{field}: none, so every route of application {app.get('name')!r} would be open to whoever reaches "
            f"the Ingress; add keys read from files of the Secret {volume.name!r} ({mount}/<key>)"
        ]
    found = []
    for index, key in enumerate(keys):
        here = f"{field}[{index}]"
        if not isinstance(key, dict):
            continue
        if key.get("env") is not None:
            found.append(
                f"{here}.env: {key['env']!r}, but on the cluster keys are files of the mounted Secret "
                f"{volume.name!r}; use file: {mount}/<key>"
            )
            continue
        file = key.get("file")
        if file is None:
            continue
        path = PurePosixPath(str(file))
        if path.parent != mount or not SECRET_KEY.match(path.name):
            found.append(
                f"{here}.file: {str(file)!r} is not under the mounted Secret {volume.name!r}: the worker pods "
                f"have its keys as {mount}/<key> (secrets.api_keys.mount_path in kuberay/cluster.yaml)"
            )
    return found


def _requires_keys(app: dict[str, Any]) -> bool:
    http = (app.get("args") or {}).get("http")
    return isinstance(http, dict) and bool(http.get("api_keys"))


def _node_configs(args: dict[str, Any], kind: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, config) of a graph app's nodes of one kind (`args.graph.nodes`)."""
    nodes = ((args.get("graph") or {}).get("nodes")) or {}
    return [
        (f"{prefix}.graph.nodes.{name}.config", node["config"])
        for name, node in nodes.items()
        if isinstance(node, dict) and node.get("kind") == kind and isinstance(node.get("config"), dict)
    ]


@dataclass(frozen=True)
class V2Server:
    """A v2 server the render deploys, as a model node must call it."""

    title: str
    service: str
    grpc_port: int
    http_port: int
    models: tuple[str, ...]


def _v2_servers(spec: ClusterSpec) -> dict[str, V2Server]:
    """`config.server` of a model node -> the server the render deploys for it."""
    return {
        "triton": V2Server("Triton", spec.triton.name, spec.triton.grpc_port, spec.triton.http_port, (spec.triton.model,)),
        "mlserver": V2Server("MLServer", spec.mlserver.name, spec.mlserver.grpc_port, spec.mlserver.http_port,
                             tuple(spec.mlserver.models)),
    }


def _v2_problems(spec: ClusterSpec, args: dict[str, Any], prefix: str) -> list[str]:
    """Model nodes on Triton or MLServer call the Service the render creates,
    for a model it serves: a wrong host or port resolves nowhere, and a
    model the init container did not export is "not found", at run time only."""
    servers = _v2_servers(spec)
    found = []
    for kind in ("triton_model", "v2_model"):
        for path, node in _node_configs(args, kind, prefix):
            server = servers.get(node.get("server", "triton"))
            if server is None:
                continue
            port = server.grpc_port if node.get("protocol", "grpc") == "grpc" else server.http_port
            expected = f"{spec.service_host(server.service)}:{port}"
            if node.get("url") != expected:
                found.append(f"{path}.url: {node.get('url')!r}, but the {server.title} Service is {expected!r}")
            model = node.get("model", "ranker")  # V2ModelConfig's default
            if model not in server.models:
                found.append(f"{path}.model: {model!r}, but {server.title} serves only {list(server.models)} (kuberay/cluster.yaml)")
    return found


def _payload_log_problems(args: dict[str, Any], prefix: str) -> list[str]:
    """A payload log on the cluster goes to Redis (its URL from the Secret the
    Ray pods have) or to an HTTP receiver: a file sink would write inside a
    pod, lost with it."""
    sink = (args.get("payload_log") or {}).get("sink") or {"kind": "file"}
    path = f"{prefix}.payload_log.sink"
    if sink.get("kind", "file") == "file":
        return [f"{path}: a file sink writes inside the pod and is lost with it; use kind redis "
                f"(url_env: {PAYLOAD_LOG_REDIS_URL_ENV}) or http"] if args.get("payload_log") else []
    if sink.get("kind") == "redis" and sink.get("url_env") != PAYLOAD_LOG_REDIS_URL_ENV:
        named = f"url_env: {sink['url_env']!r}" if sink.get("url_env") else "url written in the config"
        return [f"{path}: {named}, but the Ray pods have the Redis URL as {PAYLOAD_LOG_REDIS_URL_ENV} "
                "(secrets.payload_log_redis_url in kuberay/cluster.yaml)"]
    return []


def problems(spec: ClusterSpec, serve_config: dict[str, Any]) -> list[str]:
    found: list[str] = []
    http = serve_config.get("http_options") or {}
    if http.get("host") != "0.0.0.0":
        found.append(f"http_options.host: {http.get('host')!r}, but inside a pod Serve must listen on 0.0.0.0")
    if http.get("port", 8000) != spec.rayservice.serve_port:
        found.append(f"http_options.port: {http.get('port', 8000)}, but the serve Service targets {spec.rayservice.serve_port}")

    grpc_options = serve_config.get("grpc_options") or {}
    if grpc_options.get("grpc_servicer_functions") and grpc_options.get("port", 9000) != spec.rayservice.grpc_port:
        found.append(f"grpc_options.port: {grpc_options.get('port', 9000)}, but the serve Service targets {spec.rayservice.grpc_port}")

    vllm_url = f"http://{spec.service_host(spec.vllm.name)}:{spec.vllm.port}/v1"
    chat_url = f"http://{spec.service_host(spec.rayservice.serve_service)}:{spec.rayservice.serve_port}/v1"
    gpu_demand: dict[Optional[str], int] = {}
    applications = serve_config.get("applications") or []
    # The OpenAI API at <serve Service>/v1 is the app routed at "/".
    chat_needs_key = any(isinstance(a, dict) and a.get("route_prefix", "/") == "/" and _requires_keys(a) for a in applications)
    for index, app in enumerate(applications):
        prefix = f"applications[{index}]"
        found += _api_key_problems(spec, app, prefix)
        args = app.get("args") or {}
        for path, uri in _registry_uris(args, f"{prefix}.args"):
            if uri != spec.mlflow_uri:
                found.append(f"{path}: {uri!r}, but the cluster's MLflow is {spec.mlflow_uri!r}")
        found += _v2_problems(spec, args, f"{prefix}.args")
        found += _payload_log_problems(args, f"{prefix}.args")
        for path, llm in _node_configs(args, "llm", f"{prefix}.args"):
            if llm.get("mode", "remote") != "remote" or "url" not in llm:
                continue
            if llm["url"].rstrip("/") not in (vllm_url, chat_url):
                found.append(f"{path}.url: {llm['url']!r}, but the LLM services are {vllm_url!r} and {chat_url!r}")
            elif llm["url"].rstrip("/") == vllm_url and llm.get("model") != spec.vllm.model:
                found.append(f"{path}.model: {llm.get('model')!r}, but the vLLM server serves {spec.vllm.model!r}")
            elif llm["url"].rstrip("/") == vllm_url and llm.get("api_key_env") != VLLM_API_KEY_ENV:
                found.append(
                    f"{path}.api_key_env: {llm.get('api_key_env')!r}, but the vLLM server requires its key, which "
                    f"the Ray pods have as {VLLM_API_KEY_ENV} (secrets.vllm_api_key in kuberay/cluster.yaml)"
                )
            elif llm["url"].rstrip("/") == chat_url and chat_needs_key and not llm.get("api_key_env"):
                found.append(
                    f"{path}.api_key_env: unset, but {llm['url']!r} is the chat app, which "
                    "requires an API key (every call would get 401)"
                )
        kind, gpus = _gpu_demand(app)
        if gpus:
            gpu_demand[kind] = gpu_demand.get(kind, 0) + gpus

    for kind, gpus in gpu_demand.items():
        groups = [g for g in spec.rayservice.worker_groups if g.resources.gpus and kind in (None, g.accelerator_type)]
        supply = sum(g.max_replicas * g.resources.gpus for g in groups)
        what = f"{kind} GPUs" if kind else "GPUs"
        if gpus > supply:
            found.append(
                f"applications: Serve may scale GPU engines to {gpus} {what}, but the worker groups "
                f"declaring them (accelerator_type) have at most {supply}"
            )
    return found
