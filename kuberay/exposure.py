"""Checks across a rendered set of objects that nothing is left open: the
render refuses a set that fails them (kuberay/render.py), as it refuses a
Serve config that disagrees with the cluster spec.

- every RayService and RayCluster runs Ray's token auth (`authOptions`
  `mode: token`): without it any pod that reaches the head submits jobs;
- every pod that a Service (or the RayService's serve Service) sends
  traffic to is selected by a NetworkPolicy of its namespace that governs
  its ingress;
- no NetworkPolicy rule admits everyone: a rule without `from`, or a peer
  that is empty (`{}` selects every pod, or every namespace).

Labels are matched as Kubernetes matches them (matchLabels, and
matchExpressions with In, NotIn, Exists, DoesNotExist).
"""
from __future__ import annotations

from typing import Any, Iterator


def _label(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector against a pod's labels; the empty selector selects every pod."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, labels) of the pods an object creates."""
    spec = obj.get("spec") or {}
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
        yield _label(obj), ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    cluster = spec.get("rayClusterConfig") if obj.get("kind") == "RayService" else spec if obj.get("kind") == "RayCluster" else None
    if isinstance(cluster, dict):
        head = (cluster.get("headGroupSpec") or {}).get("template") or {}
        yield f"{_label(obj)} head", (head.get("metadata") or {}).get("labels") or {}
        for group in cluster.get("workerGroupSpecs") or []:
            template = group.get("template") or {}
            yield f"{_label(obj)} worker group {group.get('groupName')}", (template.get("metadata") or {}).get("labels") or {}


def _auth_problems(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "RayService":
        auth, path = (spec.get("rayClusterConfig") or {}).get("authOptions"), "spec.rayClusterConfig.authOptions"
    elif obj.get("kind") == "RayCluster":
        auth, path = spec.get("authOptions"), "spec.authOptions"
    else:
        return []
    if not isinstance(auth, dict) or auth.get("mode") != "token":
        return [f"{_label(obj)}: {path}.mode is {None if not isinstance(auth, dict) else auth.get('mode')!r}, not 'token': "
                "any pod that reaches the head could submit a Ray job and read the pods' secrets"]
    return []


def _open_rules(policy: dict[str, Any]) -> list[str]:
    found = []
    for index, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
        peers = rule.get("from")
        if not peers:
            found.append(f"{_label(policy)}: spec.ingress[{index}] has no `from`: it admits every source")
        for peer_index, peer in enumerate(peers or []):
            if not peer or any(value == {} for value in peer.values()):
                found.append(f"{_label(policy)}: spec.ingress[{index}].from[{peer_index}] is empty: it selects everyone")
    return found


def problems(documents: list[dict[str, Any]]) -> list[str]:
    objects = [d for d in documents if isinstance(d, dict)]
    found: list[str] = []
    for obj in objects:
        found += _auth_problems(obj)
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    for policy in policies:
        found += _open_rules(policy)

    def governed(namespace: Any, labels: dict[str, str]) -> bool:
        return any(
            (p.get("metadata") or {}).get("namespace") == namespace
            and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
            and selects((p.get("spec") or {}).get("podSelector") or {}, labels)
            for p in policies
        )

    templates = [(obj, where, labels) for obj in objects for where, labels in _pod_templates(obj)]
    for service in (o for o in objects if o.get("kind") == "Service"):
        selector = (service.get("spec") or {}).get("selector")
        if not selector:
            continue  # no pods behind it here (an ExternalName, or endpoints kept by hand)
        namespace = (service.get("metadata") or {}).get("namespace")
        backends = [labels for obj, _, labels in templates
                    if (obj.get("metadata") or {}).get("namespace") == namespace and selects({"matchLabels": selector}, labels)]
        for labels in backends or [selector]:
            if not governed(namespace, labels):
                found.append(f"{_label(service)}: its pods ({selector}) are selected by no NetworkPolicy: "
                             "every pod of the cluster reaches them")
                break
    for obj, where, labels in templates:
        if obj.get("kind") in ("RayService", "RayCluster") and not governed((obj.get("metadata") or {}).get("namespace"), labels):
            found.append(f"{where}: its pods ({labels}) are selected by no NetworkPolicy: every pod of the cluster "
                         "reaches the dashboard, the GCS and the client port")
    return found


def admits(policies: list[dict[str, Any]], *, source_namespace: str, source_labels: dict[str, str],
           namespace: str, labels: dict[str, str], port: int) -> bool:
    """Would a connection from a pod (its namespace and labels) to `port` of a
    pod (`namespace`, `labels`) be let in? As Kubernetes decides it: a pod no
    ingress policy selects takes everything; a selected pod takes what any
    rule of any selecting policy allows (a peer's podSelector alone means
    the policy's namespace; a namespaceSelector alone, all pods of those
    namespaces). Namespaces are matched by kubernetes.io/metadata.name only."""
    selecting = [p for p in policies if (p.get("metadata") or {}).get("namespace") == namespace
                 and selects((p.get("spec") or {}).get("podSelector") or {}, labels)]
    if not selecting:
        return True
    source_namespace_labels = {"kubernetes.io/metadata.name": source_namespace}
    for policy in selecting:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            ports = [entry.get("port") for entry in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            for peer in rule.get("from") or [{}]:
                pod_selector, namespace_selector = peer.get("podSelector"), peer.get("namespaceSelector")
                if namespace_selector is None and source_namespace != namespace and peer:
                    continue
                if namespace_selector is not None and not selects(namespace_selector, source_namespace_labels):
                    continue
                if pod_selector is not None and not selects(pod_selector, source_labels):
                    continue
                return True
    return False
