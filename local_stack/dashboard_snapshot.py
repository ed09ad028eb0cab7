"""A picture of a row of the Grafana dashboard, drawn from a real
Prometheus's answers to the panels' own queries (no Grafana here: the
panels' titles, layout, queries and legends, plotted with matplotlib).

With `make demo` running (its metrics on 127.0.0.1:8080 and Triton's on
8102, what observability/prometheus.yml scrapes):

    python -m local_stack.dashboard_snapshot --seconds 300 --out docs/images/monitoring.png &
    python -m local_stack.traffic --mix normal --rate 40 --requests 4000 ...

starts its own Prometheus (local_stack/prometheus.py) for `--seconds`,
then draws the row; `--prometheus URL` reads one that already runs (the
last `--seconds` of it). Dashboard variables match everything
(`=~"$graph"` becomes `=~".*"`), `$__rate_interval` is 30 s.
"""
from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

OBSERVABILITY = Path(__file__).parent.parent / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "serve-graphs.json"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
RATE_INTERVAL = "30s"


def row_panels(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels under the row whose title starts with `title`, by position."""
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    found, inside = [], False
    for panel in panels:
        if panel["type"] == "row":
            inside = panel["title"].startswith(title)
            continue
        if inside:
            found.append(panel)
    if not found:
        raise SystemExit(f"no row titled {title!r}... with panels in {DASHBOARD}")
    return found


def concrete(expr: str) -> str:
    """The query as Grafana would send it with every variable on 'All'."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    return re.sub(r'=~"\$\{?\w+\}?"', '=~".*"', expr)


def legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template or "")
    return text.strip() or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")


def with_gaps(times: list[float], values: list[float], step_s: float = 5.0) -> tuple[list[float], list[float]]:
    """A break (NaN) where Prometheus had no sample for more than two steps,
    as Grafana draws it: a series that went stale is not joined across."""
    xs, ys = [], []
    for index, (t, v) in enumerate(zip(times, values)):
        if index and t - times[index - 1] > 2 * step_s:
            xs.append(t - step_s)
            ys.append(float("nan"))
        xs.append(t)
        ys.append(v)
    return xs, ys


def draw(panels: list[dict[str, Any]], series: dict[int, list[tuple[str, list[float], list[float]]]], title: str,
         out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = min(p["gridPos"]["y"] for p in panels)
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) - top
    figure = plt.figure(figsize=(18, height / 2))
    figure.suptitle(title, x=0.01, ha="left", fontsize=12, fontweight="bold")
    usable = 0.95  # below the title
    for panel in panels:
        grid = panel["gridPos"]
        bottom = (1 - (grid["y"] - top + grid["h"]) / height) * usable
        axes = figure.add_axes([grid["x"] / 24 + 0.035, bottom + 0.03, grid["w"] / 24 - 0.05, grid["h"] / height * usable - 0.065])
        axes.set_title(panel["title"], fontsize=9, loc="left")
        drawn = series.get(panel["id"], [])
        for name, times, values in drawn:
            axes.plot(*with_gaps(times, values), linewidth=1, label=name[:60])
        if drawn:
            axes.legend(fontsize=6, loc="upper left", frameon=False)
        else:
            axes.text(0.5, 0.5, "No data", ha="center", va="center", transform=axes.transAxes, color="grey")
            axes.set_yticks([])
        axes.tick_params(labelsize=7)
        axes.set_xlabel("seconds", fontsize=7, loc="right")
        axes.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def snapshot(query_range, panels: list[dict[str, Any]], start: float, end: float, step_s: float = 5.0):
    """{panel id: [(legend, seconds since start, values)]} from `query_range(expr, start, end, step)`."""
    found: dict[int, list] = {}
    for panel in panels:
        for target in panel.get("targets", []):
            for result in query_range(concrete(target["expr"]), start, end, step_s):
                points = [(float(t) - start, float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    times, values = zip(*points)
                    found.setdefault(panel["id"], []).append((legend(target.get("legendFormat", ""), result["metric"]),
                                                              list(times), list(values)))
    return found


def query_range(prometheus: str, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
    """Prometheus' HTTP API: one entry per series (its labels, [time, value] pairs)."""
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step_s})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{query}", timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r}: {body}")
    return body["data"]["result"]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", default="Monitoring", help="the row's title (its start)")
    parser.add_argument("--seconds", type=float, default=300, help="how long to record (or to look back)")
    parser.add_argument("--prometheus", help="a running Prometheus's URL (default: start one with observability/prometheus.yml)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/monitoring.png"))
    args = parser.parse_args(argv)
    dashboard = json.loads(DASHBOARD.read_text())
    panels = row_panels(dashboard, args.row)
    (row,) = [p for p in dashboard["panels"] if p["type"] == "row" and p["title"].startswith(args.row)]
    server = None
    if args.prometheus is None:
        from local_stack.prometheus import PrometheusServer

        server = PrometheusServer(PROMETHEUS_CONFIG.resolve()).start()
        print(f"Prometheus on {server.url}, recording {args.seconds:.0f} s", flush=True)
    try:
        start = time.time() if server is not None else time.time() - args.seconds
        if server is not None:
            time.sleep(args.seconds)
        url = server.url if server is not None else args.prometheus
        series = snapshot(lambda *query: query_range(url, *query), panels, start, time.time())
    finally:
        if server is not None:
            server.stop()
    draw(panels, series, f"{row['title']}  ({time.strftime('%Y-%m-%d %H:%M')}, `make demo` and local_stack.traffic)", args.out)
    print(f"{args.out}: {len(panels)} panels, {sum(len(s) for s in series.values())} series", flush=True)


if __name__ == "__main__":
    main()
