"""The typed cluster spec (`kuberay/cluster.yaml`): the one source for what
runs on Kubernetes around the Serve config.

Images, namespace, the Ray head and worker groups, the Triton, MLServer and
vLLM servers, the Ingress, and which Secrets hold which credentials. Everything
is pydantic with `extra="forbid"`, so a misspelt key fails the render with
its path instead of silently producing a manifest without it. The Serve
applications themselves are not described here: they come from the Serve
config (`configs/cluster.yaml`), which the RayService embeds as is.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.llm_engine import EngineArgs

DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# KubeRay appends a 6-character suffix to name the RayCluster of a RayService,
# and RayCluster names are capped at 53 (63 minus "-serve-svc").
MAX_RAYSERVICE_NAME = 47


def _pinned(image: str) -> str:
    """No tag, or `latest`, would let the same manifest run different code."""
    match = re.search(r":([^/:@]+)$", image)
    if "@sha256:" not in image and (match is None or match.group(1) == "latest"):
        raise ValueError(f"image {image!r} needs a pinned tag or digest")
    return image


Image = Annotated[str, AfterValidator(_pinned)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretRef(Strict):
    """A key of a Kubernetes Secret, read into an environment variable by
    `secretKeyRef`: credentials never appear in a config file or a manifest."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field(min_length=1)
    optional: bool = Field(False, description="Start the pod even when the Secret or key is missing.")


class SecretVolume(Strict):
    """A whole Secret mounted read-only as files, one per key
    (`<mount_path>/<key>`), with the restrictive mode of kuberay/pods.py.

    For credentials a program reads from files: unlike environment
    variables they do not show in `ps e`, `/proc/<pid>/environ` or crash
    dumps, and the kubelet updates the files when the Secret changes."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    mount_path: str = Field(
        pattern=r"^(/[A-Za-z0-9._-]+)+$", description="Absolute directory the Secret's keys appear in, as files."
    )

    @field_validator("mount_path")
    @classmethod
    def _plain(cls, path: str) -> str:
        parts = path.split("/")[1:]
        if any(part in (".", "..") for part in parts):
            raise ValueError(f"mount_path {path!r} must not contain . or ..")
        if path == "/var/run/secrets/kubernetes.io" or path.startswith("/var/run/secrets/kubernetes.io/"):
            raise ValueError(f"mount_path {path!r} is where Kubernetes puts service-account credentials")
        return path


class Secrets(Strict):
    mlflow_username: SecretRef = Field(description="MLFLOW_TRACKING_USERNAME: the registry's basic-auth user.")
    mlflow_password: SecretRef = Field(description="MLFLOW_TRACKING_PASSWORD.")
    hf_token: SecretRef = Field(description="HF_TOKEN, for tokenizers or gated repos an engine may still fetch.")
    feast_redis_connection: SecretRef = Field(
        description="FEAST_REDIS_CONNECTION: Feast's Redis connection string (it carries the password)."
    )
    payload_log_redis_url: SecretRef = Field(
        description="PAYLOAD_LOG_REDIS_URL: redis:// URL (with its password) of the Redis whose streams take the "
        "apps' payload logs; a payload_log sink of kind redis names it as url_env (kuberay/consistency.py)."
    )
    api_keys: SecretVolume = Field(
        description="The apps' API keys, one Secret key per named key, mounted in the Ray worker pods (where the "
        "replicas run); every http.api_keys[].file of the Serve config must be a file of it (kuberay/consistency.py)."
    )
    ray_auth_token: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret with data key auth_token: Ray's token (authOptions mode token). Every Ray pod gets it; "
        "the dashboard, Jobs API, GCS and client port refuse a caller without it.",
    )
    vllm_api_key: SecretRef = Field(
        description="The vLLM server's API key: VLLM_API_KEY of the vLLM pods (vLLM then refuses /v1 without it) "
        "and of the Ray pods, where a remote LLM node sends it (api_key_env: VLLM_API_KEY, checked)."
    )


class ExternalBackend(Strict):
    """A server the cluster uses but this render does not deploy (MLflow, Redis):
    its NetworkPolicy admits only the pods that call it."""

    name: str = Field(pattern=DNS_1035)
    pod_labels: dict[str, str] = Field(min_length=1, description="Labels selecting its pods.")
    ports: list[int] = Field(min_length=1)
    clients: list[Literal["ray", "triton", "mlserver", "vllm"]] = Field(
        default_factory=lambda: ["ray"], description="Whose pods may connect: the Ray pods, and the model servers' "
        "init containers that export from the registry."
    )


class NetworkSpec(Strict):
    """Who may reach what (kuberay/network_policies.py)."""

    ingress_controller_namespace: str = Field(pattern=DNS_1035, description="Where the Ingress controller runs: "
                                              "the only namespace that reaches the serve port.")
    monitoring_namespace: str = Field(pattern=DNS_1035, description="Where Prometheus runs: it reaches the metrics ports.")
    kuberay_operator_namespace: str = Field(pattern=DNS_1035, description="Where the KubeRay operator runs: it reaches "
                                            "the Ray dashboard (serveConfigV2, Serve's status) and the agents' port.")
    external_backends: list[ExternalBackend] = Field(default_factory=list)


class Resources(Strict):
    """Requests equal limits: Guaranteed QoS, so a node's memory is never
    overcommitted under an engine that sizes its KV cache to what it sees."""

    cpu: str = Field(pattern=r"^[0-9]+(\.[0-9]+|m)?$")
    memory: str = Field(pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod.")

    def manifest(self) -> dict:
        amounts: dict[str, object] = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            amounts["nvidia.com/gpu"] = self.gpus
        return {"requests": dict(amounts), "limits": dict(amounts)}


class Toleration(Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: Optional[str] = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class Placement(Strict):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class PodSecurity(Strict):
    """Least privilege for every pod: a non-root user, no privilege
    escalation, no Linux capabilities, the runtime's default seccomp profile."""

    run_as_user: int = Field(1000, ge=1, description="The rayproject/ray, Triton, MLServer and vLLM images all have uid 1000.")
    run_as_group: int = Field(1000, ge=1)
    fs_group: int = Field(1000, ge=1, description="Group owning the emptyDir volumes, so the user can write them.")


