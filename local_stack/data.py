"""Seeded synthetic users, items and interactions, written as parquet.

Users have a taste vector over four genres, items a genre mix, a price and a
popularity; a click is drawn from a logistic function of their match. The
ranker learns that function back from Feast's point-in-time joins.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

N_USERS = 1000
N_ITEMS = 500
IMPRESSIONS_PER_USER = 24
GENRES = 4


def click_logit(user: pd.DataFrame, item: pd.DataFrame) -> np.ndarray:
    """The ground truth the ranker has to learn (rows aligned)."""
    taste = user[[f"taste_{g}" for g in range(GENRES)]].to_numpy()
    genre = item[[f"genre_{g}" for g in range(GENRES)]].to_numpy()
    match = (taste * genre).sum(axis=1)
    return (
        4.0 * match
        + 1.5 * item["popularity"].to_numpy()
        - 2.0 * item["price"].to_numpy() * (1.0 - user["activity"].to_numpy())
        - 1.0
    )


def generate(out_dir: Path, seed: int = 7, now: datetime | None = None) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    features_at = now - timedelta(days=2)

    taste = rng.dirichlet(np.ones(GENRES) * 0.6, size=N_USERS)
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, N_USERS + 1, dtype=np.int64),
            "age": rng.uniform(0.18, 0.8, N_USERS).astype(np.float32),
            "activity": rng.beta(2, 5, N_USERS).astype(np.float32),
            **{f"taste_{g}": taste[:, g].astype(np.float32) for g in range(GENRES)},
            "event_timestamp": [features_at - timedelta(minutes=int(m)) for m in rng.integers(0, 600, N_USERS)],
        }
    )
    genre = rng.dirichlet(np.ones(GENRES) * 0.4, size=N_ITEMS)
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, N_ITEMS + 1, dtype=np.int64),
            "price": rng.uniform(0.0, 1.0, N_ITEMS).astype(np.float32),
            "popularity": rng.beta(2, 3, N_ITEMS).astype(np.float32),
            **{f"genre_{g}": genre[:, g].astype(np.float32) for g in range(GENRES)},
            "event_timestamp": [features_at - timedelta(minutes=int(m)) for m in rng.integers(0, 600, N_ITEMS)],
        }
    )

    user_idx = np.repeat(np.arange(N_USERS), IMPRESSIONS_PER_USER)
    item_idx = rng.integers(0, N_ITEMS, size=user_idx.size)
    logit = click_logit(users.iloc[user_idx].reset_index(drop=True), items.iloc[item_idx].reset_index(drop=True))
    clicked = rng.random(user_idx.size) < 1.0 / (1.0 + np.exp(-logit))
    seconds_after = rng.integers(60, 36 * 3600, size=user_idx.size)
    interactions = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[user_idx],
            "item_id": items["item_id"].to_numpy()[item_idx],
            "label": clicked.astype(np.int64),
            "event_timestamp": [features_at + timedelta(seconds=int(s)) for s in seconds_after],
        }
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in (("users", users), ("items", items), ("interactions", interactions)):
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        paths[name] = out_dir / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    return paths
