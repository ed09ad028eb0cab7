"""The committed Grafana dashboard (and its alerting rules) query only metrics that the running stack
exports: after traffic through the recommend graph (a 404 included, for the
error series) and the chat API, Ray's Prometheus endpoint and Triton's are
scraped and the dashboard is checked against them (observability.check:
every metric and matched label of every query; the allow-list beside the
dashboard names the few this session's apps cannot make appear, with why:
a crash counter, the A/B graph's variant series).

Ray exports on an interval (a few seconds) and keeps a gauge only while its
emitter refreshes it (vLLM's stop when the engine idles), so traffic is sent
again before each scrape until everything shows up or the deadline passes."""
import json
import time

import httpx
import pytest
import yaml

from deployments.paths import PROJECT_ROOT
from observability import exposition
from observability.check import ALERTS, ALLOW_LIST, check, load_allow_list, render
from tests.servers import scrape

pytestmark = pytest.mark.integration

DASHBOARD = PROJECT_ROOT / "observability" / "grafana" / "serve-graphs.json"
DEADLINE_S = 120


def send_traffic(recommend_url: str, chat_url: str, model: str) -> None:
    for user in (3, 4, 5):
        httpx.post(recommend_url, json={"user_id": user, "item_ids": [1, 2, 3, 4, 5], "k": 2, "explain": False},
                   timeout=30).raise_for_status()
    assert httpx.post(recommend_url, json={"user_id": 3, "item_ids": [123_456], "explain": False}, timeout=30).status_code == 404
    httpx.post(
        f"{chat_url}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Recommend an item."}],
              "max_tokens": 8, "temperature": 0, "ignore_eos": True},
        timeout=120,
    ).raise_for_status()


def test_dashboard_queries_only_exported_metrics(recommend_url, chat_url, ray_cluster, triton):
    board = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(ALERTS.read_text())  # the alerting rules are checked with it
    allow = load_allow_list(DASHBOARD.parent / ALLOW_LIST)
    model = httpx.get(f"{chat_url}/models", timeout=10).json()["data"][0]["id"]
    deadline = time.monotonic() + DEADLINE_S
    while True:
        send_traffic(recommend_url, chat_url, model)
        scraped = exposition.parse(scrape(ray_cluster["metrics_url"])).merge(exposition.parse(scrape(triton.metrics_url)))
        report = check(board, scraped, allow, rules)
        if report.ok or time.monotonic() > deadline:
            break
        time.sleep(3)
    print("\n" + render(report))
    assert report.ok, "\n".join(report.problems)
    # The endpoints really carry the traffic: not only declared families.
    assert scraped.has("ray_graph_node_errors_total") and scraped.has("ray_vllm_time_to_first_token_seconds_bucket")


def test_prometheus_own_promtool_accepts_the_alert_rules_and_the_local_scrape_config(stack):
    """Prometheus' own checker (local_stack/prometheus.py unpacks it): every
    rule parses, and the demo's scrape config loads with its rule file.
    (prometheus-kubernetes.yml is not checked here: Debian builds Prometheus
    without Kubernetes service discovery.)"""
    import subprocess

    from local_stack.prometheus import binaries

    promtool = str(binaries(stack) / "promtool")
    rules = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert rules.returncode == 0 and "SUCCESS: 4 rules found" in rules.stdout, rules.stdout + rules.stderr
    config = subprocess.run([promtool, "check", "config", str(PROJECT_ROOT / "observability" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr
