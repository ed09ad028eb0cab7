"""Drift detection with Evidently: a window of serving rows against the
model version's training sample.

Why Evidently and not alibi-detect (what Seldon and KServe use):
alibi-detect 0.13 pins numpy < 2, Pillow < 11 and numba < 0.60, which the
serving environment cannot take (vLLM and torch need numpy 2); Evidently
0.7 runs on it. Its per-column tests are chosen by column type and size
(for numerical columns a two-sample Kolmogorov-Smirnov test up to 1000
reference rows, a normed Wasserstein distance above), each with its own
threshold, and the window drifts when the share of drifted columns reaches
`drift_share` (its DataDriftPreset's rule). Nothing statistical is written
here: this module shapes the data in and the verdict out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry (iterative-telemetry): off

# Imported with the module (the monitor's replica start), not at its first
# check: the import takes seconds of CPU, which a check under load should not add.
from evidently import DataDefinition, Dataset, Report  # noqa: E402
from evidently.presets import DataDriftPreset  # noqa: E402


@dataclass
class ColumnDrift:
    score: float  # the test's statistic: a p-value (drift below the threshold) or a distance (drift above)
    method: str
    threshold: float
    drifted: bool


@dataclass
class DriftVerdict:
    drifted: bool
    share: float  # of the columns that drifted
    rows: int
    columns: dict[str, ColumnDrift] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "share": self.share, "rows": self.rows,
                "columns": {name: vars(column) for name, column in self.columns.items()}}


class DriftDetector:
    """Compares windows with one reference sample (a DataFrame of numeric columns)."""

    def __init__(self, reference: pd.DataFrame, drift_share: float = 0.5, method: Optional[str] = None):
        self.reference = reference.astype("float64")
        self.columns = list(reference.columns)
        self.drift_share = drift_share
        self.method = method  # None: Evidently picks per column (by type and size)

    def check(self, rows: list[dict[str, float]]) -> DriftVerdict:
        current = pd.DataFrame(rows).reindex(columns=self.columns).astype("float64")
        definition = DataDefinition(numerical_columns=self.columns)
        options = {"method": self.method} if self.method else {}
        report = Report([DataDriftPreset(columns=self.columns, drift_share=self.drift_share, **options)], include_tests=True)
        snapshot = report.run(Dataset.from_pandas(current, data_definition=definition),
                              Dataset.from_pandas(self.reference, data_definition=definition))
        return verdict(snapshot.dict(), len(current))


def verdict(result: dict[str, Any], rows: int) -> DriftVerdict:
    """Evidently's snapshot (DataDriftPreset with its tests) as a DriftVerdict:
    each column's ValueDrift metric and its test's status, and the share test."""
    metrics = {metric["id"]: metric for metric in result["metrics"]}
    columns, share_failed, share = {}, False, 0.0
    for test in result.get("tests", []):
        metric = metrics[test["metric_config"]["metric_id"]]
        failed = _status(test) == "FAIL"
        if test["id"] == "drift":
            config = metric["config"]
            columns[config["column"]] = ColumnDrift(float(metric["value"]), str(config["method"]), float(config["threshold"]), failed)
        elif metric["config"]["type"].endswith("DriftedColumnsCount"):
            share_failed, share = failed, float(metric["value"]["share"])
    return DriftVerdict(drifted=share_failed, share=share, rows=rows, columns=columns)


def _status(test: dict[str, Any]) -> str:
    status = test["status"]
    return str(getattr(status, "value", status)).rpartition(".")[2]