class Head(Strict):
    resources: Resources
    placement: Placement = Field(default_factory=Placement)


class WorkerGroup(Strict):
    name: str = Field(pattern=DNS_1035, max_length=40)
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    replicas: int = Field(ge=0, description="Pods at creation; the autoscaler moves it within [min, max].")
    idle_timeout_s: Optional[int] = Field(None, ge=0, description="Per-group override of the autoscaler's.")
    resources: Resources
    accelerator_type: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="GPU type of the nodes (Ray's accelerator_type, e.g. L4). Declared to Ray's autoscaler as the "
        "resource accelerator_type:<type>, which it cannot infer from the pod: without it, replicas that ask "
        "for a GPU type never make the group scale up.",
    )
    placement: Placement = Field(default_factory=Placement)

    @model_validator(mode="after")
    def _bounds(self):
        if self.accelerator_type and not self.resources.gpus:
            raise ValueError("accelerator_type is for a group with gpus")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"need min_replicas <= replicas <= max_replicas, got {self.min_replicas}, {self.replicas}, {self.max_replicas}"
            )
        return self


class Autoscaler(Strict):
    """Ray's in-tree autoscaler (a sidecar of the head pod): adds worker pods
    when Serve's autoscaling asks for replicas that do not fit, removes idle ones."""

    version: Literal["v1", "v2"] = "v2"
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = "Default"
    idle_timeout_s: int = Field(60, ge=0)
    resources: Resources


class RayServiceSpec(Strict):
    name: str = Field(pattern=DNS_1035, max_length=MAX_RAYSERVICE_NAME)
    serve_config: str = Field("configs/cluster.yaml", description="Serve config embedded as serveConfigV2 (project-relative).")
    ray_version: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    upgrade_strategy: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"] = "NewCluster"
    serve_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(9000, ge=1, le=65535, description="Serve's gRPC proxy (the Open Inference Protocol over gRPC).")
    serve_service: str = Field(pattern=DNS_1035, description="Name of the Service in front of the Serve proxies.")
    env: dict[str, str] = Field(default_factory=dict, description="Plain (non-secret) environment of every Ray container.")
    head: Head
    worker_groups: list[WorkerGroup] = Field(min_length=1)
    autoscaler: Autoscaler

    @field_validator("worker_groups")
    @classmethod
    def _unique(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"worker group names must be unique, got {names}")
        return groups


