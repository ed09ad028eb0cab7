"""The Kubernetes manifests: rendered from the two sources (kuberay/cluster.yaml
and configs/cluster.yaml), committed, and checked offline as an API server
with KubeRay, the KubeRay operator and Ray Serve would check them.

Every check is shown passing on the rendered manifests and rejecting a broken
one with the path of the offending field.
"""
import copy

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from cli.check import check_file
from deployments.paths import PROJECT_ROOT
from kuberay import cel_rules, crd, render, validate
from kuberay.spec import ClusterSpec, load_spec

SPEC = load_spec(render.SPEC_FILE)
K8S = SPEC.kubernetes_version


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render.render()


@pytest.fixture(scope="module")
def objects(rendered) -> dict[str, list[dict]]:
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in rendered.items()}


@pytest.fixture
def rayservice(objects) -> dict:
    """A fresh copy of the rendered RayService, to break."""
    return copy.deepcopy(objects["rayservice.yaml"][0])


def core_object(objects, kind: str) -> dict:
    return copy.deepcopy(next(d for docs in objects.values() for d in docs if d["kind"] == kind))


def problems(obj: dict, old: dict | None = None) -> list[str]:
    return [str(p) for p in validate.check_object(obj, K8S, old).problems]


def assert_rejected(obj: dict, path: str, fragment: str, old: dict | None = None) -> None:
    found = problems(obj, old)
    assert any(p.startswith(f"{path}: ") and fragment in p for p in found), f"expected {path}: ...{fragment}...; got {found}"


# --- the rendered manifests -------------------------------------------------------------------


def test_committed_manifests_are_not_stale(rendered):
    """`python -m kuberay.render` was run after the last change to either source."""
    assert render.stale(rendered) == [], "kuberay/rendered/ is stale: run `python -m kuberay.render`"
    assert render.main(["--check"]) == 0


def test_render_check_fails_on_a_stale_file(tmp_path, capsys):
    assert render.main(["--out", str(tmp_path)]) == 0
    (tmp_path / "triton.yaml").write_text((tmp_path / "triton.yaml").read_text().replace("maxReplicas: 4", "maxReplicas: 5"))
    assert render.main(["--check", "--out", str(tmp_path)]) == 1
    assert "triton.yaml: stale" in capsys.readouterr().err


def test_every_rendered_manifest_passes_every_check(objects):
    kinds = []
    for name, docs in objects.items():
        for doc in docs:
            assert problems(doc) == [], f"{name}: {validate.label(doc)}"
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        ["RayService", "Ingress"]
        + ["Deployment", "Service", "HorizontalPodAutoscaler"] * 2  # Triton, MLServer
        + ["Deployment", "Service"]  # vLLM
        + ["NetworkPolicy"] * (4 + len(SPEC.network.external_backends))
    )


def test_the_validate_command_passes_the_committed_files(capsys):
    files = sorted(str(p) for p in render.RENDERED.glob("*.yaml"))
    assert validate.main(files) == 0
    assert "RayService/serve-graphs: ok (CEL rules:" in capsys.readouterr().out


def test_serve_config_v2_is_the_cluster_serve_config_itself(rayservice):
    """Never a hand-kept copy: the string is the file, comments included."""
    text = (PROJECT_ROOT / "configs" / "cluster.yaml").read_text()
    assert rayservice["spec"]["serveConfigV2"] == text


def test_the_cluster_serve_config_passes_the_app_arg_check():
    schema = check_file(PROJECT_ROOT / "configs" / "cluster.yaml")
    assert [a.name for a in schema.applications] == ["recommend", "chat", "ensemble"]
    assert schema.http_options.host == "0.0.0.0"
    chat = schema.applications[1].args["model"]
    assert (chat["accelerator"], chat["accelerator_type"], chat["engine"]["dtype"]) == ("gpu", "L4", "bfloat16")
    for app in schema.applications:
        for deployment in app.deployments:
            assert deployment.autoscaling_config, f"{app.name}/{deployment.name} has no autoscaling_config"


