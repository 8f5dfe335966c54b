"""Aggregates over images and the CSV / JSON exports for reviewers.

Files are deterministic: rows are sorted, floats are written with `repr`
(shortest round-trip form), infinities as "inf" / "-inf", and a value that is
not a number is written empty (CSV) or null (JSON), never as a number.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from reportgen.compute.metrics.registry import METRICS, MetricRow

_STATISTICS = ("mean", "std", "median", "min", "max")


@dataclass(frozen=True)
class AggregateRow:
    """One metric of one layer x method over the images.

    Statistics are over the n values with status "ok"; std is the sample standard
    deviation (n − 1), None for n < 2; the median of an even count is the mean of
    the two middle values. A statistic that is undefined (no values, or ∞ − ∞) is
    None. n_na counts the other rows, na_reasons maps each reason to its count.
    """

    layer: str
    method: str
    metric: str
    n: int
    mean: float | None
    std: float | None
    median: float | None
    min: float | None
    max: float | None
    n_na: int
    na_reasons: dict[str, int]


def _metric_order(metric: str) -> int:
    names = list(METRICS)
    return names.index(metric) if metric in names else len(names)


def _row_key(row: MetricRow | AggregateRow) -> tuple:
    return (getattr(row, "image", ""), row.layer, row.method, _metric_order(row.metric),
            row.metric)


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else value


def _statistics(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(_STATISTICS)
    data = torch.tensor(sorted(values), dtype=torch.float64)
    middle = (len(values) - 1) // 2
    median = (data[middle] + data[len(values) // 2]) / 2
    std = float(data.std(correction=1)) if len(values) > 1 else math.nan
    return {"mean": _defined(float(data.mean())), "std": _defined(std),
            "median": _defined(float(median)), "min": float(data[0]), "max": float(data[-1])}


def aggregate(rows: Iterable[MetricRow]) -> list[AggregateRow]:
    """mean, std, median, min, max, n and the n/a count with reasons per
    layer x method x metric (image-level metrics: empty layer and method)."""
    groups: dict[tuple[str, str, str], list[MetricRow]] = defaultdict(list)
    for row in rows:
        groups[row.layer, row.method, row.metric].append(row)
    result = []
    for (layer, method, metric), members in groups.items():
        values = [row.value for row in members if row.status == "ok" and row.value is not None]
        reasons = Counter(row.reason for row in members if row.status != "ok")
        result.append(AggregateRow(
            layer, method, metric, n=len(values), **_statistics(values),
            n_na=len(members) - len(values), na_reasons=dict(sorted(reasons.items())),
        ))
    return sorted(result, key=_row_key)


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return repr(value)


def _columns(rows: Sequence[MetricRow | AggregateRow]) -> list[str]:
    return [f.name for f in fields(rows[0])] if rows else [f.name for f in fields(MetricRow)]


def _cells(row: MetricRow | AggregateRow) -> dict[str, object]:
    return {f.name: getattr(row, f.name) for f in fields(row)}


def write_metrics_csv(rows: Iterable[MetricRow | AggregateRow], path: str | Path) -> None:
    """Write rows (per-image `MetricRow`s or `AggregateRow`s) as CSV, sorted.

    n/a reasons of aggregates are written as "reason (count); ..."."""
    ordered = sorted(rows, key=_row_key)
    with Path(path).open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(_columns(ordered))
        for row in ordered:
            writer.writerow([_csv_cell(value) for value in _cells(row).values()])


def _csv_cell(value: object) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{reason} ({count})" for reason, count in value.items())
    if isinstance(value, float) or value is None:
        return _number(value)
    return str(value)


def write_metrics_json(rows: Iterable[MetricRow | AggregateRow], path: str | Path) -> None:
    """Write rows as a JSON list of objects, sorted; numbers stay numbers, n/a is
    null, infinities are the strings "inf" / "-inf"."""
    ordered = sorted(rows, key=_row_key)
    records = [{name: _json_number(value) if isinstance(value, float) else value
                for name, value in _cells(row).items()} for row in ordered]
    text = json.dumps(records, indent=1, ensure_ascii=False, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
