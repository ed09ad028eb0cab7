"""References: how a node's inputs, a switch condition or the answer point at
data. `request.user_id`, `features` (a whole node output),
`ranking.best.item_id`, `features.user_features__age[0]`.

The first segment is `request` or a slot: a node's name or a flow step's
`name`. The rest walks mapping keys, attributes and list indexes. A walk
through a null (a soft node that failed) yields null rather than an error,
so that the answer carries the null and the reason.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Mapping

from deployments.nodes.base import REFERENCE_PATTERN
from deployments.nodes.feature_lookup import FeatureFrame

REQUEST = "request"
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class Missing(LookupError):
    """A segment of a reference names nothing in the value it walks."""


@dataclass(frozen=True)
class Reference:
    root: str
    path: tuple[str | int, ...]
    text: str

    @classmethod
    @functools.lru_cache(maxsize=4096)  # parsed once per config string, not per request
    def parse(cls, text: str) -> "Reference":
        if not re.match(REFERENCE_PATTERN, text):
            raise ValueError(f"{text!r} is not a reference (name, then .field or [index] segments)")
        root = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text).group(0)
        path = tuple(name if name else int(index) for name, index in _SEGMENT.findall(text[len(root):]))
        return cls(root, path, text)

    def resolve(self, state: Mapping[str, Any]) -> Any:
        """Raises Missing when a segment names nothing (a null short-circuits to null)."""
        if self.root not in state:
            raise Missing(f"{self.root!r} has not run")
        value = state[self.root]
        for segment in self.path:
            if value is None:
                return None
            value = _step(value, segment)
        return value


def _step(value: Any, segment: str | int) -> Any:
    if isinstance(segment, int):
        try:
            return value[segment]
        except (IndexError, KeyError, TypeError):
            raise Missing(f"has no index [{segment}]") from None
    if isinstance(value, FeatureFrame):  # a feature lookup's output: columns by feature name
        if segment in value.values:
            return value.values[segment]
        raise Missing(f"has no feature {segment!r} (features: {sorted(value.values)})")
    if isinstance(value, Mapping):
        if segment in value:
            return value[segment]
        raise Missing(f"has no field {segment!r} (fields: {sorted(map(str, value))})")
    if hasattr(value, segment) and not segment.startswith("_"):
        return getattr(value, segment)
    raise Missing(f"has no field {segment!r}")
