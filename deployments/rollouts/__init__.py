"""Progressive rollouts of a split's challenger variant (docs/operations.md#rollouts):
config (config.py), the decisions (policy.py), their record in the MLflow
registry (store.py), the live loop (controller.py, serving.py) and the
ingress replica's side (feed.py)."""
from deployments.rollouts.config import RolloutConfig, RolloutPlan

__all__ = ["RolloutConfig", "RolloutPlan"]
