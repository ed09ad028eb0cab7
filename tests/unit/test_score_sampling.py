"""ray_graph_model_scores observes a sample of the model calls
(`score_sample_ratio`, an app arg, 0.1 by default): every item of every call
cost the ingress replica ~14 % of its CPU and Ray's metrics agent ~330 us per
request (docs/benchmarks.md). The histogram is Ray's; here a recording stand-in
takes its place, as no Ray runs in the unit tests (the integration tests
count the real series)."""
from __future__ import annotations

import itertools

import pytest

from deployments.graph.args import GraphArgs
from deployments.metrics import NodeMetrics

MODEL = {"name": "ranker", "version": "2"}


class Recorded:
    def __init__(self):
        self.values: list[tuple[float, dict]] = []

    def observe(self, value: float, tags: dict) -> None:
        self.values.append((value, tags))


def metrics(ratio: float, draws) -> tuple[NodeMetrics, Recorded]:
    node_metrics = NodeMetrics("recommend", ratio, draw=draws.__next__)
    node_metrics._scores = Recorded()
    return node_metrics, node_metrics._scores


def test_a_sampled_call_records_every_item_with_its_version():
    node_metrics, recorded = metrics(0.1, iter([0.05]))
    node_metrics.observe_scores("ranker", MODEL, [0.9, 0.2, 0.4])
    assert [value for value, _ in recorded.values] == [0.9, 0.2, 0.4]
    assert recorded.values[0][1] == {"graph": "recommend", "node": "ranker", "model": "ranker", "version": "2"}


def test_calls_outside_the_sample_record_nothing():
    node_metrics, recorded = metrics(0.1, iter([0.1, 0.5, 0.99]))
    for _ in range(3):
        node_metrics.observe_scores("ranker", MODEL, [0.9, 0.2])
    assert recorded.values == []


def test_over_many_calls_the_share_recorded_is_the_ratio():
    import random

    rng = random.Random(7)
    node_metrics, recorded = metrics(0.1, iter(rng.random, None))
    for _ in range(2000):
        node_metrics.observe_scores("ranker", MODEL, [0.5] * 20)
    assert 150 * 20 <= len(recorded.values) <= 250 * 20  # 200 calls expected


@pytest.mark.parametrize("ratio, recorded_calls", [(1.0, 5), (0.0, 0)])
def test_ratio_one_records_every_call_and_zero_none(ratio, recorded_calls):
    node_metrics, recorded = metrics(ratio, itertools.cycle([0.0, 0.3, 0.999]))
    for _ in range(5):
        node_metrics.observe_scores("ranker", MODEL, [0.5])
    assert len(recorded.values) == recorded_calls


def test_the_ratio_is_an_app_arg_between_zero_and_one():
    field = GraphArgs.model_fields["score_sample_ratio"]
    assert field.default == 0.1
    assert (field.metadata[0].ge, field.metadata[1].le) == (0, 1)
