"""Helpers for the servers the tests start: Serve
deploys of config files (the code path of `serve run` / `serve deploy`)."""
from __future__ import annotations

import time
from typing import Any, Callable

import httpx

from local_stack.serve_configs import LOCAL_CONFIG, free_port, load_config, local_config  # noqa: F401 (re-exported)


def deploy(config: dict[str, Any]) -> None:
    """Submit a whole Serve config, as `serve run config.yaml` does."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), grpc_options=schema.grpc_options.model_dump(),
                         proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)


def restore(config: dict[str, Any], timeout_s: float = 60) -> None:
    """Deploy `config` again and wait until only its applications are left
    (tests that deploy extra apps next to the session's end with this)."""
    from ray import serve

    deploy(config)
    deadline = time.monotonic() + timeout_s
    expected = {app["name"] for app in config["applications"]}
    while set(serve.status().applications) != expected and time.monotonic() < deadline:
        time.sleep(0.5)


def wait_app(name: str, want: set[str], timeout_s: float = 120) -> Any:
    """Wait for an application to reach one of `want` (e.g. RUNNING)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status in want:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"app {name} not in {want} after {timeout_s} s: {status}")


def wait_http(url: str, timeout_s: float = 60, status: int = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == status:
                return last
        except httpx.HTTPError as error:
            last = error
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s: {last}")


def wait_readiness(url: str, until: Callable[[httpx.Response], bool], timeout_s: float = 15) -> httpx.Response:
    """GET `url` (a /readyz) until `until(response)`: readiness is refreshed in
    the background every second (deployments/http/readiness.py), so a change
    shows within about that, as it does to a probe."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = httpx.get(url, timeout=5)
        if until(last):
            return last
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer as expected within {timeout_s} s: {last} {last.text if last is not None else ''}")


def registry_copy(stack, folder, aliases: dict[str, str]) -> tuple[Any, str]:
    """(client, URI) of a copy of the stack's MLflow registry in `folder`:
    `aliases` (alias -> version of `ranker`) set, no rollout records left, so
    a test's alias moves and rollouts touch nothing else."""
    import shutil

    from mlflow import MlflowClient

    path = folder / "mlflow.db"
    shutil.copy(stack.mlflow_db, path)
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for alias, version in aliases.items():
        client.set_registered_model_alias("ranker", alias, version)
    for version in {v.version for v in client.search_model_versions("name='ranker'")}:
        for key in [k for k in client.get_model_version("ranker", version).tags if k.startswith("rollout.")]:
            client.delete_model_version_tag("ranker", version, key)
    return client, uri


def replicas() -> dict[str, set[str]]:
    """Live replica actors by `app#deployment` (a restarted replica gets a new name)."""
    import ray

    found: dict[str, set[str]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA::"):
            app_deployment, _, replica = actor["name"].removeprefix("SERVE_REPLICA::").rpartition("#")
            found.setdefault(app_deployment, set()).add(replica)
    return found


def scrape(url: str) -> str:
    return httpx.get(url, timeout=5).text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus family's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{key}="{val}"' in label_text for key, val in labels.items()):
            total += float(value)
    return total


def engine_process(app: str) -> tuple[int, str]:
    """(pid, what) of the vLLM engine of `app`'s LLMServer replica: its
    EngineCore child process when vLLM runs one, else the replica itself."""
    import psutil
    from ray.util.state import list_actors

    (replica,) = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=2000)
                  if (a.name or "").startswith(f"SERVE_REPLICA::{app}#LLMServer")]
    children = psutil.Process(replica.pid).children(recursive=True)
    cores = [c for c in children if "EngineCore" in c.name() or "EngineCore" in " ".join(c.cmdline())]
    return (cores[0].pid, "EngineCore process") if cores else (replica.pid, "LLMServer replica")


def wait_restarted(triton, restarts_before: int, timeout_s: float = 60, while_waiting=lambda: None) -> None:
    """Until the supervised Triton restarted after a crash and answers again
    (calling `while_waiting` between checks)."""
    deadline = time.monotonic() + timeout_s
    while not (triton.restarts > restarts_before and triton.is_ready()):
        assert time.monotonic() < deadline, f"the supervisor did not bring Triton back: {triton.status()}"
        while_waiting()
        time.sleep(0.1)
