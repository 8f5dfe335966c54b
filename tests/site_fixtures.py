"""Synthetic report inputs for the site tests: a context, image results and aggregates.

Everything is made from a seeded generator, so two calls give equal objects.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from reportgen.report.results import (
    AggregateRow,
    Cell,
    ImageResult,
    LayerRow,
    MethodRow,
    MetricDefinition,
    ModelCard,
    ReportContext,
    SanityRow,
    ShownValue,
)

HOSTILE = "<script>alert(1)</script>"
HOSTILE_FILE = "<img src=x onerror=alert(2)>.png"
LAYERS = ["encoder_last", "decoder_last"]
METHODS = ["gradcam", "gradcam++"]
METRICS = ["attention_mean", "attention_std", "attention_ratio", "energy_pointing_game",
           "deletion_auc", "insertion_auc"]
VERDICTS = ["excellent", "good", "fair", "concerning"]


def make_context(title: str = f"Validation {HOSTILE}", image_count: int = 3) -> ReportContext:
    """A report context with two layers, two methods and the seed's metric definitions."""
    definitions = [
        MetricDefinition("attention_mean", "attention mean", "mean(L)", "context", "seed",
                         "attention"),
        MetricDefinition("attention_std", "attention std", "std(L)", "context", "seed",
                         "attention"),
        MetricDefinition("attention_ratio", "attention ratio", "mean(L in P) / mean(L out of P)",
                         "higher is better", "seed", "attention"),
        MetricDefinition("energy_pointing_game", "energy pointing game", "sum(L in GT) / sum(L)",
                         "higher is better", "Wang et al., 2020", "localisation"),
        MetricDefinition("deletion_auc", "deletion AUC", "area under the deletion curve",
                         "lower is better", "Petsiuk et al., 2018", "faithfulness"),
        MetricDefinition("insertion_auc", "insertion AUC", "area under the insertion curve",
                         "higher is better", "Petsiuk et al., 2018", "faithfulness"),
    ]
    return ReportContext(
        title=title,
        report_id="VAL-001",
        author="Quality team",
        date="2025-01-31",
        description="Explains the lesion model.\n\nSecond paragraph with <b>markup</b>.",
        intended_use="Validation of the segmentation model.",
        limitations="Synthetic data only.",
        reviewers=[("Dr. Reviewer", "Clinical lead")],
        pdf="report.pdf",
        model=ModelCard(
            architecture="UnetPlusPlus", encoder="efficientnet-b5",
            checkpoint_name=f"best_{HOSTILE}.pth", checkpoint_sha256="ab" * 32,
            checkpoint_format="state_dict", parameters=28_123_456, input_size=(64, 64),
            classes=["lesion"], target_class="lesion", activation="sigmoid",
            normalization="imagenet"),
        layers=[LayerRow("encoder_last", "encoder._blocks.38", 512, 32.0, "deepest features"),
                LayerRow("decoder_last", "decoder.blocks.x_0_4", 16, 1.0, "last decoder block")],
        methods=[MethodRow("gradcam", "gradient", "1 backward", "Selvaraju et al., 2017"),
                 MethodRow("gradcam++", "gradient", "1 backward", "Chattopadhay et al., 2018",
                           approximate=True, note="approximate: 16 of 320 channels")],
        metric_definitions=definitions,
        image_count=image_count,
        image_source="Dataset/test/*.png",
        mask_source="Dataset/test_masks/{stem}.png",
        target_region="prediction",
        spec_text=f"report:\n  title: {HOSTILE}\n",
        spec_name="validation.yaml",
        device="cpu",
        precision="fp32",
        seed=0,
        colormap="viridis",
        alpha=0.45,
        versions={"torch": "2.5.0", "numpy": "2.1.0"},
        timings={"cam": 1.5, "render": 0.25},
        warnings=[f"warning about {HOSTILE}"],
        excluded=[(f"bad_{HOSTILE}.png", "unreadable")],
        bounds=["Score-CAM approximate: 16 of 320 channels"],
        approximate=[("encoder_last", "gradcam++")],
        approximate_note="≈ approximate: 16 of 320 channels scored at encoder_last",
        verdict_note="Not counted: encoder_early (low ratios are expected there).",
    )


def disc(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """A bool disc mask."""
    y, x = np.mgrid[0:size, 0:size]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def make_result(index: int, size: int = 64, ground_truth: bool = True,
                source_name: str | None = None) -> ImageResult:
    """One synthetic image result: random maps, a disc prediction, every metric."""
    rng = np.random.default_rng(index)
    display = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    prediction = disc(size, (size / 2, size / 2 + index), size / 5)
    truth = disc(size, (size / 2, size / 2), size / 5) if ground_truth else None
    cells = {}
    for layer_index, layer in enumerate(LAYERS):
        for method_index, method in enumerate(METHODS):
            values = rng.random((size, size)).astype(np.float32)
            values = np.clip(values * 0.5 + prediction * 0.5, 0, 1).astype(np.float32)
            verdict = VERDICTS[(index + layer_index + method_index) % len(VERDICTS)]
            metrics = {name: ShownValue(float(rng.random() * (6 if name == "attention_ratio"
                                                                 else 1)))
                       for name in METRICS}
            flags: list[str] = []
            cell_map: np.ndarray | None = values
            if index == 1 and layer_index == 1 and method_index == 1:
                cell_map, flags, verdict = None, ["empty_target"], "n/a"
                metrics["attention_ratio"] = ShownValue(None, "predicted mask is empty")
            if index == 2 and layer_index == 0 and method_index == 0:
                flags, verdict = ["all_zero"], "n/a"
                cell_map = np.zeros((size, size), np.float32)
            cells[layer, method] = Cell(
                layer=layer, method=method, map=cell_map, flags=flags, metrics=metrics,
                verdict=verdict,
                curves={"deletion": list(np.linspace(1, 0, 11) ** (1 + index)),
                        "insertion": list(np.linspace(0, 1, 11) ** 0.5)})
    dice = ShownValue(0.5 + 0.1 * index) if ground_truth else None
    name = source_name or f"image_{index}.png"
    return ImageResult(
        id=f"img-{index:03d}", source=Path("Dataset/test") / name, display=display,
        probability=prediction.astype(np.float32), prediction=prediction, ground_truth=truth,
        mask_source=Path("Dataset/test_masks") / name if ground_truth else None,
        dice=dice, iou=ShownValue(0.4 + 0.1 * index) if ground_truth else None, cells=cells,
        notes=["resized to 64x64"] if index == 0 else [])


def make_results(count: int = 3) -> list[ImageResult]:
    """`count` results; the first two have hostile source file names, the last no ground
    truth."""
    results = []
    for index in range(count):
        name = {0: HOSTILE_FILE, 1: f"{HOSTILE}.png"}.get(index)
        results.append(make_result(index, ground_truth=index != count - 1, source_name=name))
    return results


def make_aggregates(results: list[ImageResult]) -> list[AggregateRow]:
    """Mean/std/median/min/max per layer x method x metric over `results`."""
    rows = []
    for layer in LAYERS:
        for method in METHODS:
            for metric in METRICS:
                values, reasons = [], {}
                for result in results:
                    value = result.cells[layer, method].metrics[metric]
                    if value.value is None:
                        reasons[value.reason] = reasons.get(value.reason, 0) + 1
                    else:
                        values.append(value.value)
                data = np.array(values)
                rows.append(AggregateRow(
                    layer=layer, method=method, metric=metric, n=len(values),
                    mean=float(data.mean()) if values else None,
                    std=float(data.std()) if values else None,
                    median=float(np.median(data)) if values else None,
                    min=float(data.min()) if values else None,
                    max=float(data.max()) if values else None,
                    n_na=len(results) - len(values), na_reasons=reasons))
    return rows


def make_sanity() -> list[SanityRow]:
    """Sanity rows for every layer x method, one undefined level."""
    levels = ["segmentation_head", "decoder", "encoder"]
    return [SanityRow(layer, method, levels, [0.9, 0.4, None], [0.8, 0.3, 0.1], 0.5,
                      passed=method == "gradcam", reason="" if method == "gradcam" else "high ρ")
            for layer in LAYERS for method in METHODS]


class PageParser(HTMLParser):
    """Collects the links, images and element ids of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.ids: set[str] = set()
        self.headings: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag in {"h1", "h2", "h3", "h4", "h5", "h6"}:
            self.headings.append(tag)
        if tag == "img":
            self.images.append(values)
        for name, value in attrs:
            if value and (name in {"href", "src"} or name.startswith("data-src-")):
                self.links.append(value)


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser
