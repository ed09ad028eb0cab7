"""Which series a Prometheus scrape stores, read from exposition text.

Prometheus stores every sample line under the name written on it: a
histogram `x` as `x_bucket`, `x_sum`, `x_count`; a counter as written
(`ray_serve_num_http_requests_total` from Ray's OpenTelemetry exporter,
`nv_inference_count` from Triton's prometheus-cpp). A query must use those
names, so they are what is collected here, with the label names seen on each.

The text goes through `prometheus_client`'s parser (bad exposition fails
loudly, and it gives the family types for hints). That parser rewrites one
thing: a counter whose `# TYPE` name lacks `_total` gets `_total` appended to
its samples (OpenMetrics' convention), though Prometheus stores them without
it; the names written in the text are restored here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_SAMPLE_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


@dataclass
class Exposition:
    """Stored series names -> label names; family name -> type."""

    series: dict[str, set[str]] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.series

    def labels(self, name: str) -> set[str]:
        return self.series.get(name, set())

    def merge(self, other: "Exposition") -> "Exposition":
        """Several scrapes (Ray's endpoint, Triton's) as one: the union of both."""
        merged = Exposition({k: set(v) for k, v in self.series.items()}, dict(self.families))
        for name, labels in other.series.items():
            merged.series.setdefault(name, set()).update(labels)
        merged.families.update(other.families)
        return merged

    def hint(self, name: str) -> str:
        """Why a name is absent, when the scrape says: a family queried
        without its suffix, a suffix that family does not have, a family with
        no samples yet, or a near name."""
        kind = self.families.get(name)
        present = sorted(n for n in self.series if n.startswith(name) and n[len(name):] in _SUFFIXES)
        if present:
            return f"{name} is a {kind or 'family'} exported as {', '.join(present)}"
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in self.families:
                base = name[: -len(suffix)]
                stored = sorted(n for n in self.series if n == base or (n.startswith(base) and n[len(base):] in _SUFFIXES))
                if stored:
                    return f"{base} is a {self.families[base]} exported as {', '.join(stored)}"
                return f"{base} is declared ({self.families[base]}) but has no samples yet"
        if kind is not None:
            return f"{name} is declared ({kind}) but has no samples yet"
        near = [n for n in self.series if _close(n, name)]
        return f"did you mean {', '.join(sorted(near)[:3])}?" if near else ""


def _close(a: str, b: str) -> bool:
    """One edit apart (a typo), for hints only."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def parse(text: str) -> Exposition:
    """Exposition text (Prometheus text format 0.0.4 or OpenMetrics) -> Exposition."""
    written = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            match = _SAMPLE_NAME.match(line)
            if match:
                written.add(match.group(0))
    result = Exposition()
    for family in text_string_to_metric_families(text):
        result.families[family.name] = family.type
        for sample in family.samples:
            name = sample.name
            if name not in written and name.endswith("_total") and name[: -len("_total")] in written:
                name = name[: -len("_total")]  # undo the parser's OpenMetrics renaming
            result.series.setdefault(name, set()).update(sample.labels)
    return result
