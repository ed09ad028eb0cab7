"""Drift detection on a graph's logged traffic: windows of the features a
model saw (and its scores) against the version's training features
(deployments/monitoring/drift.py), in a deployment of its own, off the
request path."""
