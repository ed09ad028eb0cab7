"""An LLM engine's Serve deployment (`llm_deployment`: the chat app's, an
embedded `llm` node's), kept on the version its MLflow alias names by a
rolling update of its Serve application.

vLLM loads one model per engine, so a moved alias cannot be swapped in under
a running engine as the model nodes swap theirs (deployments/alias_follower.py).
Serve rolls the engine over instead:

1. Every `alias_poll_s` each engine replica reads the alias again.
2. A version it names that passes the build's checks (its `config.json` is
   in the registry, its context holds `max_model_len`) is recorded in the
   replica's application config, in the app's `runtime_env` (the env var
   ALIAS_VERSIONS_ENV), and that config is applied again through Serve's
   controller with every other application's config as stored.
3. The record changes the app's code version, so Serve runs the app's build
   again, which resolves the alias to the new version, and replaces the app's
   replicas as a rolling update with surge (`rollout_surge_percent`): a new
   engine starts and passes its health check before an old one stops, and
   the old one finishes the requests it holds. Every request is answered
   whole by one engine, which names its version (`x-model-version` on the
   chat app's answers).

A version that fails the checks is refused: the old version serves on and
the reason shows in readiness, as for the model nodes. Only applications
deployed from a config (`serve run`/`serve deploy` of a YAML, a RayService)
can be redeployed this way: one deployed from Python by `serve.run(app)` has
no config in Serve, and readiness says so.

A user's own `serve deploy` at the same instant can race the read-modify-
write of step 2; whichever lands last wins, and its build resolves the alias
either way.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from typing import Any, Optional

from deployments.alias_follower import AliasFollower, NotAdopted, Pending
from deployments.llm_engine import LLMModelConfig, ResolvedModel, check_context_length, llm_config
from deployments.llm_metrics import MeteredLLMServer
from deployments.registry import ModelRef, resolve_registry_uri

ALIAS_VERSIONS_ENV = "SERVE_GRAPHS_ALIAS_VERSIONS"  # {"<model>@<alias>": "<version>"}, JSON


def recorded_config(app_config: dict[str, Any], key: str, version: str) -> Optional[dict[str, Any]]:
    """`app_config` (a Serve application config) with `key` -> `version`
    recorded in its runtime_env, or None when it already records it."""
    runtime_env = dict(app_config.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    versions = json.loads(env_vars.get(ALIAS_VERSIONS_ENV) or "{}")
    if versions.get(key) == version:
        return None
    versions[key] = version
    env_vars[ALIAS_VERSIONS_ENV] = json.dumps(versions, sort_keys=True)
    runtime_env["env_vars"] = env_vars
    return {**app_config, "runtime_env": runtime_env}


def redeploy_recording(app_name: str, key: str, version: str) -> bool:
    """Apply Serve's stored application configs again, `app_name`'s recording
    `key` -> `version`; False when it records it already (another replica
    of the app did it)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.schema import ServeDeploySchema

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    configs = {name: app.model_dump(exclude_unset=True) for name, app in ray.get(controller.get_app_configs.remote()).items()}
    if app_name not in configs:
        raise NotAdopted(
            f"cannot be rolled out: application {app_name!r} was deployed from Python (serve.run of an Application), "
            "not from a config; deploy it again to serve that version"
        )
    updated = recorded_config(configs[app_name], key, version)
    if updated is None:
        return False
    configs[app_name] = updated
    details = ray.get(controller.get_serve_instance_details.remote())
    schema = ServeDeploySchema.model_validate(
        {"applications": list(configs.values()), "target_capacity": details.get("target_capacity")}
    )
    ray.get(controller.apply_config.remote(schema))
    return True


def check_version(model: LLMModelConfig, ref: ModelRef) -> None:
    """The build's checks of a version, on its `config.json` alone (the
    weights are downloaded by the build, once)."""
    import mlflow
    from mlflow import MlflowClient

    uri = resolve_registry_uri(model.registry_uri)
    source = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_download_uri(ref.name, ref.version)
    with tempfile.TemporaryDirectory(prefix="llm-version-") as folder:
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/config.json", dst_path=folder, tracking_uri=uri)
        except Exception as error:
            raise NotAdopted(f"has no config.json in the registry ({type(error).__name__})") from None
        try:
            check_context_length(model, ResolvedModel(name=ref.name, alias=ref.alias, version=ref.version, path=folder))
        except ValueError as error:
            raise NotAdopted(f"cannot be served: {error}") from None


def follow_kwargs(model: LLMModelConfig, resolved: ResolvedModel) -> Optional[dict[str, Any]]:
    """The engine server's `follow` bind argument, None when the alias is not followed."""
    if not model.alias_poll_s:
        return None
    return {"model": model.model_dump(mode="json"), "version": resolved.version}


class FollowingLLMServer(MeteredLLMServer):
    """ray.serve.llm's LLMServer (with its engine metrics) that keeps its
    application on the version its alias names (module docstring)."""

    async def __init__(self, llm_config: Any, *, follow: Optional[dict[str, Any]] = None, **kwargs):
        self.alias_follower: Optional[AliasFollower[ModelRef]] = None
        if follow is not None:
            model = LLMModelConfig.model_validate(follow["model"])
            serving = ModelRef(name=model.name, alias=model.alias, version=follow["version"])
            self.alias_follower = AliasFollower(
                model.registry_uri, model.name, model.alias, model.alias_poll_s, serving,
                ref_of=lambda ref: ref, adopt=lambda ref: self._roll_out(model, ref),
            )
            self.alias_follower.current()  # starts the poller in the replica's loop
        await super().__init__(llm_config, **kwargs)

    @property
    def alias_problem(self) -> Optional[str]:
        """Why the alias's version is not what this replica serves (refused, or rolling out)."""
        return self.alias_follower.problem if self.alias_follower is not None else None

    async def _roll_out(self, model: LLMModelConfig, ref: ModelRef) -> ModelRef:
        from ray import serve

        await asyncio.to_thread(check_version, model, ref)
        app_name = serve.get_replica_context().app_name
        await asyncio.to_thread(redeploy_recording, app_name, f"{model.name}@{model.alias}", ref.version)
        raise Pending(
            f"is rolling out: application {app_name!r} is redeployed with it, and this replica stops once its "
            "replacement is up"
        )


def llm_deployment(model: LLMModelConfig, resolved: ResolvedModel, *, name_prefix: str,
                   deployment_cls: Any = None, bind_kwargs: Optional[dict[str, Any]] = None) -> Any:
    """ray.serve.llm's deployment of one engine; its server class a
    FollowingLLMServer (or a subclass), told whether to export engine metrics
    and whether to follow the model's alias."""
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(
        llm_config(model, resolved),
        name_prefix=name_prefix,
        bind_kwargs={**(bind_kwargs or {}), "engine_metrics": model.engine_metrics, "follow": follow_kwargs(model, resolved)},
        deployment_cls=deployment_cls or FollowingLLMServer,
    )
