"""Session fixtures: one local stack, one Triton, one Ray cluster with Serve,
the recommend graph deployed once from configs/local.yaml. All on loopback,
all stopped by their own handles."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from local_stack.ray_env import local_ray_env, stop_haproxy
from local_stack.supervisor import STATE_DIR_ENV, Supervisor

# A private test cluster: no token shared with the user's other clusters.
os.environ.update(local_ray_env())
os.environ["RAY_AUTH_MODE"] = "disabled"
# The supervised servers' state files, read by the replicas' /readyz.
os.environ[STATE_DIR_ENV] = tempfile.mkdtemp(prefix="sg-supervised-")

from tests.servers import deploy, free_port, local_config, wait_app, wait_http  # noqa: E402


def pytest_unconfigure(config):
    """HAProxy's private folder (made by local_ray_env) goes even when no cluster started."""
    stop_haproxy(os.environ)
    shutil.rmtree(os.environ[STATE_DIR_ENV], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Every test under tests/integration/ carries the `integration` marker
    (`-m "not integration"` runs what needs no servers)."""
    unmarked = sorted({item.module.__name__ for item in items
                       if "/integration/" in str(item.path) and item.get_closest_marker("integration") is None})
    if unmarked:
        raise pytest.UsageError(f"integration modules without `pytestmark = pytest.mark.integration`: {unmarked}")


@pytest.fixture(scope="session")
def stack():
    from local_stack.bootstrap import ensure

    return ensure()


@pytest.fixture(scope="session")
def triton(stack):
    """The session's Triton, supervised as `make demo` runs it: a crash is
    restarted with backoff. `triton.stop()` / `triton.start()` take it away
    on purpose and bring it back."""
    from local_stack.triton_server import TritonServer

    stack.logs.mkdir(parents=True, exist_ok=True)
    server = TritonServer(
        stack.triton_repo,
        stack.triton_backends,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=stack.logs / "triton-tests.log",
    )
    supervised = Supervisor(server, state_dir=os.environ[STATE_DIR_ENV])
    supervised.start()
    yield supervised
    supervised.close()


# Worker nodes the autoscaler removes once idle this long (10 s here; the
# RayService's own timeouts are 60 s, 600 s for GPU nodes).
IDLE_WORKER_TIMEOUT_S = 10


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray head with 8 logical CPUs, started like `make demo` starts it,
    plus Ray's autoscaler with the fake multi-node provider: worker node
    types are the RayService's worker groups (kuberay/local_cluster.py), none
    running until a deployment asks for what only they have (a GPU)."""
    import ray

    from local_stack.ray_head import start_ray_head

    temp_dir = tempfile.mkdtemp(prefix="sg-ray-", dir="/tmp")
    head = start_ray_head(
        dict(os.environ), temp_dir, num_cpus=8,
        fake_autoscaling={"min_workers": 0, "idle_timeout_s": IDLE_WORKER_TIMEOUT_S},
    )
    try:
        ray.init(address=head.address, namespace="serve", configure_logging=False)
        yield {"address": head.address, "metrics_url": head.metrics_url, "dashboard_url": head.dashboard_url,
               "idle_worker_timeout_s": IDLE_WORKER_TIMEOUT_S,
               "serve_logs_dir": os.path.join(temp_dir, "session_latest", "logs", "serve"),
               # observability.tracing:file_exporter's default folder (configs/local.yaml's tracing_config)
               "spans_dir": os.path.join(temp_dir, "session_latest", "logs", "serve", "spans")}
        # No serve.shutdown(): it drains every replica in turn; the head's
        # process group goes as a whole below, as `make demo` stops it.
        ray.shutdown()
    finally:
        head.stop()
        stop_haproxy(os.environ)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mlserver(stack):
    """The session's MLServer (the second v2 server), supervised as `make demo` runs it."""
    from local_stack.mlserver_server import MLServer

    server = MLServer(stack.mlserver_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                      log_file=stack.logs / "mlserver-tests.log")
    supervised = Supervisor(server, state_dir=os.environ[STATE_DIR_ENV])
    supervised.start()
    yield supervised
    supervised.close()


@pytest.fixture(scope="session")
def serve_config(ray_cluster, triton):
    """configs/local.yaml's recommend and chat apps with the session's ports and the tiny LLM, and one
    recommend ingress replica where it ships autoscaling from one to two:
    the tests assert what one replica does (its batches, its readiness
    checks, a key's rate limit per replica) and must not see a second one
    come and go with their own load; test_autoscaling scales a copy of the
    graph, test_faults_under_load runs two ingress replicas under load. It
    logs every request (the shipped config one in five), so that the payload
    and drift tests can follow each request they send."""
    # The canary app is left out: its rollout would move the stack's
    # ranker@stable; test_rollouts_serve runs it on a copy of the registry.
    config = local_config(http_port=free_port(), triton_grpc=triton.grpc_url, llm="tiny-llama", only={"recommend", "chat"})
    (recommend,) = [app for app in config["applications"] if app["name"] == "recommend"]
    recommend["deployments"][0].pop("autoscaling_config")
    recommend["deployments"][0]["num_replicas"] = 1
    recommend["args"]["payload_log"]["sample_ratio"] = 1.0  # every request logged: the tests find each one by its id
    return config


@pytest.fixture(scope="session")
def deployed(serve_config):
    """The whole local config, deployed once (the chat engine starts in the background)."""
    deploy(serve_config)
    return f"http://127.0.0.1:{serve_config['http_options']['port']}"


@pytest.fixture(scope="session")
def chat_url(deployed):
    wait_app("chat", {"RUNNING"}, timeout_s=300)
    wait_http(f"{deployed}/v1/models", timeout_s=60)
    return f"{deployed}/v1"


@pytest.fixture(scope="session")
def recommend_url(deployed, serve_config):
    """POST here; /healthz and /readyz below it."""
    wait_app("recommend", {"RUNNING"}, timeout_s=180)
    url = f"{deployed}/recommend"
    wait_http(f"{url}/readyz", timeout_s=60)
    return url
