"""local_stack/dashboard_snapshot.py: a dashboard row's panels, their queries
as Grafana sends them with every variable on 'All', legends from the
answers' labels, and the picture drawn (the Prometheus answers made up here;
the picture in docs/ is drawn from a real one)."""
from __future__ import annotations

import json

import math

from local_stack.dashboard_snapshot import DASHBOARD, concrete, draw, legend, row_panels, snapshot, with_gaps


def test_the_monitoring_row_has_the_rollout_and_drift_panels():
    titles = [p["title"] for p in row_panels(json.loads(DASHBOARD.read_text()), "Monitoring")]
    assert titles[0] == "Payload log records/s by outcome"
    assert {"Drift: flag and share of drifted columns", "Rollouts: each variant's share", "Rollouts: decisions so far"} <= set(titles)


def test_queries_match_every_value_of_a_variable_and_take_a_fixed_rate_interval():
    expr = 'sum by (graph) (rate(x_total{graph=~"$graph", node=~"${node}"}[$__rate_interval]))'
    assert concrete(expr) == 'sum by (graph) (rate(x_total{graph=~".*", node=~".*"}[30s]))'
    assert legend("{{graph}} {{variant}}", {"graph": "canary", "variant": "stable"}) == "canary stable"
    assert legend("", {"__name__": "x", "graph": "g"}) == "graph=g"


def test_the_row_is_drawn_from_the_answers(tmp_path):
    panels = row_panels(json.loads(DASHBOARD.read_text()), "Monitoring")
    asked = []

    def query_range(expr, start, end, step):
        asked.append(expr)
        if "ray_graph_rollout_weight" not in expr:
            return []
        return [{"metric": {"graph": "canary", "split": "ranker", "variant": "canary"},
                 "values": [[start + 5 * i, str(w)] for i, w in enumerate((0.1, 0.1, 0.5, 1.0))]}]

    series = snapshot(query_range, panels, 1000.0, 1020.0)
    assert len(asked) == sum(len(p["targets"]) for p in panels)
    (weights,) = [p["id"] for p in panels if p["title"] == "Rollouts: each variant's share"]
    assert series == {weights: [("canary ranker canary", [0.0, 5.0, 10.0, 15.0], [0.1, 0.1, 0.5, 1.0])]}
    draw(panels, series, "Monitoring", tmp_path / "row.png")
    assert (tmp_path / "row.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_series_that_went_stale_is_not_joined_across_the_gap():
    xs, ys = with_gaps([0.0, 5.0, 30.0, 35.0], [1.0, 1.0, 0.0, 0.0])
    assert xs == [0.0, 5.0, 25.0, 30.0, 35.0] and math.isnan(ys[2]) and ys[:2] == [1.0, 1.0] and ys[3:] == [0.0, 0.0]
