"""Check that a Grafana dashboard queries only metrics (and labels) that exist.

    python -m observability.check observability/grafana/serve-graphs.json \\
        --metrics-url http://127.0.0.1:8080/metrics --metrics-url http://127.0.0.1:8102/metrics
    python -m observability.check DASHBOARD --metrics-file ray.txt --metrics-file triton.txt

Every PromQL expression of the dashboard (panel targets, query variables)
and of a rules file given with `--rules` (observability/alerts.yml) is
parsed; each metric it selects must be a series of the given scrapes (as
stored: `x_bucket`, `x_total`, ...), and each label it matches on must be on
that series (or be `job`/`instance`, which Prometheus adds). Without
`--metrics-*` only the dashboard's structure and PromQL syntax are checked.

A metric that a scrape cannot show yet (one counting crashes, say) may be
named, with the reason, in the allow-list beside the dashboard
(`absent-ok.yml`): absent, it is reported but passes; an entry the dashboard
does not use fails, so the list cannot go stale silently.
Exit status 1 when anything fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from observability import exposition as expo
from observability.dashboard import queries, rule_queries, structure_problems
from observability.promql import PromQLError, selectors

ALLOW_LIST = "absent-ok.yml"
ALERTS = Path(__file__).parent / "alerts.yml"  # the alerting rules that go with the dashboard
# Labels Prometheus attaches to every series of a target at scrape time.
TARGET_LABELS = frozenset({"job", "instance"})


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    uses: dict[str, list[str]] = field(default_factory=dict)  # metric -> where the dashboard uses it
    absent_allowed: dict[str, str] = field(default_factory=dict)  # metric -> the allow-list's reason
    allowed_but_present: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def load_allow_list(path: Path) -> dict[str, str]:
    """`metric: reason` pairs; a reason is required (the point of the list)."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
        raise ValueError(f"{path}: expected `metric: reason` pairs, each with a reason")
    return {str(k): " ".join(v.split()) for k, v in data.items()}


def check(
    dashboard: dict[str, Any],
    scraped: Optional[expo.Exposition] = None,
    allow: Optional[dict[str, str]] = None,
    rules: Optional[dict[str, Any]] = None,
) -> Report:
    """Structure, PromQL syntax and, given a scrape, metric and label names,
    of the dashboard and of a Prometheus rules file (alerts) with it."""
    allow = allow or {}
    report = Report(problems=structure_problems(dashboard))
    needed: dict[tuple[str, str], list[str]] = {}  # (metric, label) -> where
    for query in queries(dashboard) + (rule_queries(rules) if rules else []):
        if not query.expr:
            continue
        try:
            found = selectors(query.expr)
        except PromQLError as error:
            report.problems.append(f"{query.where}: {error}")
            continue
        for selector in found:
            report.uses.setdefault(selector.metric, []).append(query.where)
            for label in selector.labels | query.needs_labels:
                needed.setdefault((selector.metric, label), []).append(query.where)
    for name in sorted(set(allow) - set(report.uses)):
        report.problems.append(f"allow-list entry {name} is not used by the dashboard: remove it")
    if scraped is None:
        return report
    for name, where in sorted(report.uses.items()):
        if scraped.has(name):
            if name in allow:
                report.allowed_but_present.append(name)
        elif name in allow:
            report.absent_allowed[name] = allow[name]
        else:
            hint = scraped.hint(name)
            report.problems.append(f"{name} is not exported{f' ({hint})' if hint else ''}; used in {'; '.join(where)}")
    for (name, label), where in sorted(needed.items()):
        if scraped.has(name) and label not in scraped.labels(name) | TARGET_LABELS:
            labels = ", ".join(sorted(scraped.labels(name)))
            report.problems.append(f"{name} has no label {label!r} (it has: {labels}); used in {'; '.join(where)}")
    return report


def fetch(url: str, timeout_s: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


def render(report: Report) -> str:
    lines = [f"{len(report.uses)} metrics used:"]
    for name in sorted(report.uses):
        state = "absent, allowed" if name in report.absent_allowed else ""
        lines.append(f"  {name}{f'  ({state})' if state else ''}")
    for name, reason in sorted(report.absent_allowed.items()):
        lines.append(f"allowed absent: {name}: {reason}")
    for name in report.allowed_but_present:
        lines.append(f"note: {name} is on the allow-list but exported here")
    lines += [f"FAIL {problem}" for problem in report.problems]
    lines.append("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dashboard", type=Path)
    parser.add_argument("--metrics-url", action="append", default=[], help="a /metrics endpoint (repeatable)")
    parser.add_argument("--metrics-file", action="append", default=[], type=Path, help="saved exposition text (repeatable)")
    parser.add_argument("--allow-list", type=Path, help=f"default: {ALLOW_LIST} beside the dashboard, if there")
    parser.add_argument("--rules", type=Path, help=f"a Prometheus rules file checked with it ({ALERTS.relative_to(ALERTS.parent.parent)})")
    args = parser.parse_args(argv)
    dashboard = json.loads(args.dashboard.read_text())
    rules = yaml.safe_load(args.rules.read_text()) if args.rules and args.rules.exists() else None
    allow_path = args.allow_list or args.dashboard.parent / ALLOW_LIST
    allow = load_allow_list(allow_path) if allow_path.exists() else {}
    texts = [fetch(url) for url in args.metrics_url] + [path.read_text() for path in args.metrics_file]
    scraped = None
    for text in texts:
        parsed = expo.parse(text)
        scraped = parsed if scraped is None else scraped.merge(parsed)
    report = check(dashboard, scraped, allow, rules)
    print(render(report))
    if scraped is None:
        print("(no --metrics-url/--metrics-file: metric names were not checked)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