def test_ray_cluster_shape(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["version"] == "v2"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for group in [cluster["headGroupSpec"], *groups.values()]:
        container = group["template"]["spec"]["containers"][0]
        assert container["livenessProbe"] and container["readinessProbe"] and container["resources"]["requests"]
    assert rayservice["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_rays_autoscaler_sees_what_each_group_offers(rayservice):
    """Read by Ray's own KubeRay autoscaler code: the head takes no work, and
    the GPU group offers L4 GPUs (the type Serve's LLM replicas ask for)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_ray_resources_from_group_spec

    cluster = rayservice["spec"]["rayClusterConfig"]
    assert _get_ray_resources_from_group_spec(cluster["headGroupSpec"], is_head=True)["CPU"] == 0
    cpu, gpu = cluster["workerGroupSpecs"]
    assert _get_ray_resources_from_group_spec(cpu, is_head=False) == {"CPU": 4, "memory": 16 * 2**30}
    assert _get_ray_resources_from_group_spec(gpu, is_head=False) == {
        "CPU": 8, "GPU": 1, "memory": 32 * 2**30, "accelerator_type:L4": 1,
    }


def _pods(objects):
    rayservice = objects["rayservice.yaml"][0]["spec"]["rayClusterConfig"]
    yield "ray-head", rayservice["headGroupSpec"]["template"]["spec"]
    for group in rayservice["workerGroupSpecs"]:
        yield f"ray-{group['groupName']}", group["template"]["spec"]
    for docs in objects.values():
        for doc in docs:
            if doc["kind"] == "Deployment":
                yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


# Pod and container security, and the API-key Secret's mount: tests/unit/test_kuberay_security.py.


def test_credentials_only_come_from_secrets(objects):
    secret_like = ("TOKEN", "PASSWORD", "USERNAME", "REDIS_CONNECTION")
    seen = set()
    for name, pod in _pods(objects):
        for container in pod.get("initContainers", []) + pod["containers"]:
            for env in container.get("env", []):
                if any(word in env["name"] for word in secret_like):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (name, env)
                    seen.add(env["name"])
    assert seen == {"HF_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FEAST_REDIS_CONNECTION"}


def test_triton_scales_on_its_queue_time_and_loads_the_registry_export(objects):
    deployment, service, hpa = objects["triton.yaml"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "nv_inference_queue_duration_us"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][:4] == ["python", "-m", "kuberay.fetch", "triton"]
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}


def test_mlserver_serves_the_registry_export_on_cpu(objects):
    """Its own Deployment + Service + HPA: the init container exports every
    version of the spec's models with the fetch target, `mlserver start`
    serves them, settings by MLSERVER_* (0.0.0.0 inside the pod), health on
    the protocol's own routes, no GPU anywhere, scaled on CPU."""
    deployment, service, hpa = objects["mlserver.yaml"]
    for doc in (deployment, service, hpa):
        assert problems(doc) == [], validate.label(doc)
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == SPEC.platform_image
    assert init["command"] == ["python", "-m", "kuberay.fetch", "mlserver", "--model", "ranker_sklearn", "--repository", "/models"]
    (server,) = pod["containers"]
    assert server["image"] == SPEC.mlserver.image
    assert server["command"] == ["mlserver", "start", "/models"]
    env = {e["name"]: e["value"] for e in server["env"]}
    assert (env["MLSERVER_HOST"], env["MLSERVER_HTTP_PORT"], env["MLSERVER_GRPC_PORT"], env["MLSERVER_METRICS_PORT"]) == (
        "0.0.0.0", "8080", "8081", "8082")
    assert env["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "true" and env["MLSERVER_DEBUG"] == "false"
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"http": 8080, "grpc": 8081, "metrics": 8082}
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["resources"] == SPEC.mlserver.resources.manifest()
    assert "nvidia.com/gpu" not in yaml.safe_dump(deployment) and "tolerations" not in pod and "nodeSelector" not in pod
    assert {m["mountPath"]: m.get("readOnly", False) for m in server["volumeMounts"]} == {"/models": True, "/tmp": False}
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("http", 8080, "http"), ("grpc", 8081, "grpc"), ("metrics", 8082, "metrics")}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlserver"}
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": SPEC.mlserver.autoscaling.cpu_utilization_target}}}]


def test_mlserver_policy_admits_the_ray_pods_and_prometheus_only(objects):
    """Triton's policy, for MLServer: grpc and http from the Ray pods, metrics
    from Prometheus's namespace; its init container may reach MLflow."""
    from kuberay import network_policies

    policies = {p["metadata"]["name"]: p for p in objects["network-policies.yaml"]}
    from_ray, from_prometheus = policies["mlserver"]["spec"]["ingress"]
    assert from_ray["from"] == [{"podSelector": network_policies.ray_pods(SPEC)}]
    assert {p["port"] for p in from_ray["ports"]} == {8081, 8080}
    assert from_prometheus["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert [p["port"] for p in from_prometheus["ports"]] == [8082]
    assert policies["mlserver"]["spec"]["podSelector"]["matchLabels"] == objects["mlserver.yaml"][1]["spec"]["selector"]
    mlflow_peers = policies["mlflow"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": objects["mlserver.yaml"][1]["spec"]["selector"]}} in mlflow_peers


def test_vllm_server_is_vllms_own_openai_server(objects):
    deployment, _ = objects["vllm.yaml"]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--served-model-name=smollm2" in server["args"] and "--dtype=bfloat16" in server["args"]


def test_ingress_routes_to_the_serve_service(objects, rayservice):
    (ingress,) = objects["ingress.yaml"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == rayservice["spec"]["serveService"]["metadata"]["name"]



def test_the_serve_service_exposes_the_grpc_proxy_and_the_policy_lets_callers_in(objects, rayservice):
    """The Open Inference Protocol over gRPC: the cluster's Serve config starts
    the gRPC proxy on the port the serve Service, the worker containers and the
    Ray pods' NetworkPolicy all open."""
    import yaml as _yaml

    serve = _yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    port = serve["grpc_options"]["port"]
    assert serve["grpc_options"]["grpc_servicer_functions"] == [
        "tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"]
    service_ports = {p["name"]: p for p in rayservice["spec"]["serveService"]["spec"]["ports"]}
    assert service_ports["serve-grpc"]["targetPort"] == port and service_ports["serve-grpc"]["appProtocol"] == "grpc"
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert {"name": "serve-grpc", "containerPort": port} in container["ports"]
    (ray_policy,) = [p for p in objects["network-policies.yaml"] if p["metadata"]["name"].endswith("-ray")]
    from_callers = ray_policy["spec"]["ingress"][0]
    assert {"protocol": "TCP", "port": port} in from_callers["ports"]

# --- CRD schema: strict about unknown fields, types, enums, formats ---------------------------

WORKER0 = "spec.rayClusterConfig.workerGroupSpecs[0]"


def test_a_typo_deep_in_a_pod_template_is_an_unknown_field(rayservice):
    container = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resourcs"] = container.pop("resources")
    assert_rejected(rayservice, f"{WORKER0}.template.spec.containers[0].resourcs", "unknown field")


def test_a_typo_in_metadata_is_an_unknown_field(rayservice):
    rayservice["metadata"]["lables"] = rayservice["metadata"].pop("labels")
    assert_rejected(rayservice, "metadata.lables", "unknown field")


def test_ray_start_params_are_strings(rayservice):
    rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert_rejected(rayservice, "spec.rayClusterConfig.headGroupSpec.rayStartParams.num-cpus", "is not of type 'string'")


def test_a_wrong_type_is_named(rayservice):
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "six"
    assert_rejected(rayservice, f"{WORKER0}.maxReplicas", "is not of type 'integer'")


def test_int32_fields_are_range_checked(rayservice):
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 2**31
    assert_rejected(rayservice, f"{WORKER0}.maxReplicas", "is not a 'int32'")


def test_enums_are_checked(rayservice):
    rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["upscalingMode"] = "Fast"
    assert_rejected(rayservice, "spec.rayClusterConfig.autoscalerOptions.upscalingMode", "is not one of")


def test_int_or_string_accepts_both_and_nothing_else(rayservice):
    probe = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["httpGet"]["port"] = "dashboard-agent"
    assert problems(rayservice) == []
    probe["httpGet"]["port"] = 52.365
    assert_rejected(rayservice, "spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].livenessProbe.httpGet.port",
                    "is not of type integer or string")


def test_duplicate_keys_of_a_map_list_are_rejected(rayservice):
    ports = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    ports.append({"name": "serve-again", "containerPort": 8000})
    assert_rejected(rayservice, f"spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].ports[{len(ports) - 1}]", "duplicate entry")


def test_serve_config_v2_must_be_a_string_not_a_mapping(rayservice):
    rayservice["spec"]["serveConfigV2"] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert_rejected(rayservice, "spec.serveConfigV2", "is not of type 'string'")
    assert_rejected(rayservice, "spec.serveConfigV2", "must be a string (the Serve config as a YAML block `|`), got a mapping")


def test_strict_schema_closes_described_objects_only():
    schema = crd.strict({
        "type": "object",
        "properties": {
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "open": {"type": "object", "properties": {"a": {"type": "string"}}, "x-kubernetes-preserve-unknown-fields": True},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "port": {"x-kubernetes-int-or-string": True},
        },
    })
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors({"open": {"b": 1}, "map": {"any": "x"}, "port": 80}))
    assert not list(validator.iter_errors({"port": "http"}))
    assert [list(e.path) for e in validator.iter_errors({"closed": {"b": 1}})] == [["closed"]]
    assert list(validator.iter_errors({"port": 1.5}))


# --- CEL rules (x-kubernetes-validations) -----------------------------------------------------

# Every rule of the three CRDs, with a value it accepts and one it rejects
# (`oldSelf` for transition rules). A new rule in a CRD fails the test below
# until it is added here: no rule goes unexercised.
CEL_CASES = {
    "self == oldSelf": ({"self": "redis", "oldSelf": "redis"}, {"self": "redis", "oldSelf": "rocksdb"}),
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']": (
        {"self": "ray.io/kuberay-operator"}, {"self": "someone-else"}),
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))": (
        {"self": {"jobStatus": "SUCCEEDED"}}, {"self": {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Failed"}}),
    "has(self.jobStatus) || has(self.jobDeploymentStatus)": ({"self": {"jobStatus": "FAILED"}}, {"self": {}}),
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))": (
        {"self": {"deletionRules": []}}, {"self": {"onSuccess": {}, "deletionRules": []}}),
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))": (
        {"self": {"onSuccess": {}, "onFailure": {}}}, {"self": {"onSuccess": {}}}),
}


