"""Kubernetes manifests for the serve graphs, rendered from the Serve config.

`python -m kuberay.render` builds the RayService (its `serveConfigV2` is
`configs/cluster.yaml`, never a hand-kept copy) and the services around it
from the typed cluster spec `kuberay/cluster.yaml`; `python -m
kuberay.validate FILES...` checks manifests offline against the KubeRay CRDs
(schema and CEL rules), the Kubernetes API schemas, KubeRay's own operator
checks and Ray Serve's schema. See kuberay/README.md.
"""
