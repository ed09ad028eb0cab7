"""Progressive rollouts (deployments/rollouts), with no Serve: the settings
refused at build time with the path of the key; what the guards decide on
made-up windows; and the whole loop against a real MLflow registry with a
clock the test moves: started, stepped up, promoted (the alias moved) or
rolled back, each decision recorded on the challenger's version, and read
back by a restarted controller or replica."""
from __future__ import annotations

import asyncio
import copy
import json

import pytest
from mlflow import MlflowClient

from apps.graph import parse_args
from deployments.graph.rollout_plans import plans
from deployments.graph.validate import GraphSpecError
from deployments.rollouts.config import RolloutConfig
from deployments.rollouts.controller import Rollouts
from deployments.rollouts.feed import RolloutFeed, initial_weights
from deployments.rollouts.policy import (StepWindow, VariantWindow, challenger_weight, judge, needs_start, started)

RANKER = {"kind": "triton_model", "inputs": {"features": "request.rows"}}


def graph_args(rollout: dict | None = None, registry_uri: str = "sqlite:///x.db", **extra) -> dict:
    """features-free: the split's variants are two model nodes on one model, two aliases."""
    nodes = {
        name: {**RANKER, "config": {"model": "scorer", "alias": name, "registry_uri": registry_uri, "alias_poll_s": 1}}
        for name in ("champion", "challenger")
    }
    split = {"kind": "split", "name": "ab", "sticky_key": "request.user_id",
             "variants": [{"name": "champion", "then": {"kind": "node", "node": "champion"}},
                          {"name": "challenger", "then": {"kind": "node", "node": "challenger"}}],
             "rollout": {"challenger": "challenger", "steps": [0.1, 0.5, 1.0], "dwell_s": 60, "min_requests": 10,
                         **(rollout or {})}}
    return {"graph": {"name": "g", "request": {"user_id": {"type": "int"}, "rows": {"type": "list[float]"}},
                      "nodes": nodes, "flow": split, "output": {"model": "ab.model"}}, **extra}


def problems(args: dict) -> dict[str, str]:
    with pytest.raises(GraphSpecError) as error:
        parse_args(args)
    return {p.path: p.message for p in error.value.problems}


# ---------------------------------------------------------------- settings


def test_a_valid_rollout_resolves_the_model_and_aliases_from_the_variants():
    (plan,) = plans(parse_args(graph_args()).graph).values()
    assert (plan.split, plan.champion, plan.challenger, plan.model) == ("ab", "champion", "challenger", "scorer")
    assert (plan.champion_alias, plan.challenger_alias, plan.key) == ("champion", "challenger", "rollout.g.ab")
    assert plan.weights(0.25) == [0.75, 0.25]


def test_steps_that_do_not_rise_are_refused_with_their_path():
    # (pydantic's path names the step's kind: graph.flow.split...)
    found = problems(graph_args({"steps": [0.1, 0.5, 0.5]}))
    assert found == {"graph.flow.split.rollout.steps": "steps[2] = 0.5 does not rise above steps[1] = 0.5"}
    assert "(0, 1]" in problems(graph_args({"steps": [0.0, 1.0]}))["graph.flow.split.rollout.steps"]


def test_a_guard_on_an_unknown_metric_is_refused_with_its_path():
    found = problems(graph_args({"guards": [{"metric": "error_rate"}, {"metric": "accuracy"}]}))
    assert list(found) == ["graph.flow.split.rollout.guards[1]"]
    assert "'accuracy'" in found["graph.flow.split.rollout.guards[1]"] and "'latency_p99'" in found["graph.flow.split.rollout.guards[1]"]


def test_split_and_variant_mistakes_are_named():
    args = graph_args({"challenger": "canary"})
    args["graph"]["flow"]["variants"][0]["weight"] = 0.5
    found = problems(args)
    assert "not a variant" in found["graph.flow.rollout.challenger"]
    assert "set by the rollout" in found["graph.flow.variants[0].weight"]


def test_variants_must_serve_one_model_under_two_aliases_that_they_follow():
    args = graph_args()
    args["graph"]["nodes"]["challenger"]["config"].update(model="other")
    assert "different models" in problems(args)["graph.flow.rollout"]
    args = graph_args()
    args["graph"]["nodes"]["challenger"]["config"].update(alias="champion")
    assert "nothing to roll out" in problems(args)["graph.flow.rollout"]
    args = graph_args()
    del args["graph"]["nodes"]["champion"]["config"]["alias_poll_s"]
    assert "follow its alias" in problems(args)["graph.nodes.champion.config.alias_poll_s"]


