"""The registry that the report prints, per-image evaluation, aggregates and the
reviewers' CSV / JSON exports."""

import csv
import json
import math

import pytest
import torch
from torch import nn

from reportgen.compute.metrics import (
    GROUPS,
    METRICS,
    MetricInputs,
    MetricRow,
    MetricSettings,
    aggregate,
    evaluate_image,
    metrics_of,
    write_metrics_csv,
    write_metrics_json,
)

SIZE = 16


def square(top: int, left: int, side: int = 6) -> torch.Tensor:
    out = torch.zeros(SIZE, SIZE)
    out[top:top + side, left:left + side] = 1
    return out


class LogitsAreTheImage(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


def test_every_metric_is_fully_described_for_the_report():
    for name, spec in METRICS.items():
        assert spec.name == name and name.isidentifier()
        assert spec.title and spec.formula and spec.reference and spec.unit
        assert spec.direction in ("higher", "lower", "n/a")
        assert spec.group in GROUPS and spec.needs
    assert {g: [s.name for s in metrics_of([g])] for g in GROUPS} == {
        "attention": ["attention_mean", "attention_std", "attention_ratio"],
        "dice": ["dice", "iou"],
        "localisation": ["energy_pointing_game", "pointing_game"],
        "faithfulness": ["deletion_auc", "insertion_auc"],
        "sanity": ["sanity_spearman", "sanity_ssim"],
    }
    assert [METRICS[n].title for n in ("attention_mean", "attention_std", "attention_ratio")] == [
        "attention mean", "attention std", "attention ratio"]


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match="unknown metric groups"):
        metrics_of(["attention", "dise"])


def inputs(**given) -> MetricInputs:
    maps = {("encoder_last", "gradcam"): square(2, 2), ("encoder_last", "layercam"): square(8, 8)}
    return MetricInputs("img-1", maps=maps, **given)


def by_metric(rows: list[MetricRow]) -> dict[tuple[str, str], MetricRow]:
    return {(row.metric, row.method): row for row in rows}


def test_image_rows_hold_values_and_missing_inputs_are_named():
    rows = by_metric(evaluate_image(inputs(prediction=square(2, 2)), GROUPS))
    assert rows["attention_ratio", "gradcam"].value == math.inf
    assert rows["attention_ratio", "layercam"].value == 0.0
    assert rows["dice", ""].reason == "no ground-truth mask"
    assert rows["dice", ""].layer == ""
    assert rows["energy_pointing_game", "gradcam"].reason == "no ground-truth mask"
    assert rows["deletion_auc", "gradcam"].reason == "no input image, no model"
    assert rows["sanity_ssim", "gradcam"].reason == "no model"
    assert all(row.value is None for row in rows.values() if row.status != "ok")


def test_faithfulness_is_measured_once_for_both_curves():
    calls = []

    class Counting(LogitsAreTheImage):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            calls.append(len(images))
            return images

    image = square(2, 2)[None] * 4 - 2
    given = inputs(prediction=square(2, 2), image=image, model=Counting(),
                   settings=MetricSettings(faithfulness_steps=4, faithfulness_baseline="zero"))
    rows = by_metric(evaluate_image(given, ["faithfulness"]))
    # One batch for the shared endpoints, then 2 maps x 3 interior steps x 2 curves.
    assert sum(calls) == 2 + 2 * 3 * 2
    assert rows["deletion_auc", "gradcam"].value < rows["deletion_auc", "layercam"].value
    assert rows["insertion_auc", "gradcam"].value > rows["insertion_auc", "layercam"].value


def test_faithfulness_without_target_region_is_na():
    given = inputs(prediction=torch.zeros(SIZE, SIZE), image=torch.rand(1, SIZE, SIZE),
                   model=LogitsAreTheImage())
    rows = evaluate_image(given, ["faithfulness"])
    assert {(row.status, row.reason) for row in rows} == {("n/a", "target region is empty")}


def rows_of(values: list[float | None]) -> list[MetricRow]:
    return [MetricRow(f"img-{i}", "encoder_last", "gradcam", "attention_ratio", value,
                      "ok" if value is not None else "n/a",
                      "" if value is not None else "predicted mask is empty")
            for i, value in enumerate(values)]


def test_aggregate_gives_the_statistics_and_counts_na_with_reasons():
    (row,) = aggregate(rows_of([4.0, 1.0, None, 3.0, 2.0]))
    assert (row.n, row.n_na, row.na_reasons) == (4, 1, {"predicted mask is empty": 1})
    assert (row.mean, row.median, row.min, row.max) == (2.5, 2.5, 1.0, 4.0)
    assert row.std == pytest.approx(math.sqrt(5 / 3))


def test_aggregate_of_unbounded_or_missing_values_leaves_undefined_statistics_empty():
    unbounded, missing = aggregate(rows_of([math.inf, 1.0]) + [
        MetricRow("img-0", "encoder_last", "gradcam", "dice", None, "n/a", "why")])
    assert (missing.metric, missing.n, missing.mean, missing.std) == ("dice", 0, None, None)
    assert (unbounded.mean, unbounded.std, unbounded.max) == (math.inf, None, math.inf)


def test_exports_never_write_na_as_a_number_and_are_deterministic(tmp_path):
    rows = rows_of([0.1, None, math.inf])
    csv_path, json_path = tmp_path / "m.csv", tmp_path / "m.json"
    write_metrics_csv(rows, csv_path)
    write_metrics_json(rows, json_path)
    assert csv_path.read_text() == (
        "image,layer,method,metric,value,status,reason\n"
        "img-0,encoder_last,gradcam,attention_ratio,0.1,ok,\n"
        "img-1,encoder_last,gradcam,attention_ratio,,n/a,predicted mask is empty\n"
        "img-2,encoder_last,gradcam,attention_ratio,inf,ok,\n")
    records = json.loads(json_path.read_text())
    assert [r["value"] for r in records] == [0.1, None, "inf"]

    summary = aggregate(rows)
    write_metrics_csv(summary, csv_path)
    (line,) = list(csv.DictReader(csv_path.open()))
    assert line["std"] == "" and line["na_reasons"] == "predicted mask is empty (1)"
    write_metrics_json(summary, json_path)
    assert json.loads(json_path.read_text())[0]["na_reasons"] == {"predicted mask is empty": 1}
