"""An LLM engine following its alias (deployments/llm_rollout.py): what is
recorded in the app's config, which versions are refused before any
redeploy, and what the engine deployment is told. The rollout itself, under
Serve with real engines, is tests/integration/test_llm_alias_rollout.py."""
from __future__ import annotations

import asyncio
import json
import logging
import types
from pathlib import Path

import pytest

from deployments.alias_follower import AliasFollower, NotAdopted, Pending
from deployments.llm_engine import LLMModelConfig, ResolvedModel, llm_config
from deployments.llm_rollout import ALIAS_VERSIONS_ENV, check_version, follow_kwargs, llm_deployment, recorded_config
from deployments.registry import ModelRef


def test_a_new_version_is_recorded_in_the_apps_runtime_env_beside_what_is_there():
    app = {"name": "chat", "import_path": "apps.chat:build", "args": {"model": {"name": "smollm2"}},
           "runtime_env": {"env_vars": {"KEEP": "1"}, "working_dir": "."}}
    recorded = recorded_config(app, "smollm2@champion", "2")
    assert recorded["runtime_env"] == {"env_vars": {"KEEP": "1", ALIAS_VERSIONS_ENV: '{"smollm2@champion": "2"}'}, "working_dir": "."}
    assert recorded["args"] == app["args"] and app["runtime_env"]["env_vars"] == {"KEEP": "1"}, "the stored config is not changed"
    assert recorded_config(recorded, "smollm2@champion", "2") is None, "already recorded: no redeploy"
    both = recorded_config(recorded, "tiny-llama@champion", "5")
    assert json.loads(both["runtime_env"]["env_vars"][ALIAS_VERSIONS_ENV]) == {"smollm2@champion": "2", "tiny-llama@champion": "5"}
    assert recorded_config({"name": "chat"}, "m@a", "1")["runtime_env"] == {"env_vars": {ALIAS_VERSIONS_ENV: '{"m@a": "1"}'}}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """Model `lm`: v1 with a context of 1024 tokens, v2 of 64, v3 with no config.json."""
    import mlflow
    from mlflow import MlflowClient

    root: Path = tmp_path_factory.mktemp("llm-registry")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("lm", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model("lm")
    for context in (1024, 64, None):
        run = client.create_run(experiment)
        folder = root / f"folder-{context}"
        folder.mkdir()
        if context is not None:
            (folder / "config.json").write_text(json.dumps({"max_position_embeddings": context}))
        else:
            (folder / "weights.bin").write_bytes(b"0")
        client.log_artifacts(run.info.run_id, str(folder), "model")
        client.create_model_version("lm", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    mlflow.set_tracking_uri("")
    return uri


def test_a_version_the_build_would_refuse_is_refused_before_any_redeploy(registry):
    model = LLMModelConfig.model_validate({"name": "lm", "registry_uri": registry, "engine": {"max_model_len": 512}})
    check_version(model, ModelRef(name="lm", alias="champion", version="1"))
    with pytest.raises(NotAdopted, match=r"cannot be served: .*max_model_len=512 exceeds the model's context of 64 tokens"):
        check_version(model, ModelRef(name="lm", alias="champion", version="2"))
    with pytest.raises(NotAdopted, match="has no config.json in the registry"):
        check_version(model, ModelRef(name="lm", alias="champion", version="3"))


def test_a_rollout_on_its_way_is_kept_as_the_followers_state_and_logged_as_information(caplog, monkeypatch):
    """The replica serves on while Serve replaces it: its readiness says so, at info level, not as an error."""
    import deployments.alias_follower

    monkeypatch.setattr(deployments.alias_follower, "resolve_alias", lambda *_: ModelRef(name="lm", alias="champion", version="2"))

    async def adopt(ref: ModelRef) -> ModelRef:
        raise Pending("is rolling out: application 'chat' is redeployed with it")

    follower = AliasFollower("unused", "lm", "champion", None, ModelRef(name="lm", alias="champion", version="1"),
                             ref_of=lambda ref: ref, adopt=adopt)
    with caplog.at_level(logging.INFO, logger="deployments.alias_follower"):
        asyncio.run(follower.refresh())
    assert follower.ref.version == "1"
    assert follower.problem == ("lm@champion points to version 2, which is rolling out: application 'chat' is redeployed "
                                "with it; still serving version 1")
    assert [record.levelno for record in caplog.records] == [logging.INFO]


def test_the_engine_deployment_follows_only_when_asked_and_rolls_out_with_surge(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(runtime_env={}))  # no Ray auto-init
    resolved = ResolvedModel(name="tiny-llama", alias="champion", version="4", path="/models/tiny-llama")
    still = LLMModelConfig.model_validate({"name": "tiny-llama"})
    following = LLMModelConfig.model_validate({"name": "tiny-llama", "alias_poll_s": 5, "rollout_surge_percent": 50})
    assert follow_kwargs(still, resolved) is None
    assert llm_deployment(still, resolved, name_prefix="T:")._bound_deployment.init_kwargs["follow"] is None
    kwargs = llm_deployment(following, resolved, name_prefix="T:")._bound_deployment.init_kwargs["follow"]
    assert (kwargs["version"], kwargs["model"]["alias_poll_s"]) == ("4", 5)
    assert llm_config(still, resolved).deployment_config["max_surge_percent"] == 100
    assert llm_config(following, resolved).deployment_config["max_surge_percent"] == 50