def test_every_cel_rule_in_the_crds_is_evaluated_by_the_library_both_ways():
    rules = {rule for entry in crd.load().values() for rule in cel_rules.rules_in(entry.schema)}
    assert rules == set(CEL_CASES)
    for rule, (accepted, rejected) in CEL_CASES.items():
        assert cel_rules.compiled(rule).execute(accepted) is True, rule
        assert cel_rules.compiled(rule).execute(rejected) is False, rule


def test_a_cel_rule_rejects_a_manifest(rayservice):
    rayservice["spec"]["managedBy"] = "someone-else"
    assert_rejected(rayservice, "spec.managedBy", "the managedBy field value must be either 'ray.io/kuberay-operator'")


def test_transition_rules_run_on_updates_and_are_counted_as_skipped_on_creates(rayservice):
    rayservice["spec"]["managedBy"] = "ray.io/kuberay-operator"
    create = validate.check_object(rayservice, K8S)
    assert (create.problems, create.cel_evaluated, create.cel_skipped_transition) == ([], 1, 1)
    old = copy.deepcopy(rayservice)
    old["spec"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    assert_rejected(rayservice, "spec.managedBy", "the managedBy field is immutable", old=old)
    update = validate.check_object(rayservice, K8S, old=copy.deepcopy(rayservice))
    assert (update.problems, update.cel_evaluated, update.cel_skipped_transition) == ([], 2, 0)


def test_the_validate_command_checks_an_update_against_the_old_manifest(rayservice, tmp_path, capsys):
    old, new = copy.deepcopy(rayservice), rayservice
    old["spec"]["managedBy"], new["spec"]["managedBy"] = "ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(new))
    assert validate.main([str(tmp_path / "new.yaml")]) == 0  # as a create: the transition rule does not apply
    assert "1 evaluated, 1 transition rules skipped" in capsys.readouterr().out
    assert validate.main(["--old", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")]) == 1
    assert "spec.managedBy: the managedBy field is immutable [cel]" in capsys.readouterr().err


# --- KubeRay operator checks (accepted by the API server, refused by the operator) ------------


def test_worker_group_min_replicas_above_max_is_rejected(rayservice):
    """The CRD has no rule for it (no CEL, no schema): KubeRay's operator checks it."""
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
    group["minReplicas"], group["maxReplicas"] = 5, 2
    assert_rejected(rayservice, "spec.rayClusterConfig.workerGroupSpecs[1].minReplicas",
                    "worker group gpu has minReplicas 5 greater than maxReplicas 2")


def test_an_unknown_upgrade_strategy_is_rejected(rayservice):
    """The RayService CRD types upgradeStrategy.type as any string."""
    rayservice["spec"]["upgradeStrategy"]["type"] = "BlueGreen"
    assert_rejected(rayservice, "spec.upgradeStrategy.type", "'BlueGreen' is invalid, valid options are NewCluster")


def test_a_rayservice_name_is_at_most_47_characters(rayservice):
    rayservice["metadata"]["name"] = "a" * 47
    assert problems(rayservice) == []
    rayservice["metadata"]["name"] = "a" * 50
    assert_rejected(rayservice, "metadata.name", "RayService name should be no more than 47 characters, got 50")


def test_worker_group_names_are_unique(rayservice):
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    groups[1]["groupName"] = groups[0]["groupName"]
    assert_rejected(rayservice, "spec.rayClusterConfig.workerGroupSpecs[1].groupName", "worker group names must be unique")


# --- serveConfigV2: Ray's schema, the keys it ignores, autoscaling_config, app args -----------


def _edit_serve_config(rayservice: dict, edit) -> dict:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    edit(config)
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
    return rayservice


SERVE = "spec.serveConfigV2 -> applications[0]"


def test_an_unknown_key_inside_serve_config_v2_is_rejected(rayservice):
    """Ray's ServeDeploySchema would silently drop the misspelt key."""
    def edit(config):
        deployment = config["applications"][0]["deployments"][0]
        deployment["max_ongoing_request"] = deployment.pop("max_ongoing_requests")

    assert_rejected(_edit_serve_config(rayservice, edit), f"{SERVE}.deployments[0].max_ongoing_request", "unknown key")


def test_an_unknown_key_inside_autoscaling_config_is_rejected(rayservice):
    def edit(config):
        config["applications"][0]["deployments"][0]["autoscaling_config"]["max_replica"] = 3

    assert_rejected(_edit_serve_config(rayservice, edit), f"{SERVE}.deployments[0].autoscaling_config.max_replica", "unknown key")


def test_a_bad_autoscaling_config_value_is_rejected(rayservice):
    def edit(config):
        config["applications"][0]["deployments"][0]["autoscaling_config"]["target_ongoing_requests"] = -1

    assert_rejected(_edit_serve_config(rayservice, edit),
                    f"{SERVE}.deployments[0].autoscaling_config.target_ongoing_requests", "greater than 0")


def test_serve_autoscaling_min_replicas_above_max_is_rejected(rayservice):
    """Ray's schema takes autoscaling_config as a dict; AutoscalingConfig's own validator catches it."""
    def edit(config):
        config["applications"][0]["deployments"][0]["autoscaling_config"].update(min_replicas=10, initial_replicas=10)

    assert_rejected(_edit_serve_config(rayservice, edit), f"{SERVE}.deployments[0].autoscaling_config",
                    "max_replicas (8) must be greater than or equal to min_replicas (10)")


def test_serve_schema_errors_are_named(rayservice):
    def edit(config):
        config["applications"][0]["deployments"][0]["max_ongoing_requests"] = "many"

    assert_rejected(_edit_serve_config(rayservice, edit), f"{SERVE}.deployments[0].max_ongoing_requests", "valid integer")


def test_the_apps_own_arg_validation_runs_on_serve_config_v2(rayservice):
    def edit(config):
        config["applications"][0]["args"]["graph"]["nodes"]["ranker"]["config"]["timout_s"] = 1

    assert_rejected(_edit_serve_config(rayservice, edit), f"{SERVE}.args.graph.nodes.ranker.triton_model.config.timout_s", "Extra inputs are not permitted")


def test_serve_config_v2_must_be_yaml(rayservice):
    rayservice["spec"]["serveConfigV2"] = "applications: [unclosed"
    assert_rejected(rayservice, "spec.serveConfigV2", "not valid YAML")


# --- core objects: the Kubernetes API schemas, strict -----------------------------------------


def test_a_deployment_with_a_typo_is_rejected(objects):
    deployment = core_object(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    assert_rejected(deployment, "spec.template.spec.containers[0].imagePullPolicyy", "unknown field")


def test_an_hpa_with_a_wrong_type_is_rejected(objects):
    hpa = core_object(objects, "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplicas"] = "four"
    assert_rejected(hpa, "spec.maxReplicas", "is not of type 'integer'")


def test_an_hpa_with_min_above_max_is_rejected(objects):
    hpa = core_object(objects, "HorizontalPodAutoscaler")
    hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"] = 5, 2
    assert_rejected(hpa, "spec.minReplicas", "greater than spec.maxReplicas 2")


def test_a_service_port_must_be_a_number(objects):
    service = core_object(objects, "Service")
    service["spec"]["ports"][0]["port"] = "http"
    assert_rejected(service, "spec.ports[0].port", "is not of type 'integer'")


def test_an_ingress_missing_a_required_field_is_rejected(objects):
    ingress = core_object(objects, "Ingress")
    del ingress["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    assert_rejected(ingress, "spec.rules[0].http.paths[0].pathType", "required field is missing")


def test_a_deployment_whose_selector_misses_its_pods_is_rejected(objects):
    deployment = core_object(objects, "Deployment")
    deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "other"
    assert_rejected(deployment, "spec.template.metadata.labels", "`selector` does not match template `labels`")


def test_an_unknown_kind_is_reported():
    assert_rejected({"apiVersion": "v1", "kind": "Pizza", "metadata": {"name": "x"}}, "kind", "no schema")


def test_the_validate_command_exits_nonzero_naming_the_field(objects, tmp_path, capsys):
    hpa = core_object(objects, "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplicas"] = "four"
    broken = tmp_path / "hpa.yaml"
    broken.write_text(yaml.safe_dump(hpa))
    assert validate.main([str(broken)]) == 1
    assert "HorizontalPodAutoscaler/triton: spec.maxReplicas: 'four' is not of type 'integer'" in capsys.readouterr().err


# --- the sources: typed spec, consistency between the two files, Feast on Redis ---------------


def _spec_data() -> dict:
    return yaml.safe_load(render.SPEC_FILE.read_text())


def test_the_cluster_spec_is_typed_and_strict():
    data = _spec_data()
    data["rayservice"]["worker_groups"][0]["max_replica"] = 3
    with pytest.raises(ValidationError, match="rayservice.worker_groups.0.max_replica"):
        ClusterSpec.model_validate(data)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["rayservice"].update(name="a" * 48), "at most 47 characters"),
        (lambda d: d["triton"].update(image="nvcr.io/nvidia/tritonserver:latest"), "needs a pinned tag or digest"),
        (lambda d: d["rayservice"]["worker_groups"][1].update(min_replicas=5), "need min_replicas <= replicas <= max_replicas"),
        (lambda d: d["secrets"]["api_keys"].update(mount_path="api-keys"), "secrets.api_keys.mount_path"),
        (lambda d: d["secrets"]["api_keys"].update(mount_path="/var/run/secrets/../etc"), "must not contain . or .."),
        (lambda d: d["secrets"]["api_keys"].update(mount_path="/var/run/secrets/kubernetes.io/serviceaccount"),
         "service-account credentials"),
        (lambda d: d["secrets"].pop("api_keys"), "secrets.api_keys"),
        (lambda d: d["mlserver"].update(image="seldonio/mlserver"), "needs a pinned tag or digest"),
        (lambda d: d["mlserver"].update(metrics_port=8081), "http_port, grpc_port and metrics_port must differ"),
        (lambda d: d["mlserver"].update(models=[]), "mlserver.models"),
        (lambda d: d["mlserver"]["autoscaling"].update(cpu_utilization_target=0), "mlserver.autoscaling.cpu_utilization_target"),
        (lambda d: d["mlserver"]["autoscaling"].update(min_replicas=5), "min_replicas 5 > max_replicas 4"),
    ],
)
def test_the_cluster_spec_refuses_what_would_not_run(edit, message):
    data = _spec_data()
    edit(data)
    with pytest.raises(ValidationError, match=message):
        ClusterSpec.model_validate(data)


def _serve_text(edit) -> str:
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "cluster.yaml").read_text())
    edit(config)
    return yaml.safe_dump(config, sort_keys=False)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["applications"][0]["args"]["graph"]["nodes"]["ranker"]["config"].update(url="triton.default.svc:8001"),
         "applications[0].args.graph.nodes.ranker.config.url: 'triton.default.svc:8001', but the Triton Service is 'triton.serve-graphs.svc:8001'"),
        (lambda c: c["applications"][1]["args"]["model"].update(registry_uri="sqlite:///.local/mlflow/mlflow.db"),
         "applications[1].args.model.registry_uri"),
        (lambda c: c["applications"][0]["args"]["graph"]["nodes"]["explain"]["config"].update(model="other"), "the vLLM server serves 'smollm2'"),
        (lambda c: c["http_options"].update(host="127.0.0.1"), "Serve must listen on 0.0.0.0"),
        (lambda c: c["grpc_options"].update(port=9100), "grpc_options.port: 9100, but the serve Service targets 9000"),
        (lambda c: c["applications"][1]["deployments"][0]["autoscaling_config"].update(max_replicas=9),
         "Serve may scale GPU engines to 9 L4 GPUs, but the worker groups declaring them (accelerator_type) have at most 4"),
        (lambda c: c["applications"][1]["args"]["model"].update(accelerator_type="A100"),
         "Serve may scale GPU engines to 4 A100 GPUs, but the worker groups declaring them (accelerator_type) have at most 0"),
        # API keys: on for every app, each a file of the Secret the worker pods mount.
        (lambda c: c["applications"][0]["args"]["http"]["api_keys"][0].update(file="/etc/serve-graphs/primary"),
         "applications[0].args.http.api_keys[0].file: '/etc/serve-graphs/primary' is not under the mounted Secret "
         "'serve-graphs-api-keys': the worker pods have its keys as /var/run/secrets/serve-graphs/api-keys/<key>"),
        (lambda c: c["applications"][1]["args"]["http"]["api_keys"][1].update(file="/var/run/secrets/serve-graphs/api-keys/old/next"),
         "applications[1].args.http.api_keys[1].file: '/var/run/secrets/serve-graphs/api-keys/old/next' is not under"),
        (lambda c: c["applications"][1]["args"]["http"]["api_keys"][0].update(file="/var/run/secrets/serve-graphs/api-keys/../primary"),
         "applications[1].args.http.api_keys[0].file: '/var/run/secrets/serve-graphs/api-keys/../primary' is not under"),
        (lambda c: c["applications"][0]["args"]["http"]["api_keys"][1].update(file="/var/run/secrets/serve-graphs/api-keys/..data"),
         "applications[0].args.http.api_keys[1].file: '/var/run/secrets/serve-graphs/api-keys/..data' is not under"),
        (lambda c: c["applications"][0]["args"]["http"]["api_keys"].__setitem__(0, {"name": "primary", "env": "SG_KEY_PRIMARY"}),
         "applications[0].args.http.api_keys[0].env: 'SG_KEY_PRIMARY', but on the cluster keys are files of the mounted Secret"),
        (lambda c: c["applications"][1]["args"].pop("http"),
         "applications[1].args.http.api_keys: none, so every route of application 'chat' would be open"),
        (lambda c: c["applications"][0]["args"]["http"].update(api_keys=[]),
         "applications[0].args.http.api_keys: none, so every route of application 'recommend' would be open"),
        (lambda c: c["applications"][0]["args"]["graph"]["nodes"]["explain"].update(config={
            **{k: v for k, v in c["applications"][0]["args"]["graph"]["nodes"]["explain"]["config"].items() if k != "api_key_env"},
            "url": "http://serve-graphs-serve.serve-graphs.svc:8000/v1"}),
         "applications[0].args.graph.nodes.explain.config.api_key_env: unset, but 'http://serve-graphs-serve.serve-graphs.svc:8000/v1' "
         "is the chat app, which requires an API key"),
        # The ensemble app (appended: the indices above stay): each model node calls the server that serves it.
        (lambda c: c["applications"][2]["args"]["graph"]["nodes"]["sklearn"]["config"].update(url="triton.serve-graphs.svc:8001"),
         "applications[2].args.graph.nodes.sklearn.config.url: 'triton.serve-graphs.svc:8001', but the MLServer Service is "
         "'mlserver.serve-graphs.svc:8081'"),
        (lambda c: c["applications"][2]["args"]["graph"]["nodes"]["sklearn"]["config"].update(url="127.0.0.1:8111"),
         "but the MLServer Service is 'mlserver.serve-graphs.svc:8081'"),
        (lambda c: c["applications"][2]["args"]["graph"]["nodes"]["sklearn"]["config"].update(protocol="http"),
         "applications[2].args.graph.nodes.sklearn.config.url: 'mlserver.serve-graphs.svc:8081', but the MLServer Service is "
         "'mlserver.serve-graphs.svc:8080'"),
        (lambda c: c["applications"][2]["args"]["graph"]["nodes"]["sklearn"]["config"].update(model="ranker_xgboost"),
         "applications[2].args.graph.nodes.sklearn.config.model: 'ranker_xgboost', but MLServer serves only ['ranker_sklearn']"),
        (lambda c: c["applications"][2]["args"]["graph"]["nodes"]["sklearn"]["config"].update(server="triton"),
         "applications[2].args.graph.nodes.sklearn.config.url: 'mlserver.serve-graphs.svc:8081', but the Triton Service is "
         "'triton.serve-graphs.svc:8001'"),
        (lambda c: c["applications"][2]["args"]["graph"]["nodes"]["onnx"]["config"].update(url="mlserver.serve-graphs.svc:8081"),
         "applications[2].args.graph.nodes.onnx.config.url: 'mlserver.serve-graphs.svc:8081', but the Triton Service is"),
        (lambda c: c["applications"][2]["args"]["graph"]["nodes"]["torch"]["config"].update(registry_uri="sqlite:///.local/mlflow/mlflow.db"),
         "applications[2].args.graph.nodes.torch.config.registry_uri: 'sqlite:///.local/mlflow/mlflow.db', but the cluster's MLflow"),
        (lambda c: c["applications"][2]["args"].pop("http"),
         "applications[2].args.http.api_keys: none, so every route of application 'ensemble' would be open"),
        # Payload logs: into the stack's Redis, its URL from the Secret the Ray pods have.
        (lambda c: c["applications"][0]["args"]["payload_log"].update(sink={"kind": "file", "directory": "/tmp/payloads"}),
         "applications[0].args.payload_log.sink: a file sink writes inside the pod and is lost with it"),
        (lambda c: c["applications"][0]["args"]["payload_log"]["sink"].update(url_env="REDIS_URL"),
         "applications[0].args.payload_log.sink: url_env: 'REDIS_URL', but the Ray pods have the Redis URL as PAYLOAD_LOG_REDIS_URL"),
    ],
)
def test_render_refuses_a_serve_config_that_disagrees_with_the_cluster(edit, message):
    with pytest.raises(render.RenderError) as raised:
        render.manifests(SPEC, _serve_text(edit))
    assert message in str(raised.value)


