"""Aggregation node: turn per-item scores into the top-k answer."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def top_k(item_ids: Sequence[Any], scores: np.ndarray, k: int) -> list[tuple[Any, float]]:
    """The k best items by score, ties kept in request order (stable)."""
    if len(item_ids) != len(scores):
        raise ValueError(f"{len(item_ids)} items but {len(scores)} scores")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return [(item_ids[i], float(scores[i])) for i in order]
