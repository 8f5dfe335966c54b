"""The per-image computation of a build: the plan a spec makes against its model, and
the `Pipeline` that turns a batch of images into maps, metric rows and page data.

A build runs one Pipeline in its own process; the Ray executor runs one per worker,
set up the same way (`plan_layers`, then `Pipeline`), so the maps and metrics do not
depend on where they were computed.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from reportgen.compute.cam import CamEngine, SegmentationTarget
from reportgen.compute.cam.methods import METHODS
from reportgen.compute.cam.normalise import FLAG_REASONS
from reportgen.compute.data import Sample
from reportgen.compute.metrics import (
    METRICS,
    FaithfulnessCurves,
    MetricInputs,
    MetricRow,
    MetricSettings,
    evaluate_image,
    verdict,
)
from reportgen.compute.models import LayerInfo, describe_layers, resolve_layers
from reportgen.report.results import Cell, ImageResult, ShownValue
from reportgen.spec import Spec

UNDEFINED_FLAGS = ("empty_target", "non_finite")
NON_FINITE_OUTPUT = "the model's output holds NaN or infinite values"


class Stopwatch:
    """Seconds per stage, summed over the build (stages may overlap: the images are
    computed in a background thread or on workers while the pages are written)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        """Count `seconds` more for `stage` (from any thread)."""
        with self._lock:
            self.totals[stage] = self.totals.get(stage, 0.0) + seconds


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to `count` while inside (None: left as they are). CPU
    results depend on the thread count (how reductions are split), so builds that must
    agree to the byte set the same count (`runtime.threads`)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int, device: torch.device) -> list[str]:
    """Seed every generator and ask torch for deterministic kernels.

    Returns what could not be made deterministic (recorded in the manifest).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    notes = []
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        notes.append("CUDA: bilinear upsampling backward and atomics-based reductions have no "
                     "deterministic kernel; maps may differ in the last bits between runs")
    return notes


@dataclass
class Plan:
    """What the spec asks for, resolved against the model and the registries: facts only
    (`reportgen.report.wording` words them for the reader)."""

    spec: Spec
    layers: dict[str, str]  # spec name -> module path
    gradient_methods: list[str]  # everything but Score-CAM: one engine call
    scorecam_layers: list[str]
    faithfulness_keys: set[tuple[str, str]]
    sanity_keys: list[tuple[str, str]]
    sanity_methods: list[str]  # the methods the sanity check randomises, in spec order
    sanity_images: int  # how many of the first images it uses
    approximate: list[tuple[str, str]]  # (layer, method) whose maps are approximations
    # layer -> (channels scored, channels of the layer) where Score-CAM is approximate
    scorecam_channels: dict[str, tuple[int, int]] = field(default_factory=dict)


def make_plan(spec: Spec, layers: dict[str, str], channels: dict[str, int | None],
              image_count: int) -> Plan:
    methods = spec.methods
    gradient_methods = [m for m in methods if m != "scorecam"]
    score = spec.method_options.scorecam
    scorecam_layers = (score.layers or list(layers)) if "scorecam" in methods else []
    scorecam_channels = {}
    if score.max_channels:
        for layer in scorecam_layers:
            k = channels.get(layer)
            if k and score.max_channels < k:
                scorecam_channels[layer] = (score.max_channels, k)
    faith = spec.metric_options.faithfulness
    faith_layers, faith_methods = faith.layers or list(layers), faith.methods or methods
    faithfulness_keys = set()
    if "faithfulness" in spec.metrics:
        faithfulness_keys = {(la, me) for la in faith_layers for me in faith_methods
                             if me != "scorecam" or la in scorecam_layers}
    sanity = spec.metric_options.sanity
    sanity_methods = sanity.methods or [m for m in methods if METHODS[m].family == "gradient"]
    sanity_keys = []
    if "sanity" in spec.metrics:
        sanity_keys = [(la, me) for la in sanity.layers or list(layers) for me in sanity_methods
                       if me != "scorecam" or la in scorecam_layers]
    return Plan(spec, layers, gradient_methods, scorecam_layers, faithfulness_keys, sanity_keys,
                sanity_methods, min(sanity.images, image_count),
                [(layer, "scorecam") for layer in scorecam_channels], scorecam_channels)


def segmentation_target(spec: Spec, region: str | None = None) -> SegmentationTarget:
    """The spec's target (`target`, `model.activation`), for `region` if given."""
    return SegmentationTarget(spec.target_index, region or spec.target.region,
                              spec.target.threshold, spec.model.output_activation)


