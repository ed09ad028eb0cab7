"""Who can reach what in the rendered cluster: Ray's control plane behind its
token and open only to the cluster's own pods; the backends open only to the
pods that call them; the serve port open to the Ingress controller. The
connection matrix below is the threat model of kuberay/README.md, evaluated
on the rendered NetworkPolicies as Kubernetes evaluates them
(kuberay/exposure.py `admits`; a network plugin that enforces them is a
cluster's, not something that runs here)."""
import copy

import pytest
import yaml

from kuberay import exposure, pods, render
from kuberay.rayservice import CLIENT_PORT, DASHBOARD_PORT, GCS_PORT, METRICS_PORT
from kuberay.spec import load_spec

SPEC = load_spec(render.SPEC_FILE)
NS = SPEC.namespace
RAY_WORKER = pods.labels("ray-worker", SPEC.rayservice.name)
RAY_HEAD = pods.labels("ray-head", SPEC.rayservice.name)
TRITON = pods.labels("triton", SPEC.triton.name)
VLLM = pods.labels("vllm", SPEC.vllm.name)
MLFLOW = {"app.kubernetes.io/name": "mlflow"}
REDIS = {"app.kubernetes.io/name": "redis"}
SOME_POD = {"app": "someone-elses"}  # any other pod of the namespace


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in render.render().items()}


@pytest.fixture(scope="module")
def policies(rendered) -> list[dict]:
    return [d for d in rendered["network-policies.yaml"] if d["kind"] == "NetworkPolicy"]


def reaches(policies, source: tuple[str, dict], target: dict, port: int) -> bool:
    namespace, labels = source
    return exposure.admits(policies, source_namespace=namespace, source_labels=labels, namespace=NS, labels=target, port=port)


