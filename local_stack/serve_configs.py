"""configs/local.yaml and its variants with other ports, for the tests and
benchmarks that run the same graphs on free loopback ports."""
from __future__ import annotations

import copy
import random
import socket
from pathlib import Path
from typing import Any

import yaml

from deployments.paths import PROJECT_ROOT

LOCAL_CONFIG = PROJECT_ROOT / "configs" / "local.yaml"


# Below Linux's ephemeral range (32768-60999), above Ray's worker ports (10002-19999).
SERVER_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port for a server we start later, free on every interface now.

    Not an ephemeral one (bind to port 0): a Ray cluster opens hundreds of
    outgoing connections, each on an ephemeral local port, and one that
    lands on a port picked earlier makes the server's bind fail later
    (HAProxy's stats listener on 0.0.0.0 did, once in two test runs).
    """
    for port in random.sample(SERVER_PORTS, 200):
        if port in _handed_out:  # picked earlier, its server may not be up yet
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {SERVER_PORTS.start}-{SERVER_PORTS.stop - 1}")


def load_config(path: Path = LOCAL_CONFIG) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def local_config(http_port: int, triton_grpc: str, llm: str | None = None, only: set[str] | None = None,
                 grpc_port: int | None = None, mlserver_grpc: str | None = None) -> dict[str, Any]:
    """configs/local.yaml with the test's ports (Serve's gRPC proxy on
    `grpc_port`, or a free one) (and, given `llm`, that model
    served by the chat app instead of the demo's; given `only`, just those
    applications, with explanations off by default if the chat app is left out)."""
    config = copy.deepcopy(load_config())
    if only is not None:
        config["applications"] = [app for app in config["applications"] if app["name"] in only]
    config["http_options"]["port"] = http_port
    config["grpc_options"]["port"] = grpc_port or free_port()
    for app in config["applications"]:
        if "graph" in app.get("args", {}):
            point_graph(app, triton_grpc, f"http://127.0.0.1:{http_port}/v1", llm, mlserver_grpc)
            if only is not None and "chat" not in only:
                explanations_off(app)
        if llm and "model" in app.get("args", {}):
            app["args"]["model"]["name"] = llm
            app["args"]["model"]["engine"]["max_model_len"] = 512
    return config


def point_graph(app: dict[str, Any], triton_grpc: str, llm_url: str, llm_model: str | None = None,
                mlserver_grpc: str | None = None) -> dict[str, Any]:
    """A graph application's Triton nodes at `triton_grpc`, its MLServer
    nodes at `mlserver_grpc` (when given), its remote LLM nodes at `llm_url`
    (and `llm_model`, when given); in place, returned."""
    for node in app["args"]["graph"]["nodes"].values():
        server = node.get("config", {}).get("server", "triton")
        if node["kind"] == "triton_model" or (node["kind"] == "v2_model" and server == "triton"):
            node["config"]["url"] = triton_grpc
        if node["kind"] == "v2_model" and server == "mlserver" and mlserver_grpc:
            node["config"]["url"] = mlserver_grpc
        if node["kind"] == "llm" and node["config"].get("mode", "remote") == "remote":
            node["config"]["url"] = llm_url
            if llm_model:
                node["config"]["model"] = llm_model
    return app


def explanations_off(app: dict[str, Any]) -> dict[str, Any]:
    """The recommend graph with `explain` false unless a request asks (the
    chat app it calls is not deployed, or is not the point); in place."""
    explain = app["args"]["graph"]["request"].get("explain")
    if explain is not None:
        explain["default"] = False
    return app


def application(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The application named `name` of a Serve config."""
    (app,) = [app for app in config["applications"] if app["name"] == name]
    return app