def plan_layers(spec: Spec, model: torch.nn.Module,
                image_count: int) -> tuple[dict[str, str], list[LayerInfo], Plan]:
    """The spec's layers resolved on `model` (name -> module path), their channels and
    strides, and the plan of what to compute for `image_count` images."""
    m = spec.model
    resolved = resolve_layers(model, spec.layers, m.size, m.in_channels)
    infos = describe_layers(model, resolved, m.size, m.in_channels)
    return resolved, infos, make_plan(spec, resolved, {i.name: i.channels for i in infos},
                                      image_count)


COMPILE_BREAK_EVEN = 35_000
"""Masked forwards of 640 x 640 px past which compiling Score-CAM's model repays itself.
Measured on an H100 with U-Net++ efficientnet-b5: compilation 72 s when torch's on-disk
cache is cold, then 2.5 instead of 4.6 ms per masked forward (bf16). Smaller inputs
save proportionally less per forward, so they need proportionally more forwards. A
warm cache (a later build on the same machine) compiles in seconds, and repays sooner."""


def _compile_pays(spec: Spec, device: torch.device, infos, plan: Plan, images: int) -> bool:
    """Whether Score-CAM should run through torch.compile (`runtime.compile`)."""
    if spec.runtime.compile != "auto":
        return spec.runtime.compile == "always"
    if device.type != "cuda":
        return False
    channels = {i.name: i.channels or 0 for i in infos}
    cap = spec.method_options.scorecam.max_channels
    forwards = images * sum(min(channels[la], cap or channels[la]) for la in plan.scorecam_layers)
    height, width = spec.model.size
    return forwards * (height * width) / 640**2 >= COMPILE_BREAK_EVEN


@dataclass
class ImageOutput:
    """Everything computed for one image: its page data, metric rows and map arrays."""

    result: ImageResult
    rows: list[MetricRow]
    maps: dict[str, np.ndarray]  # "layer|method|normalised" / "...|raw" -> array
    region: torch.Tensor  # the target region the maps explain
    events: list[str] = field(default_factory=list)  # e.g. out-of-memory halvings (manifest)


