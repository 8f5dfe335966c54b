"""Metrics of segmentation predictions and their class-activation maps.

    from reportgen.compute.metrics import MetricInputs, evaluate_image, aggregate, write_metrics_csv
    rows = evaluate_image(MetricInputs("img-001", maps=result_maps, prediction=mask,
                                       ground_truth=truth, image=x, model=model))
    write_metrics_csv(rows, "metrics.csv")
    write_metrics_csv(aggregate(rows), "metrics_summary.csv")

Every metric is one entry of `METRICS` (name, title, formula, direction,
reference, unit, needs, group); the report prints definitions from there.
"""

from reportgen.compute.metrics.attention import (
    Verdict,
    VerdictBands,
    attention_mean,
    attention_ratio,
    attention_std,
    verdict,
)
from reportgen.compute.metrics.export import (
    AggregateRow,
    aggregate,
    write_metrics_csv,
    write_metrics_json,
)
from reportgen.compute.metrics.faithfulness import (
    FaithfulnessCurves,
    ScoreFn,
    baseline_image,
    deletion_insertion,
    target_score_fn,
)
from reportgen.compute.metrics.localisation import energy_pointing_game, pointing_game
from reportgen.compute.metrics.registry import (
    GROUPS,
    METRICS,
    MetricInputs,
    MetricRow,
    MetricSettings,
    MetricSpec,
    evaluate_image,
    metrics_of,
)
from reportgen.compute.metrics.sanity import (
    DEFAULT_THRESHOLD,
    ExplainFn,
    SanityLevel,
    SanityResult,
    SanityVerdict,
    cascade_order,
    model_stages,
    reinitialise,
    sanity_check,
    spearman,
    ssim,
)
from reportgen.compute.metrics.segmentation import dice, iou
from reportgen.compute.metrics.values import MapKey, MetricValue, Status

__all__ = [
    "DEFAULT_THRESHOLD",
    "GROUPS",
    "METRICS",
    "AggregateRow",
    "ExplainFn",
    "FaithfulnessCurves",
    "MapKey",
    "MetricInputs",
    "MetricRow",
    "MetricSettings",
    "MetricSpec",
    "MetricValue",
    "SanityLevel",
    "SanityResult",
    "SanityVerdict",
    "ScoreFn",
    "Status",
    "Verdict",
    "VerdictBands",
    "aggregate",
    "attention_mean",
    "attention_ratio",
    "attention_std",
    "baseline_image",
    "cascade_order",
    "deletion_insertion",
    "dice",
    "energy_pointing_game",
    "evaluate_image",
    "iou",
    "metrics_of",
    "model_stages",
    "pointing_game",
    "reinitialise",
    "sanity_check",
    "spearman",
    "ssim",
    "target_score_fn",
    "verdict",
    "write_metrics_csv",
    "write_metrics_json",
]
