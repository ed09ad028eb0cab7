"""Least privilege in every rendered manifest, and the API-key Secret where
the replicas read it.

Every container (init containers and the KubeRay autoscaler sidecar, whose
security context and mounts are `autoscalerOptions`, included) is checked on
its own security context, not on what the pod would let it inherit: KubeRay
copies the Ray container's context into the init container it injects into
workers (`wait-gcs-ready`) and gives the sidecar exactly `autoscalerOptions`.
"""
import copy
from pathlib import PurePosixPath

import pytest
import yaml

from kuberay import pods, render
from kuberay.rayservice import API_KEYS_VOLUME, AUTOSCALER_API_VOLUME
from kuberay.spec import load_spec

SPEC = load_spec(render.SPEC_FILE)

# Documented exceptions (kuberay/README.md, "Pod security"): the Ray images
# keep Python in /home/ray/anaconda3, next to the caches Ray, vLLM and the
# GPU compilers write under $HOME, so their root filesystem stays writable.
WRITABLE_ROOT = {("ray-head", "ray-head"), ("ray-cpu", "ray-worker"), ("ray-gpu", "ray-worker")}


@pytest.fixture(scope="module")
def objects() -> dict[str, list[dict]]:
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in render.render().items()}


def pods_of(objects) -> list[tuple[str, dict, list[dict]]]:
    """(pod name, pod spec, every container of the pod, the autoscaler sidecar included)."""
    found = []
    cluster = objects["rayservice.yaml"][0]["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    sidecar = {"name": "autoscaler", **cluster["autoscalerOptions"]}  # KubeRay appends it to the head pod
    found.append(("ray-head", head, head["containers"] + [sidecar]))
    for group in cluster["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        found.append((f"ray-{group['groupName']}", spec, spec["containers"]))
    for docs in objects.values():
        for doc in docs:
            if doc["kind"] == "Deployment":
                spec = doc["spec"]["template"]["spec"]
                found.append((doc["metadata"]["name"], spec, spec.get("initContainers", []) + spec["containers"]))
    return found


def test_the_pods_are_the_ones_expected(objects):
    assert [(name, [c["name"] for c in containers]) for name, _, containers in pods_of(objects)] == [
        ("ray-head", ["ray-head", "autoscaler"]),
        ("ray-cpu", ["ray-worker"]),
        ("ray-gpu", ["ray-worker"]),
        ("triton", ["export-repository", "triton"]),
        ("mlserver", ["export-repository", "mlserver"]),
        ("vllm", ["fetch-model", "vllm"]),
    ]


def test_every_pod_runs_as_non_root_without_host_access_or_an_api_token(objects):
    for name, pod, _ in pods_of(objects):
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] >= 1, name
        assert security["runAsGroup"] >= 1 and security["fsGroup"] >= 1, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # The head too: its token is a volume only the autoscaler sidecar mounts (below).
        assert pod["automountServiceAccountToken"] is False, name
        assert not any(pod.get(field) for field in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace")), name
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], name


def test_every_container_of_every_manifest_has_least_privilege(objects):
    checked = 0
    for name, _, containers in pods_of(objects):
        for container in containers:
            where = (name, container["name"])
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["runAsUser"] == SPEC.security.run_as_user >= 1, where
            assert security["runAsGroup"] == SPEC.security.run_as_group >= 1, where
            assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert security["readOnlyRootFilesystem"] is (where not in WRITABLE_ROOT), where
            checked += 1
    assert checked == 10


def test_read_only_containers_get_a_volume_for_each_place_they_write(objects):
    """/tmp everywhere with a read-only root (the autoscaler's /tmp/ray is KubeRay's `ray-logs`)."""
    for name, pod, containers in pods_of(objects):
        for container in containers:
            if container["securityContext"]["readOnlyRootFilesystem"] and container["name"] != "autoscaler":
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, (name, container["name"])


def test_every_volume_mount_names_a_volume_of_its_pod(objects):
    """The API server checks it for a Deployment; for a RayService only when KubeRay creates the pod."""
    for name, pod, containers in pods_of(objects):
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in containers:
            for volume_mount in container.get("volumeMounts", []):
                assert volume_mount["name"] in volumes, (name, container["name"], volume_mount)


def test_only_the_autoscaler_sidecar_holds_the_api_token(objects):
    """Ray's KubeRay autoscaler reads token and ca.crt from the standard
    directory; the Ray container (dashboard, job API) gets neither."""
    holders = []
    for name, pod, containers in pods_of(objects):
        token_volumes = {v["name"] for v in pod.get("volumes", []) if "projected" in v and any(
            "serviceAccountToken" in source for source in v["projected"]["sources"])}
        for container in containers:
            for volume_mount in container.get("volumeMounts", []):
                if volume_mount["name"] in token_volumes or volume_mount["mountPath"].startswith("/var/run/secrets/kubernetes.io"):
                    holders.append((name, container["name"], volume_mount["mountPath"], volume_mount.get("readOnly")))
    assert holders == [("ray-head", "autoscaler", pods.SERVICE_ACCOUNT_DIR, True)]
    from ray.autoscaler._private.kuberay import node_provider

    assert PurePosixPath(node_provider.IN_CLUSTER_TOKEN_PATH) == PurePosixPath(pods.SERVICE_ACCOUNT_DIR) / "token"
    assert PurePosixPath(node_provider.IN_CLUSTER_CA_CERT_PATH) == PurePosixPath(pods.SERVICE_ACCOUNT_DIR) / "ca.crt"
    head = objects["rayservice.yaml"][0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (volume,) = [v for v in head["volumes"] if v["name"] == AUTOSCALER_API_VOLUME]
    paths = sorted(item["path"] for s in volume["projected"]["sources"] for item in (s.get("configMap") or s.get("downwardAPI") or {}).get("items", []))
    assert paths == ["ca.crt", "namespace"] and volume["projected"]["defaultMode"] == 0o440


def test_the_api_key_secret_is_mounted_read_only_in_the_worker_pods_only(objects):
    cluster = objects["rayservice.yaml"][0]["spec"]["rayClusterConfig"]
    api_keys = SPEC.secrets.api_keys
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == API_KEYS_VOLUME]
        # Named by kuberay/cluster.yaml; no `items` (a key missing from the Secret is a missing
        # file, which the optional `next` slot tolerates); not optional (no Secret, no pod).
        assert volume["secret"] == {"secretName": api_keys.name, "defaultMode": 0o440}
        (container,) = pod["containers"]
        assert pods.mount(API_KEYS_VOLUME, api_keys.mount_path, read_only=True) in container["volumeMounts"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert API_KEYS_VOLUME not in {v["name"] for v in head["volumes"]}  # num-cpus 0: no replica reads keys there
    for docs in (objects["triton.yaml"], objects["vllm.yaml"]):
        assert "serve-graphs-api-keys" not in yaml.safe_dump(docs)


def test_the_serve_config_reads_its_keys_from_that_mount(objects):
    """Both apps, two named keys each, `next` optional, all files of the mounted Secret."""
    config = yaml.safe_load(objects["rayservice.yaml"][0]["spec"]["serveConfigV2"])
    mount = SPEC.secrets.api_keys.mount_path
    for app in config["applications"]:
        assert app["args"]["http"]["api_keys"] == [
            {"name": "primary", "file": f"{mount}/primary"},
            {"name": "next", "file": f"{mount}/next", "optional": True},
        ], app["name"]
        assert "SG_API_KEYS_REVISION" in app["runtime_env"]["env_vars"]  # the rotation's roll lever


def test_a_mount_without_its_volume_is_caught(objects):
    broken = copy.deepcopy(objects)
    pod = broken["rayservice.yaml"][0]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    pod["volumes"] = []
    with pytest.raises(AssertionError):
        test_every_volume_mount_names_a_volume_of_its_pod(broken)


def test_a_container_that_could_escalate_is_caught(objects):
    broken = copy.deepcopy(objects)
    broken["vllm.yaml"][0]["spec"]["template"]["spec"]["initContainers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(AssertionError, match="fetch-model"):
        test_every_container_of_every_manifest_has_least_privilege(broken)
    broken = copy.deepcopy(objects)
    del broken["rayservice.yaml"][0]["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]["runAsUser"]
    with pytest.raises(KeyError):
        test_every_container_of_every_manifest_has_least_privilege(broken)