def test_guards_on_a_missing_shadow_step_or_drift_monitor_are_refused():
    found = problems(graph_args({"guards": [{"metric": "shadow_agreement", "shadow": "nope"}, {"metric": "drift"}]}))
    assert "not a shadow step" in found["graph.flow.rollout.guards[0].shadow"]
    assert "needs the app's drift" in found["graph.flow.rollout.guards[1]"]


def test_a_split_without_a_rollout_still_needs_its_weights():
    args = graph_args()
    del args["graph"]["flow"]["rollout"]
    assert "required" in problems(args)["graph.flow.variants[0].weight"]


# ---------------------------------------------------------------- decisions

CONFIG = RolloutConfig(challenger="challenger", steps=[0.1, 0.5, 1.0], dwell_s=60, min_requests=10,
                       guards=[{"metric": "error_rate", "max_increase": 0.05},
                               {"metric": "latency_p99", "max_ratio": 1.5, "slack_ms": 5}])


def window(champion=(100, 0, 10.0), challenger=(20, 0, 10.0)) -> StepWindow:
    seen = StepWindow()
    for side, (requests, errors, ms) in ((seen.champion, champion), (seen.challenger, challenger)):
        side.add(requests, errors, [ms] * requests)
    return seen


def test_healthy_steps_hold_for_their_dwell_then_advance_and_the_last_promotes():
    assert judge(CONFIG, 0, 30, window()).decision == "hold"
    assert judge(CONFIG, 0, 61, window()).decision == "advance"
    assert judge(CONFIG, 2, 61, window()).decision == "promote"


def test_a_step_without_enough_challenger_requests_waits_for_them():
    verdict = judge(CONFIG, 0, 600, window(challenger=(5, 0, 10.0)))
    assert verdict.decision == "hold" and "5/10 challenger requests" in verdict.reason


def test_failing_challenger_is_rolled_back_before_the_dwell_ends():
    verdict = judge(CONFIG, 0, 2, window(champion=(100, 1, 10.0), challenger=(20, 4, 10.0)))
    assert verdict.decision == "rollback" and verdict.reason.startswith("error_rate: challenger 0.200")


def test_slow_challenger_is_rolled_back():
    verdict = judge(CONFIG, 1, 2, window(champion=(100, 0, 10.0), challenger=(20, 0, 30.0)))
    assert verdict.decision == "rollback" and "latency_p99" in verdict.reason and "bound 20.0 ms" in verdict.reason
    assert judge(CONFIG, 1, 2, window(champion=(100, 0, 10.0), challenger=(20, 0, 19.0))).decision == "hold"


def test_at_full_weight_the_champion_of_the_last_step_is_the_baseline():
    baseline = VariantWindow()
    baseline.add(100, 0, [10.0] * 100)
    slow = window(champion=(0, 0, 0.0), challenger=(20, 0, 40.0))
    assert judge(CONFIG, 2, 61, slow, baseline).decision == "rollback"
    assert judge(CONFIG, 2, 61, window(champion=(0, 0, 0.0), challenger=(20, 0, 12.0)), baseline).decision == "promote"


def test_shadow_agreement_and_drift_guards():
    config = CONFIG.model_copy(update={"guards": RolloutConfig(challenger="c", steps=[1.0], guards=[
        {"metric": "shadow_agreement", "shadow": "ranker", "min": 0.6}, {"metric": "drift"}]).guards})
    seen = window()
    seen.add_agreement("ranker", 4.0, 5)
    assert judge(config, 0, 61, seen, drifted=False).decision == "hold"  # 5 comparisons of the 10 needed
    seen.add_agreement("ranker", 4.0, 5)
    assert judge(config, 0, 61, seen, drifted=False).decision == "advance"
    assert judge(config, 0, 61, seen, drifted=True).reason == "drift: the traffic drifts"
    seen.add_agreement("ranker", 0.0, 10)  # mean 0.4
    assert "shadow_agreement" in judge(config, 0, 1, seen, drifted=False).reason


