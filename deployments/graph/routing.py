"""Routing decisions: which switch case holds, which split variant a key gets.

The split hashes `salt:key` with SHA-256 (never Python's `hash()`, which is
salted per process) onto [0, 1) and picks the variant whose cumulative weight
range holds it: the same user gets the same variant in every replica and
after every restart, and changing a weight moves only the users in the
changed range.
"""
from __future__ import annotations

import hashlib
import operator
import random
from typing import Any, Sequence

from deployments.graph.spec import Condition

_COMPARE = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}


def holds(condition: Condition, value: Any) -> bool:
    """Whether the condition holds for the field's value (None: absent).
    Ordering comparisons with an absent or incomparable value are false."""
    if condition.op == "present":
        return value is not None
    if condition.op == "absent":
        return value is None
    if condition.op in ("in", "not_in"):
        inside = value in (condition.value or [])
        return inside if condition.op == "in" else not inside
    if value is None and condition.op not in ("eq", "ne"):
        return False
    try:
        return bool(_COMPARE[condition.op](value, condition.value))
    except TypeError:
        return False


def bucket(salt: str, key: Any) -> float:
    """A stable point in [0, 1) for a key."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(weights: Sequence[float], point: float) -> int:
    """Index of the weight range that holds `point` (zero weights are never picked)."""
    edge = 0.0
    for index, weight in enumerate(weights):
        edge += weight
        if point < edge and weight > 0:
            return index
    return max(i for i, w in enumerate(weights) if w > 0)  # rounding at the top edge


def choose(weights: Sequence[float], salt: str, key: Any = None) -> int:
    point = bucket(salt, key) if key is not None else random.random()
    return pick(weights, point)
