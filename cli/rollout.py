"""Show a graph's progressive rollouts, read from the registry where they
keep their record (deployments/rollouts): the versions, the step, the
challenger's share, the decisions and their reasons.

    python -m cli.rollout configs/local.yaml                  # every rollout of every graph app
    python -m cli.rollout configs/local.yaml --app canary
    python -m cli.rollout configs/local.yaml --app canary --restart

`--restart` starts a rollout again: a promoted one moves the champion alias
back to the version it had before (a manual rollback of the promotion), a
rolled-back one gets another try; the running controller picks it up
within a tick.
"""
from __future__ import annotations

import argparse
import datetime
import json
from typing import Any, Optional

import yaml

from deployments.graph.args import IMPORT_PATH, parse_args
from deployments.graph.rollout_plans import plans
from deployments.rollouts import RolloutPlan
from deployments.rollouts.policy import RolloutState, challenger_weight
from deployments.rollouts.store import RegistryStore


def rollout_plans(config_path: str, app: Optional[str]) -> list[tuple[str, RolloutPlan]]:
    """(app name, plan) of every split with a rollout in the config's graph apps."""
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    apps = [a for a in config.get("applications", []) if a.get("import_path") == IMPORT_PATH and (app is None or a.get("name") == app)]
    if not apps:
        raise SystemExit(f"{config_path}: no graph application{' named ' + app if app else ''}")
    found = [(a["name"], plan) for a in apps for plan in plans(parse_args(a.get("args") or {}).graph).values()]
    if not found:
        raise SystemExit(f"{config_path}: no split with a rollout{' in ' + app if app else ''}")
    return found


def _clock(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S")


def describe(app: str, plan: RolloutPlan, champion: str, challenger: str, state: Optional[RolloutState],
             now: float) -> str:
    config = plan.config
    lines = [f"{app} / split {plan.split}: {plan.model}@{plan.champion_alias} v{champion}, "
             f"{plan.model}@{plan.challenger_alias} v{challenger}"]
    weight = challenger_weight(state, champion, challenger)
    current = state is not None and state.challenger_version == challenger and \
        (state.champion_version == champion or state.status == "promoted")
    if not current:
        lines.append("  nothing to roll out: both aliases name one version" if champion == challenger else
                     "  not started yet: the app's controller starts it within a tick once it runs")
    elif state.status == "running":
        lines.append(f"  running: step {state.step + 1} of {len(config.steps)}, {plan.challenger} at {weight:.0%} "
                     f"({now - state.step_started_at:.0f} s of the step's {config.dwell_s:g} s dwell)")
    elif state.status == "promoted":
        lines.append(f"  promoted: @{plan.champion_alias} moved from v{state.champion_version} to v{state.challenger_version}")
    else:
        lines.append(f"  rolled back: {plan.challenger} at 0 %: {state.reason}")
    for event in (state.history if current else []):
        reason = f" ({event['reason']})" if event.get("reason") else ""
        lines.append(f"    {_clock(event['at'])} {event['event']:<11} {plan.challenger} {event['weight']:.0%}{reason}")
    return "\n".join(lines)


def restart(plan: RolloutPlan, store: Any) -> str:
    champion, challenger, state = store.current()
    if state is not None and state.status == "promoted" and champion == challenger:
        store.point_champion(state.champion_version)
        store.forget(challenger)
        return f"@{plan.champion_alias} back to v{state.champion_version}; the rollout of v{challenger} starts again"
    if state is not None:
        store.forget(challenger)
        return f"the record of v{challenger}'s rollout dropped; it starts again from step 1"
    return "nothing to restart"


def main(argv: Optional[list[str]] = None) -> None:
    import time

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the Serve config the graphs were deployed from")
    parser.add_argument("--app", help="only this graph application")
    parser.add_argument("--json", action="store_true", help="each rollout's record as JSON, one per line")
    parser.add_argument("--restart", action="store_true", help="start the rollout(s) again (see above)")
    args = parser.parse_args(argv)
    for app, plan in rollout_plans(args.config, args.app):
        store = RegistryStore(plan)
        if args.restart:
            print(f"{app} / split {plan.split}: {restart(plan, store)}")
            continue
        champion, challenger, state = store.current()
        if args.json:
            print(json.dumps({"app": app, "split": plan.split, "model": plan.model, "champion": champion,
                              "challenger": challenger, "weight": challenger_weight(state, champion, challenger),
                              "record": json.loads(state.to_json()) if state else None}))
        else:
            print(describe(app, plan, champion, challenger, state, time.time()))


if __name__ == "__main__":
    main()
