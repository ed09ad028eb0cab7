"""The dashboard checker finds what would draw an empty panel (a misspelt or
absent metric, a histogram queried without its suffix, a wrong label, bad
PromQL, a broken dashboard structure), and the committed dashboard and
Prometheus configs pass it."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from deployments.paths import PROJECT_ROOT
from observability import exposition
from observability.check import ALERTS, ALLOW_LIST, check, load_allow_list, main
from observability.dashboard import DATASOURCE

OBSERVABILITY = PROJECT_ROOT / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "serve-graphs.json"

# What the two kinds of endpoint write: Ray (OpenTelemetry -> prometheus_client:
# counters as `x_total` under `# TYPE x_total counter`) and Triton (prometheus-cpp:
# counters without `_total`).
RAY_TEXT = """\
# HELP ray_graph_node_latency_ms Latency of one node.
# TYPE ray_graph_node_latency_ms histogram
ray_graph_node_latency_ms_bucket{graph="recommend",le="1.0",node="ranker"} 1.0
ray_graph_node_latency_ms_bucket{graph="recommend",le="+Inf",node="ranker"} 2.0
ray_graph_node_latency_ms_count{graph="recommend",node="ranker"} 2.0
ray_graph_node_latency_ms_sum{graph="recommend",node="ranker"} 3.5
# HELP ray_graph_node_errors_total Failed node calls.
# TYPE ray_graph_node_errors_total counter
ray_graph_node_errors_total{error="not_found",graph="recommend",node="features"} 1.0
# HELP ray_serve_num_http_requests_total HTTP requests.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{application="recommend",route="/recommend",status_code="200"} 3.0
# HELP ray_serve_replica_processing_queries Ongoing.
# TYPE ray_serve_replica_processing_queries gauge
# HELP ray_vllm_num_requests_running Running.
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{model_name="tiny-llama"} 0.0
"""
TRITON_TEXT = """\
# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="ranker",version="1"} 40
# HELP nv_inference_exec_count Number of model executions performed
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="ranker",version="1"} 4
"""


def scraped() -> exposition.Exposition:
    return exposition.parse(RAY_TEXT).merge(exposition.parse(TRITON_TEXT))


def dashboard_with(*exprs: str, variables: tuple[dict, ...] = ()) -> dict:
    """A minimal well-formed dashboard, one panel per expression."""
    return {
        "uid": "t", "title": "t", "schemaVersion": 39,
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}, *variables]},
        "panels": [
            {"id": i + 1, "type": "timeseries", "title": f"p{i}", "datasource": dict(DATASOURCE),
             "gridPos": {"h": 8, "w": 12, "x": 0, "y": 8 * i},
             "targets": [{"refId": "A", "expr": expr, "datasource": dict(DATASOURCE)}]}
            for i, expr in enumerate(exprs)
        ],
    }


def test_accepts_histogram_suffixes_and_counters_as_stored():
    report = check(dashboard_with(
        'histogram_quantile(0.99, sum by (le, node) (rate(ray_graph_node_latency_ms_bucket{graph=~".*"}[$__rate_interval])))',
        "rate(ray_graph_node_latency_ms_sum[5m]) / rate(ray_graph_node_latency_ms_count[5m])",
        "sum by (error) (rate(ray_graph_node_errors_total[5m]))",
        "sum(rate(nv_inference_count[5m])) / sum(rate(nv_inference_exec_count[5m]))",
    ), scraped())
    assert report.ok, report.problems
    assert set(report.uses) == {
        "ray_graph_node_latency_ms_bucket", "ray_graph_node_latency_ms_sum", "ray_graph_node_latency_ms_count",
        "ray_graph_node_errors_total", "nv_inference_count", "nv_inference_exec_count",
    }


def test_finds_a_misspelt_metric_and_suggests_the_real_one():
    report = check(dashboard_with("rate(ray_graph_node_latency_ms_bucket[5m])", "rate(ray_graph_node_latncy_ms_bucket[5m])"), scraped())
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert problem.startswith("ray_graph_node_latncy_ms_bucket is not exported")
    assert "did you mean ray_graph_node_latency_ms_bucket" in problem
    assert "panel 2 'p1' target A" in problem


def test_rejects_a_metric_that_does_not_exist():
    report = check(dashboard_with("sum(ray_graph_batch_size)"), scraped())
    assert [p.split(";")[0] for p in report.problems] == ["ray_graph_batch_size is not exported"]


@pytest.mark.parametrize(
    "expr, hint",
    [
        # a histogram family has no series of its own name
        ("rate(ray_graph_node_latency_ms[5m])", "ray_graph_node_latency_ms is a histogram exported as ray_graph_node_latency_ms_bucket"),
        # Ray's counters carry _total ...
        ("rate(ray_serve_num_http_requests[5m])", "exported as ray_serve_num_http_requests_total"),
        # ... Triton's do not (prometheus_client's parser would add it: undone)
        ("rate(nv_inference_count_total[5m])", "nv_inference_count is a counter exported as nv_inference_count"),
        # declared by Ray, nothing recorded yet
        ("ray_serve_replica_processing_queries", "declared (gauge) but has no samples yet"),
    ],
)
def test_rejects_names_prometheus_does_not_store_with_a_hint(expr, hint):
    report = check(dashboard_with(expr), scraped())
    assert len(report.problems) == 1 and hint in report.problems[0], report.problems


def test_rejects_a_label_the_metric_does_not_have():
    report = check(dashboard_with('rate(ray_graph_node_errors_total{nod="ranker", job="ray"}[5m])'), scraped())
    assert len(report.problems) == 1 and "has no label 'nod'" in report.problems[0], report.problems


def test_checks_query_variables_metric_and_label():
    good = {"name": "node", "type": "query", "datasource": dict(DATASOURCE),
            "query": {"query": 'label_values(ray_graph_node_latency_ms_count{graph=~"$graph"}, node)'}}
    graph = {"name": "graph", "type": "query", "datasource": dict(DATASOURCE), "query": "label_values(ray_graph_node_latency_ms_count, grpah)"}
    report = check(dashboard_with("ray_vllm_num_requests_running", variables=(good, graph)), scraped())
    assert report.problems == [
        "ray_graph_node_latency_ms_count has no label 'grpah' (it has: graph, node); used in variable $graph"
    ]


def test_reports_invalid_promql_and_unnamed_selectors():
    report = check(dashboard_with("sum(rate(ray_graph_node_errors_total[5m])", '{__name__=~"ray_graph_.*"}'), scraped())
    assert len(report.problems) == 2
    assert "not valid PromQL" in report.problems[0]
    assert "selector without a metric name" in report.problems[1]


def test_structure_problems():
    board = dashboard_with("ray_vllm_num_requests_running", 'ray_vllm_num_requests_running{model_name=~"$llm"}')
    board["panels"][1]["id"] = 1
    board["panels"][1]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    del board["panels"][0]["gridPos"]
    problems = check(board, scraped()).problems
    assert problems == [
        "panel 1 'p0': no gridPos with integer h, w, x, y",
        "panel 1 'p1': id 1 already used by panel 1 'p0'",
        "panel 1 'p1': datasource is not ${datasource}",
        "panel 1 'p1' target A: undefined variables ['llm']",
    ]


def test_allow_list_passes_absent_names_with_reasons_and_must_stay_in_use():
    board = dashboard_with("rate(ray_serve_deployment_error_counter_total[5m])", "ray_vllm_num_requests_running")
    allow = {"ray_serve_deployment_error_counter_total": "only on crashes", "ray_vllm_num_requests_running": "x", "gone": "y"}
    report = check(board, scraped(), allow)
    assert report.absent_allowed == {"ray_serve_deployment_error_counter_total": "only on crashes"}
    assert report.allowed_but_present == ["ray_vllm_num_requests_running"]
    assert report.problems == ["allow-list entry gone is not used by the dashboard: remove it"]


def test_cli_exit_status(tmp_path, capsys):
    metrics = tmp_path / "ray.txt"
    metrics.write_text(RAY_TEXT)
    board = tmp_path / "board.json"
    board.write_text(json.dumps(dashboard_with("rate(ray_graph_node_errors_total[5m])")))
    assert main([str(board), "--metrics-file", str(metrics)]) == 0
    board.write_text(json.dumps(dashboard_with("rate(ray_graph_node_eror_total[5m])")))
    assert main([str(board), "--metrics-file", str(metrics)]) == 1
    assert "FAIL ray_graph_node_eror_total is not exported" in capsys.readouterr().out


def test_committed_dashboard_and_alert_rules_are_well_formed():
    board = json.loads(DASHBOARD.read_text())
    allow = load_allow_list(DASHBOARD.parent / ALLOW_LIST)
    report = check(board, None, allow, yaml.safe_load(ALERTS.read_text()))
    assert report.ok, report.problems
    assert 20 <= len(report.uses) <= 60
    families = {name.split("_")[0] for name in report.uses}
    assert families == {"ray", "nv"}  # Ray (Serve, graph nodes, vLLM) and Triton
    assert set(allow) <= set(report.uses)


# Runs in its own interpreter: Ray's recorder installs a global meter
# provider and registers with prometheus_client's global registry.
_EXPORT_NODE_METRICS = """
import sys
from unittest import mock
import ray
from ray.serve import metrics as serve_metrics
from prometheus_client import REGISTRY, generate_latest
from ray._private.telemetry.open_telemetry_metric_recorder import OpenTelemetryMetricRecorder