def test_the_key_files_follow_the_mount_path_of_the_cluster_spec():
    """One source: moving the mount in kuberay/cluster.yaml without the Serve config fails, naming each file."""
    data = _spec_data()
    data["secrets"]["api_keys"]["mount_path"] = "/etc/serve-graphs/api-keys"
    with pytest.raises(render.RenderError) as raised:
        render.manifests(ClusterSpec.model_validate(data), _serve_text(lambda c: None))
    lines = [line.split(":")[0] for line in str(raised.value).splitlines()[1:]]
    assert lines == [f"applications[{a}].args.http.api_keys[{k}].file" for a in (0, 1, 2) for k in (0, 1)]


def test_per_app_key_names_in_the_same_secret_render():
    def edit(config):
        for key in config["applications"][1]["args"]["http"]["api_keys"]:
            key["file"] = f"/var/run/secrets/serve-graphs/api-keys/chat-{key['name']}"

    assert set(render.manifests(SPEC, _serve_text(edit))) == {
        "rayservice.yaml", "triton.yaml", "mlserver.yaml", "vllm.yaml", "ingress.yaml", "network-policies.yaml"}


def test_feast_cluster_repo_reads_redis_settings_from_the_environment(monkeypatch):
    from feast.repo_config import load_repo_config

    monkeypatch.setenv("FEAST_REDIS_CONNECTION", "redis.serve-graphs.svc:6379,password=from-a-secret")
    monkeypatch.setenv("FEAST_REGISTRY_PATH", SPEC.feast_registry_path)
    repo = PROJECT_ROOT / "configs" / "feast" / "cluster"
    config = load_repo_config(repo, repo / "feature_store.yaml")
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "redis.serve-graphs.svc:6379,password=from-a-secret"
    assert config.registry.path == SPEC.feast_registry_path
    assert "password" not in (repo / "feature_store.yaml").read_text().split("online_store:")[1]


