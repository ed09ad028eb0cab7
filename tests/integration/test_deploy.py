"""`python -m cli.deploy`: `serve deploy` to a running cluster, with the
whole config checked first. A bad config changes nothing on the cluster; a
good one updates the running graphs in place."""
from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from ray import serve

from deployments.paths import PROJECT_ROOT
from tests.servers import replicas, restore
import pytest

pytestmark = pytest.mark.integration

REQUEST = {"user_id": 5, "item_ids": [1, 2, 3, 4], "k": 2, "explain": False}


def deploy_cli(config: dict, tmp_path: Path, dashboard_url: str) -> subprocess.CompletedProcess:
    path = tmp_path / "serve-config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "cli.deploy", str(path), "--address", dashboard_url]
    return subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)


def deployed_times() -> dict[str, float]:
    return {name: app.last_deployed_time_s for name, app in serve.status().applications.items()}


def test_an_invalid_config_changes_nothing_on_the_cluster(serve_config, ray_cluster, recommend_url, chat_url, tmp_path):
    before, running = deployed_times(), replicas()
    config = copy.deepcopy(serve_config)
    recommend = config["applications"][0]
    recommend["deployments"][0]["num_replicas"] = 2  # a valid change, in the same file
    recommend["args"]["graph"]["nodes"]["ranker"]["config"]["timout_s"] = 2  # ...next to a typo
    recommend["deployments"][0]["max_ongoing_request"] = 8  # and one that Ray's schema would drop silently

    result = deploy_cli(config, tmp_path, ray_cluster["dashboard_url"])

    assert result.returncode == 2
    assert "nothing deployed" in result.stderr
    assert "applications[0].args.graph.nodes.ranker.triton_model.config.timout_s: Extra inputs are not permitted" in result.stderr
    assert "applications[0].deployments[0].max_ongoing_request: unknown key" in result.stderr
    time.sleep(2)
    assert deployed_times() == before
    assert replicas() == running
    assert httpx.post(recommend_url, json=REQUEST, timeout=10).status_code == 200


def test_an_update_in_place_keeps_the_replicas_it_does_not_change(serve_config, ray_cluster, recommend_url, chat_url, tmp_path):
    running = replicas()
    recommender = "recommend#GraphIngress"  # the app also runs its DriftMonitor
    engine = next(key for key in running if key.startswith("chat#"))
    config = copy.deepcopy(serve_config)
    config["applications"][0]["deployments"][0]["num_replicas"] = 2

    result = deploy_cli(config, tmp_path, ray_cluster["dashboard_url"])
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        deadline = time.monotonic() + 120
        while len(replicas().get(recommender, ())) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        after = replicas()
        assert len(after[recommender]) == 2
        assert running[recommender] < after[recommender]  # the running replica kept, one added
        assert after[engine] == running[engine]  # the chat app's engine was not restarted
        assert httpx.post(recommend_url, json=REQUEST, timeout=10).status_code == 200
        assert httpx.get(f"{chat_url}/models", timeout=10).status_code == 200
    finally:
        restore(serve_config)
