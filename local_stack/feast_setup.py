"""Create the Feast repo from the project's definitions, `feast apply` it and
materialize the offline parquet into the SQLite online store."""
from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from local_stack.paths import StackPaths

TEMPLATE = Path(__file__).resolve().parent / "feature_repo"
FEATURE_SERVICE = "ranking"


def write_repo(paths: StackPaths) -> Path:
    repo = paths.feast_repo
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "definitions.py"):
        shutil.copyfile(TEMPLATE / name, repo / name)
    return repo


def _feast(repo: Path, *args: str) -> None:
    feast_cli = Path(sys.executable).parent / "feast"
    subprocess.run([str(feast_cli), *args], cwd=repo, check=True)


def apply_and_materialize(paths: StackPaths) -> None:
    repo = write_repo(paths)
    _feast(repo, "apply")
    end = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    _feast(repo, "materialize-incremental", end)


def is_materialized(paths: StackPaths) -> bool:
    return (paths.feast_repo / "online_store.db").exists() and (paths.feast_repo / "registry.db").exists()