class Pipeline:
    """The per-image computation (engine, prediction, metrics) of one spec.

    Built once per process, or once per worker when images are sharded: it holds
    the model and the engines; `process` is a function of the images alone.
    """

    def __init__(self, spec: Spec, model: torch.nn.Module, resolved: dict[str, str], plan: Plan,
                 infos, device: torch.device, images_to_compute: int):
        self.spec, self.model, self.plan, self.device = spec, model, plan, device
        # what decides whether compiling repays: images already cached cost no forwards
        self.images_to_compute = images_to_compute
        self.target = segmentation_target(spec)
        precision = spec.runtime.precision
        self.engines: list[CamEngine] = []
        if plan.gradient_methods:
            self.engines.append(CamEngine(model, resolved, plan.gradient_methods, device=device,
                                          precision=precision,
                                          batch_size=spec.runtime.batch_size))
        # the manifest records this decision, not whether any image needed it: on the CPU
        # (auto never compiles there) a rebuild from the cache writes the same manifest as
        # the build that filled it; on CUDA, whose builds are not byte-reproducible anyway,
        # it says what this build would have done for the images it computed
        self.scorecam_compiled = bool(plan.scorecam_layers) and _compile_pays(
            spec, device, infos, plan, images_to_compute)
        if plan.scorecam_layers:
            score = spec.method_options.scorecam
            self.engines.append(CamEngine(
                model, {k: resolved[k] for k in plan.scorecam_layers}, ["scorecam"],
                device=device, precision=precision, batch_size=spec.runtime.batch_size,
                scorecam_max_channels=score.max_channels, scorecam_chunk=score.chunk_size,
                scorecam_compile=self.scorecam_compiled))
        self.settings = MetricSettings(
            bands=spec.metric_options.attention.bands,
            faithfulness_steps=spec.metric_options.faithfulness.steps,
            faithfulness_baseline=spec.metric_options.faithfulness.baseline,
            sanity_threshold=spec.metric_options.sanity.threshold,
            # forward-only batches: on a CPU small batches stay in cache (batch 8 costs
            # 40 ms per 192 px image on 2 cores, batch 32 64 ms); a GPU wants them large
            batch_size=spec.runtime.batch_size * (4 if device.type == "cuda" else 1),
        )

    def process(self, part: list[Sample], clock: Stopwatch) -> list[ImageOutput]:
        if not part:  # every image of the batch came from the cache
            return []
        images = torch.stack([s.tensor for s in part])
        gt = None
        if all(s.gt_mask is not None for s in part):
            gt = torch.stack([torch.from_numpy(s.gt_mask) for s in part])
        results = []
        for engine in self.engines:
            with clock("scorecam" if engine.methods[0].name == "scorecam" else "cam"):
                results.append(engine.explain(images, self.target, gt))
        logits = results[0].logits.float()
        regions = results[0].regions
        probability = self.target.probability(logits)
        prediction = self.target.prediction(logits)
        on_device = images.to(self.device)  # one copy per batch for the metrics' forwards
        outputs = []
        for i, sample in enumerate(part):
            with clock("metrics"):
                result, rows, curves = self._image_result(_Explained.of(
                    sample, i, results, (probability[i], prediction[i], regions[i]),
                    on_device[i]))
            events = [event for r in results for event in r.events] if i == 0 else []
            if curves is not None:
                events += curves.events
                if curves.batch_size < self.settings.batch_size:  # what fitted, from now on
                    self.settings = dataclasses.replace(self.settings,
                                                        batch_size=curves.batch_size)
            outputs.append(ImageOutput(result, rows, _map_arrays(results, i), regions[i],
                                       [f"{sample.id}: {event}" for event in events]))
        return outputs

    def _image_result(self, image: _Explained
                      ) -> tuple[ImageResult, list[MetricRow], FaithfulnessCurves | None]:
        """Page data and metric rows of one image, and its faithfulness curves when
        computed."""
        spec, sample = self.spec, image.sample
        order = [(la, me) for la in self.plan.layers for me in spec.methods
                 if (la, me) in image.maps]
        defined = {k: image.maps[k] for k in order
                   if not set(image.flags[k]) & set(UNDEFINED_FLAGS)}
        rows, found = self._metric_rows(image, defined)
        curves: dict[tuple[str, str], dict[str, list[float]]] = {}
        if isinstance(found, FaithfulnessCurves):
            faith = [k for k in defined if k in self.plan.faithfulness_keys]
            for j, key in enumerate(faith):
                curves[key] = {"deletion": found.deletion[j].tolist(),
                               "insertion": found.insertion[j].tolist()}
        rows += self._undefined_rows(image, [k for k in order if k not in defined])
        image_level, cells = self._cells(image, order, defined, rows, curves)
        result = ImageResult(
            id=sample.id, source=sample.path, display=sample.display,
            probability=image.probability.numpy().astype(np.float32),
            prediction=image.prediction.numpy(), ground_truth=sample.gt_mask,
            mask_source=sample.mask_path, dice=image_level.get("dice"),
            iou=image_level.get("iou"), cells=cells, notes=list(sample.notes))
        return result, rows, found if isinstance(found, FaithfulnessCurves) else None

    def _metric_inputs(self, image: _Explained, maps: dict[tuple[str, str], torch.Tensor],
                       with_ground_truth: bool = True) -> MetricInputs:
        spec = self.spec
        gt = (torch.from_numpy(image.sample.gt_mask)
              if with_ground_truth and image.sample.gt_mask is not None else None)
        return MetricInputs(image.sample.id, maps=maps, prediction=image.prediction,
                            ground_truth=gt, image=image.image, model=self.model,
                            class_index=spec.target_index,
                            activation=spec.model.output_activation,
                            target_region=image.region, settings=self.settings)

    def _metric_rows(self, image: _Explained, defined: dict[tuple[str, str], torch.Tensor]
                     ) -> tuple[list[MetricRow], FaithfulnessCurves | str | None]:
        """The metric rows of the defined maps, and the faithfulness curves (or why there
        are none) when faithfulness is computed for any of them."""
        groups = [g for g in self.spec.metrics if g not in ("faithfulness", "sanity")]
        rows = evaluate_image(self._metric_inputs(image, defined), groups) if groups else []
        if not bool(torch.isfinite(image.probability).all()):
            # NaN compares false, so the prediction is empty and Dice would read 0: a number
            # that says nothing about this model; the image-level metrics are invalid instead
            rows = [MetricRow(r.image, r.layer, r.method, r.metric, None, "invalid",
                              NON_FINITE_OUTPUT) if not (r.layer or r.method) else r
                    for r in rows]
        faith = {k: v for k, v in defined.items() if k in self.plan.faithfulness_keys}
        if not faith:
            return rows, None
        inputs = self._metric_inputs(image, faith, with_ground_truth=False)
        rows += evaluate_image(inputs, ["faithfulness"])
        return rows, inputs.faithfulness

    def _undefined_rows(self, image: _Explained,
                        undefined: list[tuple[str, str]]) -> list[MetricRow]:
        """Undefined maps: every per-map metric asked of them is n/a, with the reason."""
        groups = [g for g in self.spec.metrics if g not in ("faithfulness", "sanity")]
        rows = []
        for key in undefined:
            flags = image.flags[key]
            reason = "; ".join(FLAG_REASONS.get(f, f) for f in flags if f in UNDEFINED_FLAGS)
            asked = [*groups, *(["faithfulness"] if key in self.plan.faithfulness_keys else [])]
            for spec_metric in METRICS.values():
                if spec_metric.per_map and spec_metric.group in asked:
                    rows.append(MetricRow(image.sample.id, key[0], key[1], spec_metric.name,
                                          None, "n/a", reason))
        return rows

    def _cells(self, image: _Explained, order: list[tuple[str, str]],
               defined: dict[tuple[str, str], torch.Tensor], rows: list[MetricRow],
               curves: dict[tuple[str, str], dict[str, list[float]]],
               ) -> tuple[dict[str, ShownValue], dict[tuple[str, str], Cell]]:
        """The image-level values and the page's cell of every layer x method."""
        by_cell: dict[tuple[str, str], dict[str, ShownValue]] = {}
        image_level: dict[str, ShownValue] = {}
        for row in rows:
            shown = ShownValue.of_row(row.value, row.status, row.reason)
            if row.layer or row.method:
                by_cell.setdefault((row.layer, row.method), {})[row.metric] = shown
            else:
                image_level[row.metric] = shown
        cells = {}
        for key in order:
            metrics = by_cell.get(key, {})
            ratio = metrics.get("attention_ratio")
            status = "invalid" if "non_finite" in image.flags[key] else (
                "ok" if ratio is not None and ratio.ok else "n/a")
            cells[key] = Cell(
                layer=key[0], method=key[1],
                map=image.maps[key].numpy().astype(np.float32) if key in defined else None,
                flags=image.flags[key], metrics=metrics,
                verdict=verdict(ratio.value if ratio else None, self.settings.bands,
                                status=status),
                curves=curves.get(key, {}))
        return image_level, cells


