"""The feature lookup's direct read (each view from Feast's online store
through its provider) gives exactly what Feast's `get_online_features` gives:
the same values, event timestamps and unknown entities, row for row, on the
session's SQLite store (tests/integration/test_feast_redis.py checks Redis)."""
from __future__ import annotations

import asyncio
import random

import pytest

from deployments.nodes.feature_lookup import FeatureLookup, FeatureLookupConfig

pytestmark = pytest.mark.integration

UNKNOWN_USER, UNKNOWN_ITEM = 999_999, 888_888


def both_reads(repo: str) -> tuple[FeatureLookup, FeatureLookup]:
    return (FeatureLookup(FeatureLookupConfig(repo_path=repo)),
            FeatureLookup(FeatureLookupConfig(repo_path=repo, read="get_online_features")))


def random_rows(rng: random.Random) -> list[dict[str, int]]:
    """Known and unknown users and items, repeats included."""
    users = [rng.randint(1, 1000) for _ in range(3)] + [UNKNOWN_USER]
    items = [rng.randint(1, 500) for _ in range(10)] + [UNKNOWN_ITEM]
    return [{"user_id": rng.choice(users), "item_id": rng.choice(items)} for _ in range(rng.randint(1, 40))]


def test_the_direct_read_gives_what_get_online_features_gives(stack):
    direct, sdk = both_reads(str(stack.feast_repo))
    assert direct.config.read == "direct"  # the default
    rng = random.Random(7)

    async def compare():
        for _ in range(25):
            rows = random_rows(rng)
            mine, feasts = await direct.lookup(rows), await sdk.lookup(rows)
            assert mine.values == feasts.values
            assert mine.timestamps == feasts.timestamps
            assert mine.missing == feasts.missing

    asyncio.run(compare())


def test_the_direct_read_reads_each_entity_of_a_view_once(stack):
    direct, _ = both_reads(str(stack.feast_repo))
    reads = []
    original = direct.provider.online_read

    def recorded(config, view, keys, features):
        reads.append((view.name, len(keys)))
        return original(config, view, keys, features)

    direct.provider.online_read = recorded
    rows = [{"user_id": 7, "item_id": item} for item in (1, 2, 3, 2, 1)] + [{"user_id": 8, "item_id": 1}]
    frame = asyncio.run(direct.lookup(rows))
    assert sorted(reads) == [("item_features", 3), ("user_features", 2)]  # one call per view, unique keys only
    assert frame.values["item_features__price"][0] == frame.values["item_features__price"][4] == frame.values["item_features__price"][5]