def test_which_versions_call_for_a_rollout_and_the_weight_they_get():
    state = started("1", "2", CONFIG, now=0.0)
    assert needs_start(None, "1", "2") and not needs_start(state, "1", "2") and not needs_start(None, "2", "2")
    assert challenger_weight(None, "1", "2") == 0.0 and challenger_weight(state, "1", "2") == 0.1
    assert challenger_weight(state, "1", "3") == 0.0 and needs_start(state, "3", "2")  # a new champion: a new rollout
    state.status = "promoted"
    assert challenger_weight(state, "2", "2") == 1.0  # the champion variant's nodes follow the alias a poll later
    assert needs_start(state, "1", "2")  # the champion moved back after a promotion: roll out again
    state.status, state.weight = "rolled_back", 0.0
    assert challenger_weight(state, "1", "2") == 0.0 and not needs_start(state, "1", "2")


# ---------------------------------------------------------------- the loop, on a real registry


@pytest.fixture
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("scorer")
    for alias in ("champion", "challenger"):
        version = client.create_model_version("scorer", str(tmp_path / alias))
        client.set_registered_model_alias("scorer", alias, version.version)
    return client, uri


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def loop_of(uri: str, clock: Clock, **rollout) -> tuple[Rollouts, dict]:
    rollout_plans = plans(parse_args(graph_args(rollout, registry_uri=uri)).graph)
    return Rollouts(rollout_plans, clock=clock), rollout_plans


def traffic(champion: tuple[int, int], challenger: tuple[int, int], ms: float = 10.0) -> dict:
    return {"splits": {"ab": {"champion": [champion[0], champion[1], [ms] * champion[0]],
                              "challenger": [challenger[0], challenger[1], [ms] * challenger[0]]}}, "agreement": {}}


def record(client: MlflowClient, version: str) -> dict:
    return json.loads(client.get_model_version("scorer", version).tags["rollout.g.ab"])


def test_a_good_challenger_steps_up_and_is_promoted_with_every_decision_recorded(registry):
    client, clock, rollouts, _ = started_loop(registry)
    assert rollouts.weights() == {"ab": [0.9, 0.1]} and record(client, "2")["status"] == "running"
    for expected in ([0.5, 0.5], [0.0, 1.0]):
        rollouts.report(traffic((90, 0), (10, 0)))
        clock.now += 61
        asyncio.run(rollouts.tick())
        assert rollouts.weights() == {"ab": expected}
    assert str(client.get_model_version_by_alias("scorer", "champion").version) == "1"  # not before the last step's dwell
    rollouts.report(traffic((0, 0), (20, 0)))  # at 100 % the champion's baseline is the step before's
    clock.now += 61
    asyncio.run(rollouts.tick())
    assert str(client.get_model_version_by_alias("scorer", "champion").version) == "2"
    assert rollouts.weights() == {"ab": [0.0, 1.0]}  # not a tick back on the champion variant, still on v1
    kept = record(client, "2")
    assert kept["status"] == "promoted" and [e["event"] for e in kept["history"]] == ["started", "advanced", "advanced", "promoted"]
    asyncio.run(rollouts.tick())  # champion and challenger now the same version: stays on it
    assert rollouts.weights() == {"ab": [0.0, 1.0]}


def started_loop(registry) -> tuple[MlflowClient, Clock, Rollouts, dict]:
    """A controller on the registry, its first tick done: the rollout started at 10 %."""
    client, uri = registry
    clock = Clock()
    rollouts, rollout_plans = loop_of(uri, clock)
    asyncio.run(rollouts.tick())
    return client, clock, rollouts, rollout_plans


def test_a_failing_challenger_is_rolled_back_at_once_and_stays_back(registry):
    client, clock, rollouts, _ = started_loop(registry)
    rollouts.report(traffic((90, 0), (10, 6)))
    clock.now += 1
    asyncio.run(rollouts.tick())
    assert rollouts.weights() == {"ab": [1.0, 0.0]}
    kept = record(client, "2")
    assert kept["status"] == "rolled_back" and kept["reason"].startswith("error_rate: challenger 0.600")
    assert str(client.get_model_version_by_alias("scorer", "champion").version) == "1"
    clock.now += 600
    asyncio.run(rollouts.tick())
    assert rollouts.weights() == {"ab": [1.0, 0.0]}


class Flaky:
    """The registry store, made to fail while `away`."""

    def __init__(self, store):
        self.store, self.away = store, False

    def __getattr__(self, name):
        def call(*args):
            if self.away:
                raise ConnectionError("registry unreachable")
            return getattr(self.store, name)(*args)
        return call


