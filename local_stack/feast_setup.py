"""Feast from the project's definitions, for two online stores:

- the local stack's (`apply_and_materialize(paths)`): the repo in `.local/feast`
  with its own feature_store.yaml, SQLite online store, registry.db next to it;
- the cluster config's (`prepare_cluster_store`): configs/feast/cluster/feature_store.yaml,
  Redis online store, `FEAST_REDIS_CONNECTION` and `FEAST_REGISTRY_PATH` from
  the environment, materialized over the same window as the local store, so
  both hold the same rows.

The definitions are always the copy in `.local/feast/definitions.py`, next to
the data folder its file sources read (`.local/data/`). Apply and materialize
run in process through Feast's Python API (what `feast apply` and `feast
materialize` run, without a CLI start-up of several seconds per step).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Mapping

from local_stack.paths import PROJECT_ROOT, StackPaths

os.environ.setdefault("FEAST_USAGE", "False")

TEMPLATE = Path(__file__).resolve().parent / "feature_repo"
FEATURE_SERVICE = "ranking"
CLUSTER_REPO = PROJECT_ROOT / "configs" / "feast" / "cluster"
CLUSTER_ENV = ("FEAST_REDIS_CONNECTION", "FEAST_REGISTRY_PATH")


def write_repo(paths: StackPaths) -> Path:
    repo = paths.feast_repo
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "definitions.py"):
        shutil.copyfile(TEMPLATE / name, repo / name)
    return repo


def definitions(paths: StackPaths) -> list:
    """The Feast objects of the stack's definitions.py, collected as `feast apply`
    collects them (module globals that are Feast objects)."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    source = paths.feast_repo / "definitions.py"
    spec = importlib.util.spec_from_file_location(f"_feast_definitions_{abs(hash(str(source)))}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (DataSource, Entity, FeatureView, FeatureService)
    return [value for value in vars(module).values() if isinstance(value, kinds)]


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `env` on top, restored afterwards. Feast expands the
    ${VAR}s of a feature_store.yaml once, when a FeatureStore reads it."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def open_store(repo: Path, env: Mapping[str, str] | None = None):
    """Feast's FeatureStore for the feature_store.yaml in `repo`, its ${VAR}s from `env` over os.environ."""
    from feast import FeatureStore

    with environment(env or {}):
        return FeatureStore(repo_path=str(repo))


def apply_and_materialize(
    paths: StackPaths,
    store_repo: Path | None = None,
    env: Mapping[str, str] | None = None,
    window: tuple[datetime, datetime] | None = None,
):
    """`feast apply` of the stack's definitions to the store configured in
    `store_repo` (default: the stack's own repo, SQLite), then materialize the
    offline parquet: over `window`, or incrementally up to now (the local stack)."""
    from feast import FeatureView

    if store_repo is None:
        store_repo = write_repo(paths)
    store = open_store(store_repo, env)
    objects = definitions(paths)
    provider = store._get_provider()
    for view in (obj for obj in objects if isinstance(obj, FeatureView) and obj.batch_source is not None):
        provider.validate_data_source(store.config, view.batch_source)  # as `feast apply` does
    store.apply(objects)
    if window is None:
        store.materialize_incremental(end_date=datetime.now(timezone.utc).replace(microsecond=0))
    else:
        store.materialize(start_date=window[0], end_date=window[1])
    return store


def is_materialized(paths: StackPaths) -> bool:
    return (paths.feast_repo / "online_store.db").exists() and (paths.feast_repo / "registry.db").exists()


def materialized_window(paths: StackPaths) -> tuple[datetime, datetime]:
    """The window the local online store was materialized over, from its registry."""
    store = open_store(paths.feast_repo)
    intervals = [interval for view in store.list_feature_views() for interval in view.materialization_intervals]
    if not intervals:
        raise RuntimeError(f"the Feast repo {paths.feast_repo} was never materialized: run `make stack`")
    return min(start for start, _ in intervals), max(end for _, end in intervals)


def cluster_env(redis_connection: str, registry_path: str | Path) -> dict[str, str]:
    """The two variables configs/feast/cluster/feature_store.yaml reads."""
    return {"FEAST_REDIS_CONNECTION": redis_connection, "FEAST_REGISTRY_PATH": str(registry_path)}


def prepare_cluster_store(paths: StackPaths, redis_connection: str, registry_path: str | Path) -> dict[str, str]:
    """The cluster config run here: apply the stack's definitions with
    configs/feast/cluster/feature_store.yaml against the given Redis and registry
    file, materialize the rows the local SQLite store holds. Returns the
    environment a FeatureStore / FeatureLookup on configs/feast/cluster needs.
    Idempotent: run it again after a (non-persistent) Redis restarted."""
    env = cluster_env(redis_connection, registry_path)
    apply_and_materialize(paths, CLUSTER_REPO, env, window=materialized_window(paths))
    return env
