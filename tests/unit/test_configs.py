"""Configs are validated before anything starts, and errors name the key."""
import sys

import pytest
from pydantic import ValidationError

from cli.check import ConfigError, check_config, check_file
from apps.graph import GraphArgs, parse_args
from deployments.paths import PROJECT_ROOT
from tests.servers import load_config

NODES = "applications[0].args.graph.nodes"


def test_local_config_is_valid():
    schema = check_file(PROJECT_ROOT / "configs" / "local.yaml")
    app = schema.applications[0]
    assert app.import_path == "apps.graph:build"  # the recommend app is a declarative graph
    assert schema.http_options.host == "127.0.0.1"
    GraphArgs.model_validate(app.args)


def test_the_recommend_graph_points_at_the_local_stack():
    graph = parse_args(load_config()["applications"][0]["args"]).graph
    ranker, features = graph.nodes["ranker"].config, graph.nodes["features"].config
    assert (ranker.protocol, ranker.alias, ranker.url) == ("grpc", "champion", "127.0.0.1:8101")
    assert features.feature_service == "ranking" and features.repo_path == ".local/feast"
    assert graph.request["item_ids"].unique and graph.request["item_ids"].max_length == 100
    assert graph.nodes["explain"].dependency == "soft" and graph.nodes["explain"].cooldown_s == 5


@pytest.mark.parametrize(
    "mutate, path, reason",
    [
        (lambda g: g["nodes"]["ranker"]["config"].update(timout_s=1), f"{NODES}.ranker.triton_model.config.timout_s", "Extra inputs are not permitted"),
        (lambda g: g["request"]["item_ids"].update(max_length=0), "applications[0].args.graph.request.item_ids.max_length", "greater than or equal to 1"),
        (lambda g: g["request"]["k"].update(unique=True), "applications[0].args.graph.request.k", "only for list fields"),
        (lambda g: g["nodes"]["ranker"]["config"].update(protocol="udp"), f"{NODES}.ranker.triton_model.config.protocol", "'grpc' or 'http'"),
        (lambda g: g["nodes"]["features"]["config"].update(timeout_s=-1), f"{NODES}.features.feature_lookup.config.timeout_s", "greater than 0"),
        (lambda g: g.update(colour="blue"), "applications[0].args.graph.colour", "Extra inputs are not permitted"),
        (lambda g: g["nodes"]["ranker"].update(cooldown_s=5), f"{NODES}.ranker.triton_model", "only a soft node can be skipped"),
        # The LLM node: `mode` picks remote (a URL) or embedded (an engine in the app), each with its own keys.
        (lambda g: g["nodes"]["explain"]["config"].update(mode="local"), f"{NODES}.explain.llm.config", "expected tags: 'remote', 'embedded'"),
        (lambda g: g["nodes"]["explain"]["config"].update(mode="embedded"), f"{NODES}.explain.llm.config.embedded.engine", "Field required"),
        (lambda g: g["nodes"]["explain"]["config"].update(engine={"name": "smollm2"}), f"{NODES}.explain.llm.config.remote.engine", "Extra inputs"),
        (lambda g: g["nodes"]["explain"]["config"].update(url="ftp://x"), f"{NODES}.explain.llm.config.remote.url", "http:// or https://"),
        (
            lambda g: g["nodes"]["explain"].update(config={"mode": "embedded", "engine": {"name": "smollm2", "engine": {"dtype": "int3"}}}),
            f"{NODES}.explain.llm.config.embedded.engine.engine.dtype",
            "Input should be",
        ),
        (  # vLLM reads VLLM_CPU_KVCACHE_SPACE as an integer: a fraction failed only inside the engine's start
            lambda g: g["nodes"]["explain"].update(config={"mode": "embedded", "engine": {"name": "smollm2", "engine": {"kv_cache_space_gib": 0.5}}}),
            f"{NODES}.explain.llm.config.embedded.engine.engine.kv_cache_space_gib",
            "valid integer",
        ),
        (
            lambda g: g["nodes"]["explain"].update(config={"mode": "embedded", "engine": {"name": "smollm2", "rollout_surge_percent": 150}}),
            f"{NODES}.explain.llm.config.embedded.engine.rollout_surge_percent",
            "less than or equal to 100",
        ),
    ],
)
def test_bad_args_are_named_by_path(mutate, path, reason):
    config = load_config()
    mutate(config["applications"][0]["args"]["graph"])
    with pytest.raises(ConfigError) as raised:
        check_config(config)
    assert any(line.startswith(path) and reason in line for line in str(raised.value).splitlines()), str(raised.value)