@pytest.mark.parametrize("away_from", ["the tick", "the save"])
def test_a_breach_while_the_registry_is_away_rolls_back_at_once_and_is_recorded_when_it_answers(registry, away_from):
    client, clock, rollouts, _ = started_loop(registry)
    (rollout,) = rollouts.rollouts.values()
    rollout.store = flaky = Flaky(rollout.store)
    decisions = []
    rollouts.on_decision = lambda plan, decision, reason, state: decisions.append(decision)
    if away_from == "the save":  # the aliases read, then the registry gone before the decision is written
        flaky.current = lambda: (flaky.store.current(), setattr(flaky, "away", True))[0]
    else:
        flaky.away = True
    rollouts.report(traffic((90, 0), (10, 6)))
    clock.now += 1
    asyncio.run(rollouts.tick())
    assert rollouts.weights() == {"ab": [1.0, 0.0]}, "the challenger loses its traffic with the registry away"
    assert decisions == ["rolled_back"] and rollout.problem.startswith("registry: ConnectionError")
    assert record(client, "2")["status"] == "running", "not written yet"
    if away_from == "the save":
        del flaky.current  # wholly away now
    asyncio.run(rollouts.tick())  # still away: nothing decided twice
    assert decisions == ["rolled_back"] and rollouts.weights() == {"ab": [1.0, 0.0]}
    flaky.away = False
    asyncio.run(rollouts.tick())
    kept = record(client, "2")
    assert kept["status"] == "rolled_back" and kept["reason"].startswith("error_rate: challenger 0.600")
    assert rollouts.weights() == {"ab": [1.0, 0.0]} and rollout.problem == ""


def test_with_the_registry_away_a_healthy_step_holds(registry):
    client, clock, rollouts, _ = started_loop(registry)
    (rollout,) = rollouts.rollouts.values()
    rollout.store = flaky = Flaky(rollout.store)
    flaky.away = True
    rollouts.report(traffic((90, 0), (10, 0)))
    clock.now += 61  # the dwell is over: it would step up
    asyncio.run(rollouts.tick())
    assert rollouts.weights() == {"ab": [0.9, 0.1]} and record(client, "2")["step"] == 0
    flaky.away = False
    asyncio.run(rollouts.tick())
    assert rollouts.weights() == {"ab": [0.5, 0.5]}, "steps up once the registry answers"


def test_a_restarted_controller_and_a_new_replica_route_as_the_record_says(registry):
    client, clock, rollouts, rollout_plans = started_loop(registry)
    _, uri = registry
    rollouts.report(traffic((90, 0), (10, 0)))
    clock.now += 61
    asyncio.run(rollouts.tick())
    assert rollouts.weights() == {"ab": [0.5, 0.5]}
    assert initial_weights(rollout_plans) == {"ab": [0.5, 0.5]}  # a replica that starts now
    restarted, _ = loop_of(uri, clock)
    assert restarted.weights() == {}  # says nothing before it has read the registry
    asyncio.run(restarted.tick())
    assert restarted.weights() == {"ab": [0.5, 0.5]}
    assert record(client, "2")["step"] == 1


def test_the_replica_feed_reports_outcomes_and_routes_by_the_answer(registry):
    _, _, rollouts, rollout_plans = started_loop(registry)
    sent = []

    async def send(counts):
        sent.append(copy.deepcopy(counts))
        return rollouts.report(counts)

    async def run():
        feed = RolloutFeed(rollout_plans, {"ab": [1.0, 0.0]}, send)
        assert feed.weights("ab") == [1.0, 0.0]
        feed.record("ab", "challenger", False, 12.5)
        feed.record("ab", "champion", True, 3.0)
        feed.agreement("ranker", 0.8)
        await feed.sync()
        return feed.weights("ab")

    assert asyncio.run(run()) == [0.9, 0.1]
    assert sent == [{"splits": {"ab": {"challenger": [1, 1, [12.5]], "champion": [1, 0, [3.0]]}}, "agreement": {"ranker": [0.8, 1]}}]
    assert rollouts.rollouts["ab"].window.challenger.errors == 1


def test_the_demo_rolls_its_own_aliases_out():
    """configs/local.yaml's canary app moves ranker@stable, never the recommend app's @champion."""
    from apps.graph import load

    (plan,) = plans(load("configs/local.yaml", app="canary").graph).values()
    assert (plan.model, plan.champion_alias, plan.challenger_alias) == ("ranker", "stable", "canary")
    recommend = load("configs/local.yaml", app="recommend").graph
    assert recommend.nodes["ranker"].config.alias == "champion" and not plans(recommend)
