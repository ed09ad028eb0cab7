"""Feast definitions of the demo: entities `user` and `item`, one feature
view each, and the `ranking` feature service whose feature order is the
ranker's input order.

`feast apply` runs on a copy of this file placed in `.local/feast/`, next to
the data folder it reads (`.local/data/`).
"""
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32

DATA = Path(__file__).resolve().parent.parent / "data"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A shopper.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A catalogue item.")

user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(days=30),
    schema=[
        Field(name="age", dtype=Float32),
        Field(name="activity", dtype=Float32),
        *(Field(name=f"taste_{g}", dtype=Float32) for g in range(4)),
    ],
    source=FileSource(name="users", path=str(DATA / "users.parquet"), timestamp_field="event_timestamp"),
    online=True,
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(days=30),
    schema=[
        Field(name="price", dtype=Float32),
        Field(name="popularity", dtype=Float32),
        *(Field(name=f"genre_{g}", dtype=Float32) for g in range(4)),
    ],
    source=FileSource(name="items", path=str(DATA / "items.parquet"), timestamp_field="event_timestamp"),
    online=True,
)

ranking = FeatureService(name="ranking", features=[user_features, item_features])