@dataclass
class _Explained:
    """One image of a batch as the engines explained it."""

    sample: Sample
    maps: dict[tuple[str, str], torch.Tensor]
    flags: dict[tuple[str, str], list[str]]
    probability: torch.Tensor
    prediction: torch.Tensor
    region: torch.Tensor  # the target region the maps explain
    image: torch.Tensor  # on the model's device

    @classmethod
    def of(cls, sample: Sample, i: int, results,
           predicted: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
           image: torch.Tensor) -> _Explained:
        """Image i of a batch: its maps and flags from every engine's `results`, and its
        (probability, prediction, target region)."""
        maps: dict[tuple[str, str], torch.Tensor] = {}
        flags: dict[tuple[str, str], list[str]] = {}
        for result in results:
            for key, stacked in result.maps.items():
                maps[key] = stacked[i]
                flags[key] = list(result.flags[key][i])
        return cls(sample, maps, flags, *predicted, image)


def _map_arrays(results, i: int) -> dict[str, np.ndarray]:
    """The maps of image i for export: normalised (float16) and raw (float32) per cell."""
    arrays = {}
    for result in results:
        for (layer, method), stacked in result.maps.items():
            arrays[f"{layer}|{method}|normalised"] = stacked[i].numpy().astype(np.float16)
            arrays[f"{layer}|{method}|raw"] = result.raw[(layer, method)][i].numpy()
    return arrays
