"""Configs are validated before anything starts, and errors name the key."""
import subprocess
import sys

import pytest
from pydantic import ValidationError

from apps.check import ConfigError, check_config, check_file
from apps.recommend import RecommendArgs
from deployments.paths import PROJECT_ROOT
from tests.servers import load_config


def test_local_config_is_valid():
    schema = check_file(PROJECT_ROOT / "configs" / "local.yaml")
    app = schema.applications[0]
    assert app.import_path == "apps.recommend:build"
    assert schema.http_options.host == "127.0.0.1"
    RecommendArgs.model_validate(app.args)


def test_defaults_point_at_the_local_stack():
    args = RecommendArgs()
    assert args.ranker.protocol == "grpc"
    assert args.ranker.alias == "champion"
    assert args.features.feature_service == "ranking"


@pytest.mark.parametrize(
    "mutate, path, reason",
    [
        (lambda a: a["ranker"].update(timout_s=1), "applications[0].args.ranker.timout_s", "Extra inputs are not permitted"),
        (lambda a: a.update(max_items=0), "applications[0].args.max_items", "greater than or equal to 1"),
        (lambda a: a["ranker"].update(protocol="udp"), "applications[0].args.ranker.protocol", "'grpc' or 'http'"),
        (lambda a: a["features"].update(timeout_s=-1), "applications[0].args.features.timeout_s", "greater than 0"),
        (lambda a: a.update(colour="blue"), "applications[0].args.colour", "Extra inputs are not permitted"),
        # The LLM node: `mode` picks remote (a URL) or embedded (an engine in the app), each with its own keys.
        (lambda a: a["explain"]["llm"].update(mode="local"), "applications[0].args.explain.llm", "expected tags: 'remote', 'embedded'"),
        (lambda a: a["explain"]["llm"].update(mode="embedded"), "applications[0].args.explain.llm.embedded.engine", "Field required"),
        (lambda a: a["explain"]["llm"].update(engine={"name": "smollm2"}), "applications[0].args.explain.llm.remote.engine", "Extra inputs"),
        (lambda a: a["explain"]["llm"].update(url="ftp://x"), "applications[0].args.explain.llm.remote.url", "http:// or https://"),
        (
            lambda a: a["explain"].update(llm={"mode": "embedded", "engine": {"name": "smollm2", "engine": {"dtype": "int3"}}}),
            "applications[0].args.explain.llm.embedded.engine.engine.dtype",
            "Input should be",
        ),
    ],
)
def test_bad_args_are_named_by_path(mutate, path, reason):
    config = load_config()
    mutate(config["applications"][0]["args"])
    with pytest.raises(ConfigError) as raised:
        check_config(config)
    assert path in str(raised.value)
    assert reason in str(raised.value)


def test_bad_serve_keys_are_named_too():
    config = load_config()
    config["applications"][0]["deployments"][0]["max_ongoing_requests"] = "many"
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        check_config(config)


def test_builder_rejects_bad_args_itself():
    """What Serve runs at build time, with no pre-check in front of it."""
    with pytest.raises(ValidationError) as raised:
        RecommendArgs.model_validate({"ranker": {"alias": ""}})
    assert "ranker.alias" in str(raised.value)


def test_check_cli_exit_codes(tmp_path):
    import yaml

    config = load_config()
    config["applications"][0]["args"]["ranker"]["timout_s"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "apps.check", str(bad)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 1
    assert "applications[0].args.ranker.timout_s: Extra inputs are not permitted" in result.stderr
    good = subprocess.run([sys.executable, "-m", "apps.check", "configs/local.yaml"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert good.returncode == 0, good.stderr



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
    config["applications"][0]["deployments"][0].pop("num_replicas")  # autoscaling replaces it
    mutate(config["applications"][0]["deployments"][0])
    with pytest.raises(ConfigError) as raised:
        check_config(config)
    assert any(line.startswith(path) and reason in line for line in str(raised.value).splitlines()), str(raised.value)