INGRESS_CONTROLLER = (SPEC.network.ingress_controller_namespace, {"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = (SPEC.network.monitoring_namespace, {"app.kubernetes.io/name": "prometheus"})
OPERATOR = (SPEC.network.kuberay_operator_namespace, {"app.kubernetes.io/name": "kuberay-operator"})


@pytest.mark.parametrize("source, target, port, allowed", [
    # the serve port: from the Ingress controller and the cluster's own pods (an LLM node calls the chat app)
    (INGRESS_CONTROLLER, RAY_WORKER, SPEC.rayservice.serve_port, True),
    ((NS, RAY_WORKER), RAY_WORKER, SPEC.rayservice.serve_port, True),
    ((NS, SOME_POD), RAY_WORKER, SPEC.rayservice.serve_port, False),
    # Ray's control plane: from Ray pods only (and the operator to the dashboard)
    (INGRESS_CONTROLLER, RAY_HEAD, DASHBOARD_PORT, False),
    ((NS, SOME_POD), RAY_HEAD, DASHBOARD_PORT, False),
    ((NS, SOME_POD), RAY_HEAD, GCS_PORT, False),
    ((NS, SOME_POD), RAY_HEAD, CLIENT_PORT, False),
    (("other-team", SOME_POD), RAY_HEAD, GCS_PORT, False),
    ((NS, RAY_WORKER), RAY_HEAD, GCS_PORT, True),
    (OPERATOR, RAY_HEAD, DASHBOARD_PORT, True),
    (OPERATOR, RAY_HEAD, GCS_PORT, False),
    (PROMETHEUS, RAY_WORKER, METRICS_PORT, True),
    (PROMETHEUS, RAY_HEAD, GCS_PORT, False),
    # the backends: from the pods that call them
    ((NS, RAY_WORKER), TRITON, SPEC.triton.grpc_port, True),
    ((NS, SOME_POD), TRITON, SPEC.triton.grpc_port, False),
    (INGRESS_CONTROLLER, TRITON, SPEC.triton.http_port, False),
    (PROMETHEUS, TRITON, SPEC.triton.metrics_port, True),
    (PROMETHEUS, TRITON, SPEC.triton.grpc_port, False),
    ((NS, RAY_WORKER), VLLM, SPEC.vllm.port, True),
    ((NS, SOME_POD), VLLM, SPEC.vllm.port, False),
    ((NS, RAY_WORKER), MLFLOW, 5000, True),
    ((NS, TRITON), MLFLOW, 5000, True),  # its init container exports the repository from the registry
    ((NS, SOME_POD), MLFLOW, 5000, False),
    ((NS, RAY_WORKER), REDIS, 6379, True),
    ((NS, TRITON), REDIS, 6379, False),
])
def test_who_reaches_what(policies, source, target, port, allowed):
    assert reaches(policies, source, target, port) is allowed


def test_the_evaluator_takes_an_unselected_pod_as_open(policies):
    assert reaches(policies, (NS, SOME_POD), {"app": "unprotected"}, 80), "no policy selects it: Kubernetes lets all in"


def test_ray_runs_token_auth_from_a_secret(rendered):
    cluster = rendered["rayservice.yaml"][0]["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": SPEC.secrets.ray_auth_token}


def test_vllm_requires_its_key_and_the_ray_pods_have_it(rendered):
    vllm = next(d for d in rendered["vllm.yaml"] if d["kind"] == "Deployment")
    server = next(c for c in vllm["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    ref = {"name": SPEC.secrets.vllm_api_key.name, "key": SPEC.secrets.vllm_api_key.key}
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": ref}} in server["env"]
    assert not any("api-key" in arg for arg in server.get("args", [])), "the key is not an argument"
    cluster = rendered["rayservice.yaml"][0]["spec"]["rayClusterConfig"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": ref}} in template["spec"]["containers"][0]["env"]


def test_the_rendered_set_passes_the_exposure_checks(rendered):
    assert exposure.problems([d for docs in rendered.values() for d in docs]) == []


def refused(rendered: dict, edit) -> str:
    broken = copy.deepcopy(rendered)
    edit(broken)
    with pytest.raises(render.RenderError) as caught:
        render.refuse_exposed(broken)
    return str(caught.value)


def test_a_rayservice_without_token_auth_is_refused(rendered):
    message = refused(rendered, lambda r: r["rayservice.yaml"][0]["spec"]["rayClusterConfig"].pop("authOptions"))
    assert "RayService/serve-graphs: spec.rayClusterConfig.authOptions.mode is None, not 'token'" in message
    disabled = refused(rendered, lambda r: r["rayservice.yaml"][0]["spec"]["rayClusterConfig"]["authOptions"].update(mode="disabled"))
    assert "is 'disabled', not 'token'" in disabled


def test_a_backend_service_no_policy_covers_is_refused(rendered):
    def drop_triton_policy(r):
        r["network-policies.yaml"] = [d for d in r["network-policies.yaml"] if d["metadata"]["name"] != "triton"]

    assert "Service/triton: its pods" in refused(rendered, drop_triton_policy)


def test_ray_pods_no_policy_covers_are_refused(rendered):
    def drop_ray_policy(r):
        r["network-policies.yaml"] = [d for d in r["network-policies.yaml"] if d["metadata"]["name"] != "serve-graphs-ray"]

    assert "RayService/serve-graphs head: its pods" in refused(rendered, drop_ray_policy)


def test_a_rule_that_admits_everyone_is_refused(rendered):
    def open_triton(r):
        policy = next(d for d in r["network-policies.yaml"] if d["metadata"]["name"] == "triton")
        policy["spec"]["ingress"][0]["from"].append({"podSelector": {}})

    assert "NetworkPolicy/triton: spec.ingress[0].from[1] is empty: it selects everyone" in refused(rendered, open_triton)


def test_an_llm_node_calling_vllm_without_its_key_is_refused():
    from kuberay import consistency

    config = yaml.safe_load(open(render.HERE.parent / "configs" / "cluster.yaml"))
    for app in config["applications"]:
        for node in ((app.get("args") or {}).get("graph") or {}).get("nodes", {}).values():
            if node.get("kind") == "llm":
                node["config"].pop("api_key_env", None)
    found = consistency.problems(SPEC, config)
    assert any("api_key_env: None, but the vLLM server requires its key" in problem for problem in found), found