created = []
def fake(kind):
    def make(name, description="", boundaries=None, tag_keys=None):
        created.append((kind, name, list(boundaries or []), list(tag_keys or ())))
        return mock.Mock()
    return make
with mock.patch.object(ray, "is_initialized", return_value=True), \\
        mock.patch.object(serve_metrics, "Histogram", fake("histogram")), \\
        mock.patch.object(serve_metrics, "Gauge", fake("gauge")), \\
        mock.patch.object(serve_metrics, "Counter", fake("counter")):
    from deployments.metrics import NodeMetrics
    from deployments.nodes.batching import _BatchMetrics
    from deployments.graph.shadow import ShadowMetrics
    from deployments.payloads.logger import _records_metric
    NodeMetrics("recommend")
    _BatchMetrics("ranker")
    from deployments.monitoring.serving import _Metrics as DriftMetrics
    ShadowMetrics("recommend")
    _records_metric()
    DriftMetrics()
    from deployments.rollouts.serving import _Metrics as RolloutMetrics
    RolloutMetrics("canary")
recorder = OpenTelemetryMetricRecorder(gauge_metric_ttl_seconds=60)
for kind, name, bounds, tags in created:
    values = {tag: "x" for tag in tags}
    if kind == "counter":
        recorder.register_counter_metric(name, "")
        recorder.set_metric_value(name, values, 1.0)
    elif kind == "gauge":
        recorder.register_gauge_metric(name, "")
        recorder.set_metric_value(name, values, 1.0)
    else:
        recorder.register_histogram_metric(name, "", bounds)
        recorder.record_histogram_aggregated_batch(name, [{"tags": values, "bucket_counts": [1] * (len(bounds) + 1)}])