# --- the init containers' exporter, on a real (SQLite) MLflow registry ------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("kuberay", artifact_location=(root / "artifacts").as_uri())
    for name, files, tags in [
        ("ranker", {"model.onnx": b"onnx bytes"}, {"input_features": '["u__age", "i__price", "i__popularity"]'}),
        ("tiny-llm", {"config.json": b"{}", "model.safetensors": b"weights"}, {}),
        ("ranker_sklearn", {"model.pkl": b"pickle bytes", "MLmodel": b"flavors: {sklearn: {}}"}, {}),
    ]:
        folder = root / name
        folder.mkdir()
        for file, content in files.items():
            (folder / file).write_bytes(content)
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(folder), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_registered_model(name)
        version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        client.set_registered_model_alias(name, "champion", version.version)
    return uri


def test_triton_init_container_exports_a_gpu_repository(registry, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from kuberay import fetch

    assert fetch.main(["--registry-uri", registry, "triton", "--model", "ranker", "--repository", str(tmp_path)]) == 0
    config = text_format.Parse((tmp_path / "ranker" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(config.input[0].dims) == [3]
    assert (tmp_path / "ranker" / "1" / "model.onnx").read_bytes() == b"onnx bytes"


def test_llm_init_container_copies_the_aliased_folder(registry, tmp_path):
    from kuberay import fetch

    dest = tmp_path / "tiny-llm"
    assert fetch.main(["--registry-uri", registry, "llm", "--model", "tiny-llm", "--dest", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]


def test_mlserver_init_container_exports_an_mlserver_repository(registry, tmp_path, capsys):
    """The rendered init container's own arguments: one folder per version,
    the model-settings.json MLServer's scikit-learn runtime reads."""
    import json

    from kuberay import fetch, mlserver

    args = mlserver.deployment(SPEC)["spec"]["template"]["spec"]["initContainers"][0]["command"][3:]
    args[args.index("--repository") + 1] = str(tmp_path)
    assert fetch.main(["--registry-uri", registry, *args]) == 0
    assert "ranker_sklearn: versions 1 -> " in capsys.readouterr().out
    version = tmp_path / "ranker_sklearn" / "1"
    assert json.loads((version / "model-settings.json").read_text()) == {
        "name": "ranker_sklearn", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.pkl", "version": "1"},
    }
    assert (version / "model.pkl").read_bytes() == b"pickle bytes"


def test_mlserver_init_container_fails_on_a_model_without_versions(registry, tmp_path):
    """Else MLServer would start ready and answer every call "model not found"."""
    from kuberay import fetch

    with pytest.raises(ValueError, match="ranker_missing: no registered version"):
        fetch.main(["--registry-uri", registry, "mlserver", "--model", "ranker_missing", "--repository", str(tmp_path)])


def test_the_cluster_ensemble_is_the_local_one_with_cluster_endpoints():
    """Same nodes, flow and output as configs/local.yaml's ensemble; only where
    things are differs (Services, the cluster's MLflow, Feast on Redis), and the
    torch node runs in its own deployment on a CPU of the CPU worker group."""
    def ensemble(path: str) -> dict:
        config = yaml.safe_load((PROJECT_ROOT / "configs" / path).read_text())
        return next(a for a in config["applications"] if a["name"] == "ensemble")

    local, cluster = ensemble("local.yaml"), ensemble("cluster.yaml")
    assert cluster["route_prefix"] == local["route_prefix"] and cluster["import_path"] == local["import_path"]
    where = {"url", "registry_uri", "repo_path"}
    local_graph, cluster_graph = local["args"]["graph"], cluster["args"]["graph"]
    assert {k: v for k, v in cluster_graph.items() if k != "nodes"} == {k: v for k, v in local_graph.items() if k != "nodes"}
    assert list(cluster_graph["nodes"]) == list(local_graph["nodes"])
    for name, node in cluster_graph["nodes"].items():
        theirs = local_graph["nodes"][name]
        assert (node["kind"], node["inputs"], node.get("dependency")) == (theirs["kind"], theirs["inputs"], theirs.get("dependency")), name
        strip = lambda config: {k: v for k, v in config.items() if k not in where}  # noqa: E731
        assert strip(node["config"]) == strip(theirs["config"]), name
    torch = cluster_graph["nodes"]["torch"]
    assert torch["placement"] == "deployment" and torch["ray_actor_options"] == {"num_cpus": 1}
    assert torch["config"].get("device", "cpu") == "cpu"
    assert cluster_graph["nodes"]["sklearn"]["config"]["url"] == f"{SPEC.service_host(SPEC.mlserver.name)}:{SPEC.mlserver.grpc_port}"
