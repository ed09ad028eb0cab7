"""configs/local.yaml and its variants with other ports, for the tests and
benchmarks that run the same graphs on free loopback ports."""
from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import yaml

from deployments.paths import PROJECT_ROOT

LOCAL_CONFIG = PROJECT_ROOT / "configs" / "local.yaml"


def free_port() -> int:
    """A port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_config(path: Path = LOCAL_CONFIG) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def local_config(http_port: int, triton_grpc: str, llm: str | None = None, only: set[str] | None = None) -> dict[str, Any]:
    """configs/local.yaml with the test's ports (and, given `llm`, that model
    served by the chat app instead of the demo's; given `only`, just those
    applications, without LLM explanations if the chat app is left out)."""
    config = copy.deepcopy(load_config())
    if only is not None:
        config["applications"] = [app for app in config["applications"] if app["name"] in only]
        if "chat" not in only:
            for app in config["applications"]:
                app.get("args", {}).pop("explain", None)
    config["http_options"]["port"] = http_port
    for app in config["applications"]:
        if "ranker" in app.get("args", {}):
            app["args"]["ranker"]["url"] = triton_grpc
        if app.get("args", {}).get("explain"):
            app["args"]["explain"]["llm"]["url"] = f"http://127.0.0.1:{http_port}/v1"
            if llm:
                app["args"]["explain"]["llm"]["model"] = llm
        if llm and "model" in app.get("args", {}):
            app["args"]["model"]["name"] = llm
            app["args"]["model"]["engine"]["max_model_len"] = 512
    return config