sys.stdout.write(generate_latest(REGISTRY).decode())
"""


def test_node_metrics_through_rays_exporter_have_the_dashboards_names():
    """deployments/metrics.py's, the batching nodes', the shadow steps', the payload log's, drift's and rollouts' metrics, exported by Ray 2.60's own
    OpenTelemetry recorder (what the dashboard agent runs; no cluster needed),
    are the names and labels the dashboard queries."""
    result = subprocess.run([sys.executable, "-c", _EXPORT_NODE_METRICS], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    exported = exposition.parse(result.stdout)
    board = json.loads(DASHBOARD.read_text())
    report = check(board, exported)
    ours = {name for name in report.uses if name.startswith("ray_graph_")}
    assert ours == {
        "ray_graph_node_latency_ms_bucket", "ray_graph_node_latency_ms_count", "ray_graph_node_errors_total",
        "ray_graph_variant_requests_total", "ray_graph_variant_latency_ms_bucket", "ray_graph_model_scores_bucket",
        "ray_graph_node_batch_rows_bucket", "ray_graph_node_batch_wait_ms_bucket",
        "ray_graph_payload_log_records_total", "ray_graph_shadow_requests_total",
        "ray_graph_shadow_topk_agreement_sum", "ray_graph_shadow_topk_agreement_count",
        "ray_graph_shadow_rank_distance_bucket",
        "ray_graph_shadow_score_diff_bucket", "ray_graph_shadow_latency_ms_bucket",
        "ray_graph_drift_detected", "ray_graph_drift_share", "ray_graph_feature_drifted",
        "ray_graph_rollout_weight", "ray_graph_rollout_decisions_total",
    }
    assert ours <= set(exported.series)
    problems = [p for p in report.problems if "ray_graph_" in p]  # names and matched labels
    assert not problems, problems


# ------------------------------------------------------------ Prometheus configs

def _manifest_ports(path: str, kind: str) -> dict[str, dict[str, int]]:
    """container name -> {port name: containerPort} of a rendered manifest."""
    ports: dict[str, dict[str, int]] = {}
    for doc in yaml.safe_load_all((PROJECT_ROOT / "kuberay" / "rendered" / path).read_text()):
        if not doc or doc["kind"] != kind:
            continue
        templates = (
            [doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]]
            + [g["template"] for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
            if kind == "RayService" else [doc["spec"]["template"]]
        )
        for template in templates:
            for container in template["spec"]["containers"]:
                ports.setdefault(container["name"], {}).update({p["name"]: p["containerPort"] for p in container.get("ports", [])})
    return ports


def _kept(job: dict, source: str) -> str:
    [rule] = [r for r in job["relabel_configs"] if r.get("action") == "keep" and r["source_labels"] == [source]]
    return rule["regex"]


def test_local_prometheus_config_scrapes_the_demos_endpoints():
    from local_stack.triton_server import TritonServer

    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ray", "triton"}
    # local_stack/demo.py: --metrics-port 8080 (Ray); TritonServer's default metrics port
    assert jobs["ray"]["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    assert jobs["triton"]["static_configs"][0]["targets"] == [f"127.0.0.1:{TritonServer.metrics_port}"]


def test_kubernetes_prometheus_config_keeps_the_manifests_metrics_ports():
    config = yaml.safe_load((OBSERVABILITY / "prometheus-kubernetes.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ray", "triton", "vllm"}
    for job in jobs.values():
        [sd] = job["kubernetes_sd_configs"]
        assert sd["role"] == "pod" and sd["namespaces"]["names"] == ["serve-graphs"]
    port = "__meta_kubernetes_pod_container_port_name"
    # Ray head and every worker group: the port named `metrics` is 8080
    ray = _manifest_ports("rayservice.yaml", "RayService")
    assert _kept(jobs["ray"], "__meta_kubernetes_pod_label_ray_io_node_type") == "head|worker"
    assert {name: p.get(_kept(jobs["ray"], port)) for name, p in ray.items()} == {"ray-head": 8080, "ray-worker": 8080}
    assert _manifest_ports("triton.yaml", "Deployment")["triton"][_kept(jobs["triton"], port)] == 8002
    assert _kept(jobs["triton"], "__meta_kubernetes_pod_label_app_kubernetes_io_name") == "triton"
    assert _manifest_ports("vllm.yaml", "Deployment")["vllm"][_kept(jobs["vllm"], port)] == 8000
    [rename] = jobs["vllm"]["metric_relabel_configs"]
    assert (rename["regex"], rename["replacement"]) == ("vllm:(.+)", "ray_vllm_${1}")
