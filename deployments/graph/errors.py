"""Errors of graph execution, in the API's error shape (deployments/errors.py)."""
from __future__ import annotations

from deployments.errors import GraphError


class NodeFailed(GraphError):
    """A hard dependency failed with something that is not already a GraphError
    (a user callable's exception, a model that raised): 500, naming the node."""

    status = 500
    code = "node_failed"

    def __init__(self, node: str, reason: str):
        super().__init__(f"node {node} failed: {reason}", node=node, reason=reason)


class UnresolvedReference(GraphError):
    """A reference (`features.user_features__age[0]`) found nothing at run time:
    a config error that validation could not see (500: not the caller's fault)."""

    status = 500
    code = "graph_reference_error"

    def __init__(self, where: str, reference: str, reason: str):
        super().__init__(f"{where}: {reference!r} {reason}", where=where, reference=reference)
