"""`serve deploy`, with the whole config checked first.

    python -m cli.deploy configs/cluster.yaml --address http://127.0.0.1:8265

`serve deploy` alone checks only the file's shape: a misspelt key is dropped
silently, and a bad application `args` value is found on the cluster, where
the application goes to DEPLOY_FAILED. Here the config goes through
`cli.check` (unknown keys, autoscaling values, each application's typed
args) and, when anything is wrong, nothing is sent: the running graphs are
not touched and the bad keys are printed with their paths (exit code 2).
A valid config is handed to `serve deploy` itself (the dashboard's REST
API), which updates the running applications in place: changes to
`num_replicas`, `autoscaling_config`, `user_config` or
`max_ongoing_requests` do not restart the replicas they leave unaffected.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from cli.check import ConfigError, check_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument(
        "--address", "-a", default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
        help="the Ray dashboard of the cluster (default: $RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265)",
    )
    args = parser.parse_args(argv)
    try:
        schema = check_file(args.config)
    except ConfigError as error:
        print(f"{args.config}: invalid, nothing deployed\n{error}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok ({', '.join(app.name for app in schema.applications)}); deploying to {args.address}", flush=True)
    serve = Path(sys.executable).parent / "serve"
    return subprocess.run([str(serve), "deploy", str(args.config), "--address", args.address]).returncode


if __name__ == "__main__":
    sys.exit(main())