def test_bad_serve_keys_are_named_too():
    config = load_config()
    config["applications"][0]["deployments"][0]["max_ongoing_requests"] = "many"
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        check_config(config)


def test_builder_rejects_bad_args_itself():
    """What Serve runs at build time, with no pre-check in front of it."""
    args = load_config()["applications"][0]["args"]
    args["graph"]["nodes"]["ranker"]["config"]["alias"] = ""
    with pytest.raises(ValidationError) as raised:
        GraphArgs.model_validate(args)
    assert "graph.nodes.ranker.triton_model.config.alias" in str(raised.value)


def test_check_cli_exit_codes(tmp_path, monkeypatch, capsys):
    """`python -m cli.check` runs `main()`: called here in this process (a
    fresh interpreter would spend its time importing Ray and vLLM)."""
    import yaml

    from cli.check import main

    config = load_config()
    config["applications"][0]["args"]["graph"]["nodes"]["ranker"]["config"]["timout_s"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(PROJECT_ROOT)
    exits = {}
    for name, path in (("bad", str(bad)), ("good", "configs/local.yaml")):
        monkeypatch.setattr(sys, "argv", ["cli.check", path])
        with pytest.raises(SystemExit) as exited:
            main()
        exits[name] = (exited.value.code, capsys.readouterr())
    assert exits["bad"][0] == 1
    assert f"{NODES}.ranker.triton_model.config.timout_s: Extra inputs are not permitted" in exits["bad"][1].err
    assert exits["good"][0] == 0, exits["good"][1].err
    assert "configs/local.yaml: ok" in exits["good"][1].out



@pytest.mark.parametrize(
    "mutate, path, reason",
    [
        # Ray's ServeDeploySchema would drop these silently: the check names them.
        (lambda d: d.update(max_ongoing_request=8), "applications[0].deployments[0].max_ongoing_request", "unknown key"),
        (lambda d: d.update(autoscaling_config={"min_replicas": 1, "max_replica": 3}),
         "applications[0].deployments[0].autoscaling_config.max_replica", "unknown key"),
        # ...and would pass these to the controller, which fails later.
        (lambda d: d.update(autoscaling_config={"min_replicas": 5, "max_replicas": 2}),
         "applications[0].deployments[0].autoscaling_config", "min_replicas"),
        (lambda d: d.update(autoscaling_config={"target_ongoing_requests": -1}),
         "applications[0].deployments[0].autoscaling_config.target_ongoing_requests", "greater than 0"),
    ],
)
def test_serve_keys_ray_would_ignore_or_defer_are_named(mutate, path, reason):
    config = load_config()
    config["applications"][0]["deployments"][0].pop("autoscaling_config")  # each case writes its own
    mutate(config["applications"][0]["deployments"][0])
    with pytest.raises(ConfigError) as raised:
        check_config(config)
    assert any(line.startswith(path) and reason in line for line in str(raised.value).splitlines()), str(raised.value)


@pytest.mark.parametrize("engine_metrics", [True, False])
def test_engine_metrics_switch_reaches_the_engine_and_the_server(engine_metrics, monkeypatch):
    """`engine_metrics`: vLLM computes its engine stats into its own Prometheus
    metrics and the server (MeteredLLMServer) copies them into Ray; off, vLLM
    computes none. Ray's per-value stat logger (log_engine_metrics) is never on."""
    import types

    import ray

    # ray.serve.llm reads the driver's runtime_env, which would start a local
    # Ray cluster in this unit test (Ray's auto-init): the driver has none.
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(runtime_env={}))
    from deployments.llm_engine import LLMModelConfig, ResolvedModel, llm_config
    from deployments.llm_rollout import llm_deployment
    from deployments.llm_metrics import MeteredLLMServer

    args = {"name": "tiny-llama"} if engine_metrics else {"name": "tiny-llama", "engine_metrics": False}
    model = LLMModelConfig.model_validate(args)
    resolved = ResolvedModel(name="tiny-llama", alias="champion", version="1", path="/models/tiny-llama")
    config = llm_config(model, resolved)
    assert config.log_engine_metrics is False
    assert config.engine_kwargs["disable_log_stats"] is (not engine_metrics)
    deployment = llm_deployment(model, resolved, name_prefix="Test:")._bound_deployment
    assert issubclass(deployment.func_or_class, MeteredLLMServer)
    assert deployment.init_kwargs["engine_metrics"] is engine_metrics
