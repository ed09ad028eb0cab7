"""A rollout's record in the MLflow registry, where its versions and aliases
already are: the state is a tag of the challenger's version
(`rollout.<graph>.<split>`, JSON: status, step, weight, history), visible in
MLflow's UI next to the version, and the promotion is the alias move itself.
Every replica and the controller read the same record, so a restarted one
routes as the others do."""
from __future__ import annotations

from typing import Optional

from deployments.registry import resolve_registry_uri
from deployments.rollouts.config import RolloutPlan
from deployments.rollouts.policy import RolloutState


class RegistryStore:
    def __init__(self, plan: RolloutPlan):
        from mlflow import MlflowClient

        uri = resolve_registry_uri(plan.registry_uri)
        self.plan = plan
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def versions(self) -> tuple[str, str]:
        """(champion version, challenger version) as the aliases name them now."""
        model, plan = self.plan.model, self.plan
        champion = self.client.get_model_version_by_alias(model, plan.champion_alias).version
        challenger = self.client.get_model_version_by_alias(model, plan.challenger_alias).version
        return str(champion), str(challenger)

    def load(self, challenger_version: str) -> Optional[RolloutState]:
        text = self.client.get_model_version(self.plan.model, challenger_version).tags.get(self.plan.key)
        return RolloutState.from_json(text) if text else None

    def save(self, state: RolloutState) -> None:
        self.client.set_model_version_tag(self.plan.model, state.challenger_version, self.plan.key, state.to_json())

    def forget(self, challenger_version: str) -> None:
        """Drop the record: the next tick starts the rollout of these versions anew."""
        self.client.delete_model_version_tag(self.plan.model, challenger_version, self.plan.key)

    def point_champion(self, version: str) -> None:
        """The champion alias to `version` (a promotion; cli.rollout --restart moves it back)."""
        self.client.set_registered_model_alias(self.plan.model, self.plan.champion_alias, version)

    def current(self) -> tuple[str, str, Optional[RolloutState]]:
        champion, challenger = self.versions()
        return champion, challenger, self.load(challenger)