class ReplicaBounds(Strict):
    """What every HorizontalPodAutoscaler of the render says besides its signal."""

    min_replicas: int = Field(ge=1)
    max_replicas: int = Field(ge=1)
    scale_down_stabilization_s: int = Field(300, ge=0)

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class HPA(ReplicaBounds):
    """Triton's: on the time requests wait in its queue."""

    queue_time_target_us: int = Field(
        gt=0,
        description="Target of nv_inference_queue_duration_us per pod, as the metrics adapter serves it: "
        "queue microseconds per request over the last minute (see kuberay/README.md).",
    )


class CPUHPA(ReplicaBounds):
    """On CPU utilisation (metrics-server's, no adapter): for a CPU server
    that answers from one process, where a busy core is the queue."""

    cpu_utilization_target: int = Field(
        ge=1, le=100, description="Average CPU use per pod, in percent of its request (= its limit)."
    )


class TritonSpec(Strict):
    name: str = Field("triton", pattern=DNS_1035)
    image: Image
    model: str = Field("ranker", description="Registered model exported into the repository (every version).")
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    resources: Resources
    placement: Placement = Field(default_factory=Placement)
    autoscaling: HPA


class MLServerSpec(Strict):
    """MLServer (Seldon's Open Inference Protocol server) as a Deployment:
    what `v2_model` nodes with `server: mlserver` call. Its scikit-learn
    runtime runs on CPU: no GPU, no GPU node."""

    name: str = Field("mlserver", pattern=DNS_1035)
    image: Image = Field(description="MLServer with its scikit-learn runtime, at the scikit-learn and numpy the models "
                         "were pickled with (kuberay/README.md, mlserver.yaml).")
    models: list[str] = Field(
        min_length=1, description="Registered models exported into the repository (every version of each); "
        "each is served under its registry name."
    )
    http_port: int = Field(8080, ge=1, le=65535)
    grpc_port: int = Field(8081, ge=1, le=65535)
    metrics_port: int = Field(8082, ge=1, le=65535)
    parallel_workers: int = Field(
        0, ge=0, description="MLSERVER_PARALLEL_WORKERS: inference processes besides the server's; 0 runs the models "
        "in the server process (a pod scales by replicas instead).",
    )
    resources: Resources
    placement: Placement = Field(default_factory=Placement)
    autoscaling: CPUHPA

    @model_validator(mode="after")
    def _distinct(self):
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"http_port, grpc_port and metrics_port must differ, got {ports}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be unique, got {self.models}")
        return self


class VLLMSpec(Strict):
    """vLLM's own OpenAI server as a Deployment: the LLM node's remote mode."""

    name: str = Field("vllm", pattern=DNS_1035)
    image: Image
    model: str = Field(min_length=1, description="Registered MLflow model; also the served model id.")
    alias: str = "champion"
    engine: EngineArgs
    port: int = 8000
    replicas: int = Field(1, ge=1)
    resources: Resources
    placement: Placement = Field(default_factory=Placement)


class IngressSpec(Strict):
    name: str = Field(pattern=DNS_1035)
    class_name: str
    host: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    tls_secret: Optional[str] = Field(None, description="Secret with the certificate; TLS is off when absent.")
    annotations: dict[str, str] = Field(default_factory=dict)


class ClusterSpec(Strict):
    namespace: str = Field(pattern=DNS_1035, max_length=63)
    kubernetes_version: str = Field("1.33", pattern=r"^1\.[0-9]+$", description="Core schemas the manifests are checked against.")
    platform_image: Image = Field(description="This project on Ray (Ray pods, and the registry-export init containers).")
    mlflow_uri: str = Field(pattern=r"^https?://")
    feast_registry_path: str = Field(description="FEAST_REGISTRY_PATH, read by configs/feast/cluster/feature_store.yaml.")
    security: PodSecurity = Field(default_factory=PodSecurity)
    secrets: Secrets
    rayservice: RayServiceSpec
    triton: TritonSpec
    mlserver: MLServerSpec
    vllm: VLLMSpec
    ingress: IngressSpec
    network: NetworkSpec

    def service_host(self, name: str) -> str:
        """The in-cluster DNS name of a Service of this namespace."""
        return f"{name}.{self.namespace}.svc"


def load_spec(path: str | Path) -> ClusterSpec:
    with open(path) as handle:
        return ClusterSpec.model_validate(yaml.safe_load(handle))
