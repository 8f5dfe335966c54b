"""The build pipeline: spec -> model -> data -> cam -> metrics -> render -> output.

One straight pipeline. Images stream through in batches of `runtime.batch_size`:
each batch gets its maps from one engine call and its metrics in a background
thread (or on Ray workers), while render threads write the previous images'
.npz files, figures and pages, in order; only a bounded number of images is held
at any time, so memory does not grow with the data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from reportgen import __version__
from reportgen.cache import GB, RANDOM_METHODS, ResultCache
from reportgen.cam import CamEngine, SegmentationTarget
from reportgen.cam.engine import resolve_device
from reportgen.cam.methods import METHODS
from reportgen.cam.normalise import FLAG_REASONS
from reportgen.cam.scorecam import arithmetic
from reportgen.data import (
    Sample,
    SampleRef,
    check_inputs,
    load_sample,
    load_samples,
    sample_refs,
)
from reportgen.errors import UserError
from reportgen.executors import computed_batches
from reportgen.hashing import sha256_path, write_npz
from reportgen.manifest import git_commit, source_date, write_checksums
from reportgen.metrics import (
    METRICS,
    FaithfulnessCurves,
    MetricInputs,
    MetricRow,
    MetricSettings,
    SanityResult,
    VerdictBands,
    aggregate,
    evaluate_image,
    sanity_check,
    verdict,
    write_metrics_csv,
    write_metrics_json,
)
from reportgen.models import build_model, describe_layers, load_checkpoint, resolve_layers
from reportgen.models.build import parameter_count
from reportgen.models.layers import ALIASES
from reportgen.output import (
    check_output_folder,
    output_lock,
    pdf_in_site,
    staging_folder,
    swap_in,
)
from reportgen.report import (
    Cell,
    ImageResult,
    LayerRow,
    MetricDefinition,
    MetricValue,
    ModelCard,
    ReportContext,
    SanityRow,
)
from reportgen.report import MethodRow as ReportMethodRow
from reportgen.spec import Spec, parse_spec

if TYPE_CHECKING:
    from reportgen.render.site import PreparedImage, SiteWriter

log = logging.getLogger(__name__)

UNDEFINED_FLAGS = ("empty_target", "non_finite")
NON_FINITE_OUTPUT = "the model's output holds NaN or infinite values"


@dataclass
class BuildOptions:
    device: str | None = None  # overrides runtime.device
    single_file: bool = False
    force: bool = False
    sign: Path | None = None  # PKCS#12 file: sign the PDF (PAdES)
    sign_password: str | None = None
    progress: Callable[[str, int, int], None] | None = None  # (stage, done, total)
    keep_going: bool = False  # build without unreadable inputs, listing them as excluded
    cache: bool = True  # reuse and store per-image results (runtime.cache); False: neither


@dataclass
class BuildResult:
    site: Path
    pdf: Path | None
    images: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"site": str(self.site), "pdf": str(self.pdf) if self.pdf else None,
                "images": self.images, "seconds": round(self.seconds, 2),
                "warnings": self.warnings}


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


NO_CHECKOUT = "none (not run from a git checkout, or git could not tell)"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"reportgen": __version__, "reportgen-commit": git_commit() or NO_CHECKOUT,
             "python": platform.python_version()}
    for dist in ("torch", "torchvision", "segmentation-models-pytorch", "grad-cam",
                 "weasyprint", "numpy", "opencv-python-headless", "timm"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def verdict_bands(spec: Spec) -> VerdictBands:
    """The attention-ratio verdict bands the spec asks for (metric_options.attention.bands)."""
    return VerdictBands(**spec.metric_options.attention.bands.model_dump())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


@dataclass
class Plan:
    """What the spec asks for, resolved against the model and the registries."""

    spec: Spec
    layers: dict[str, str]  # spec name -> module path
    gradient_methods: list[str]  # everything but Score-CAM: one engine call
    scorecam_layers: list[str]
    faithfulness_keys: set[tuple[str, str]]
    sanity_keys: list[tuple[str, str]]
    bounds: list[str]


def make_plan(spec: Spec, layers: dict[str, str], channels: dict[str, int | None],
              image_count: int) -> Plan:
    methods = spec.methods
    gradient_methods = [m for m in methods if m != "scorecam"]
    score = spec.method_options.scorecam
    scorecam_layers = (score.layers or list(layers)) if "scorecam" in methods else []
    bounds = []
    if scorecam_layers and score.max_channels:
        for layer in scorecam_layers:
            k = channels.get(layer)
            if k and score.max_channels < k:
                bounds.append(f"Score-CAM at {layer} is approximate: the {score.max_channels} "
                              f"highest-variance channels of {k} were scored")
    if "scorecam" in methods and score.layers:
        bounds.append(f"Score-CAM computed only at: {', '.join(score.layers)}")
    faith = spec.metric_options.faithfulness
    faith_layers, faith_methods = faith.layers or list(layers), faith.methods or methods
    faithfulness_keys = set()
    if "faithfulness" in spec.metrics:
        faithfulness_keys = {(la, me) for la in faith_layers for me in faith_methods
                             if me != "scorecam" or la in scorecam_layers}
        bounds.append(f"Deletion/insertion AUC: {faith.steps} steps, {faith.baseline} baseline"
                      + ("" if faith.layers is None and faith.methods is None else
                         f", only for layers {', '.join(faith_layers)} x methods "
                         f"{', '.join(faith_methods)}"))
    sanity = spec.metric_options.sanity
    sanity_methods = sanity.methods or [m for m in methods if METHODS[m].family == "gradient"]
    sanity_keys = []
    if "sanity" in spec.metrics:
        sanity_keys = [(la, me) for la in sanity.layers or list(layers) for me in sanity_methods
                       if me != "scorecam" or la in scorecam_layers]
        bounds.append(f"Sanity check on the first {min(sanity.images, image_count)} image(s), "
                      f"{sanity.levels} randomisation levels, methods {', '.join(sanity_methods)}")
    return Plan(spec, layers, gradient_methods, scorecam_layers, faithfulness_keys, sanity_keys,
                bounds)


def build(spec_path: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build the report of `spec_path`; the output folder is replaced only on success."""
    options = options or BuildOptions()
    started = time.perf_counter()
    spec_path = Path(spec_path)
    spec, text = parse_spec(spec_path)
    site = spec.output.site
    check_output_folder(site, spec_path.resolve().parent, options.force)
    pdf_rel = None if spec.output.pdf is None else pdf_in_site(site, spec.output.pdf)
    if options.sign is not None:  # a key that cannot sign must not cost a whole build
        if pdf_rel is None:
            raise UserError("--sign signs the PDF, but output.pdf is null: no PDF is written")
        from reportgen.render.pdf_sign import check_signing_key

        check_signing_key(options.sign, options.sign_password)
    m = spec.model
    # Every input is read once before anything is computed or written: a bad file found
    # late must never cost a half build.
    refs, excluded = check_inputs(sample_refs(spec.data), m.size, m.in_channels, m.norm,
                                  spec.data.intensity, options.keep_going)
    with output_lock(site):
        staging = staging_folder(site)
        try:
            warnings, count = _build_into(staging, spec, text, spec_path, options, pdf_rel,
                                          refs, excluded)
            swap_in(staging, site)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return BuildResult(site, site / pdf_rel if pdf_rel else None, count,
                       time.perf_counter() - started, warnings)


def _load_model(spec: Spec, clock: Stopwatch, warnings: list[str]):
    m = spec.model
    with clock("model"):
        model = build_model(m.architecture, m.encoder, m.classes, m.in_channels, m.options)
        fmt, sha = "none", ""
        if m.checkpoint is not None:
            fmt = load_checkpoint(model, m.checkpoint, m.trust_pickle,
                                  f"{m.architecture} / {m.encoder}")
            sha = sha256_path(m.checkpoint)
        else:
            warnings.append("no checkpoint: the model has RANDOM weights; maps and metrics "
                            "say nothing about a trained model")
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            warnings.append("the checkpoint holds NaN or infinite weights: every map and "
                            "metric is invalid")
    return model, fmt, sha


def _build_into(staging: Path, spec: Spec, text: str, spec_path: Path, options: BuildOptions,
                pdf_rel: Path | None, refs: list[SampleRef],
                excluded: list[tuple[SampleRef, str]]) -> tuple[list[str], int]:
    from reportgen.render.site import SiteWriter

    clock = Stopwatch()
    start_time = datetime.now(UTC)
    device = resolve_device(options.device or spec.runtime.device)
    warnings: list[str] = []
    determinism = seed_everything(spec.runtime.seed, device)
    m = spec.model
    model, fmt, sha = _load_model(spec, clock, warnings)
    with clock("model"):
        resolved = resolve_layers(model, spec.layers, m.size, m.in_channels)
        infos = describe_layers(model, resolved, m.size, m.in_channels)
    plan = make_plan(spec, resolved, {i.name: i.channels for i in infos}, len(refs))
    model = model.to(device).eval()
    context = _context(spec, text, spec_path, model, fmt, sha, infos, plan, refs, device,
                       warnings)
    context.excluded = [(_relative_name(ref.path, spec_path), reason) for ref, reason in excluded]
    context.pdf = pdf_rel.as_posix() if pdf_rel is not None else None
    if excluded:
        warnings.append(f"{len(excluded)} input(s) excluded (--keep-going): see Excluded inputs")
    writer = SiteWriter(staging, context, [r.id for r in refs],
                        single_file=options.single_file or spec.output.single_file)
    cache = _open_cache(spec, options, sha, resolved, device)
    to_compute = len(refs) if cache is None else cache.missing(refs)
    pipeline = Pipeline(spec, model, resolved, plan, infos, device, to_compute)
    (staging / "data" / "maps").mkdir(parents=True)
    rows: list[MetricRow] = []
    sanity_samples: list[tuple[Sample, torch.Tensor]] = []
    events: list[str] = []  # what the run adapted to (out-of-memory halvings), for the manifest
    done = 0
    if options.progress:
        options.progress("images", 0, len(refs))

    def prepare(image_id: str, output: ImageOutput) -> PreparedImage:
        with clock("maps"):
            write_npz(staging / "data" / "maps" / f"{image_id}.npz", output.maps,
                      compress=spec.output.compress_maps, level=MAPS_COMPRESSION)
        with clock("render"):
            return writer.prepare_image(output.result)

    def commit(future: Future[PreparedImage]) -> None:
        nonlocal done
        prepared = future.result()
        with clock("render"):
            writer.commit_image(prepared)
        done += 1
        if options.progress:
            options.progress("images", done, len(refs))

    workers = render_workers(spec)
    # at most this many images wait for (or on) the render workers: memory stays bounded
    pending: deque[Future[PreparedImage]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="reportgen-render") as pool:
        try:
            for part, outputs in _computed_batches(pipeline, refs, spec, clock, options, cache):
                for sample, output in zip(part, outputs, strict=True):
                    rows.extend(output.rows)
                    events.extend(output.events)
                    if len(sanity_samples) < spec.metric_options.sanity.images:
                        sanity_samples.append((sample, output.region))
                    pending.append(pool.submit(prepare, sample.id, output))
                    while len(pending) > workers + 1 or (pending and pending[0].done()):
                        commit(pending.popleft())
                del part, outputs  # nothing of a batch outlives it but its rows and page
            while pending:
                commit(pending.popleft())
        finally:
            for future in pending:
                future.cancel()
    sanity_rows: list[SanityRow] = []
    if plan.sanity_keys and sanity_samples:
        if options.progress:
            options.progress("sanity check", 0, 1)
        with clock("sanity"):
            sanity, sanity_rows = _sanity(model, sanity_samples, plan, spec, device,
                                          pipeline.settings, events)
            for index, (sample, _) in enumerate(sanity_samples):
                inputs = MetricInputs(sample.id, maps={k: torch.zeros(1) for k in
                                                       plan.sanity_keys}, model=model,
                                      sanity=sanity, image_index=index,
                                      settings=pipeline.settings)
                rows.extend(evaluate_image(inputs, ["sanity"]))
        if options.progress:
            options.progress("sanity check", 1, 1)
    with clock("metrics"):
        aggregates = aggregate(rows)
        write_metrics_csv(rows, staging / "data" / "metrics.csv")
        write_metrics_json(rows, staging / "data" / "metrics.json")
        write_metrics_csv(aggregates, staging / "data" / "metrics_summary.csv")
    if source_date() is None:  # a reproducible build (SOURCE_DATE_EPOCH) shows no timings
        context.timings.update({k: round(v, 3) for k, v in clock.totals.items()})
    with clock("render"):
        writer.finish(aggregates, sanity_rows)
    manifest = _write_manifest(staging, spec, spec_path, refs, sha, fmt, device,
                               determinism, warnings, clock, start_time, context, pdf_rel,
                               events, {"scorecam_compiled": pipeline.scorecam_compiled,
                                        "arithmetic": arithmetic(spec.runtime.precision, device)})
    if pdf_rel is not None:
        with clock("pdf"):
            _write_pdf(staging, pdf_rel, context, spec_path, manifest, writer, aggregates,
                       sanity_rows, options)
    write_checksums(staging)
    return warnings, len(refs)


MAPS_COMPRESSION = 1
"""zlib level of the exported maps (data/maps/*.npz, unless `output.compress_maps` is
off): CAM maps are smooth floats that deflate to about 80 % at any level; level 1 takes
two thirds of the time of the default 6."""
MAX_RENDER_WORKERS = 8


def render_workers(spec: Spec) -> int:
    """Threads drawing figures and pages and writing maps (`runtime.render_workers`;
    default: half the CPU cores, 2 to 8)."""
    if spec.runtime.render_workers is not None:
        return spec.runtime.render_workers
    return max(2, min(MAX_RENDER_WORKERS, (os.cpu_count() or 2) // 2))


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
        m = spec.model
        self.target = SegmentationTarget(spec.target_index, spec.target.region,
                                         spec.target.threshold, m.output_activation)
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
            bands=verdict_bands(spec),
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
        spec = self.spec
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
                result, rows, curves = _image_result(
                    sample, i, results, probability[i], prediction[i], regions[i],
                    on_device[i], self.model, self.plan, self.settings, spec)
            events = [event for r in results for event in r.events] if i == 0 else []
            if curves is not None:
                events += curves.events
                if curves.batch_size < self.settings.batch_size:  # what fitted, from now on
                    self.settings = dataclasses.replace(self.settings,
                                                        batch_size=curves.batch_size)
            outputs.append(ImageOutput(result, rows, _map_arrays(results, i), regions[i],
                                       [f"{sample.id}: {event}" for event in events]))
        return outputs


def _computed_batches(pipeline: Pipeline, refs: list[SampleRef], spec: Spec, clock: Stopwatch,
                      options: BuildOptions, cache: ResultCache | None = None,
                      ) -> Iterator[tuple[list[Sample], list[ImageOutput]]]:
    """Load and compute the images batch by batch, in the spec's order, ahead of the
    caller (`reportgen.executors`: a background thread, or Ray workers); with a cache,
    only the images that miss it are computed."""
    m, batch = spec.model, spec.runtime.batch_size

    def loaded() -> Iterator[list[Sample]]:
        for first in range(0, len(refs), batch):
            with clock("data"):
                part = [load_sample(r, m.size, m.in_channels, m.norm, spec.data.intensity)
                        for r in refs[first:first + batch]]
            yield part

    if cache is None:
        yield from computed_batches(loaded(), pipeline, clock)
        return
    yield from cache.around(
        loaded(), lambda misses: computed_batches(misses, pipeline, clock),
        lambda cached: ImageOutput(*cached), clock)
    log.info("cache: %d image(s) reused, %d computed (%s)", cache.hits, cache.misses,
             cache.folder)
    cache.prune()


def _image_result(sample: Sample, i: int, results, probability: torch.Tensor,
                  prediction: torch.Tensor, region: torch.Tensor, image: torch.Tensor,
                  model: torch.nn.Module, plan: Plan, settings: MetricSettings,
                  spec: Spec) -> tuple[ImageResult, list[MetricRow], FaithfulnessCurves | None]:
    """Page data and metric rows of image i of a batch, and its faithfulness curves when
    computed; `image` is on the model's device."""
    maps: dict[tuple[str, str], torch.Tensor] = {}
    flags: dict[tuple[str, str], list[str]] = {}
    approximate: set[tuple[str, str]] = set()
    for result in results:
        for key, stacked in result.maps.items():
            maps[key] = stacked[i]
            flags[key] = list(result.flags[key][i])
        approximate |= result.approximate
    order = [(la, me) for la in plan.layers for me in spec.methods if (la, me) in maps]
    defined = {k: maps[k] for k in order if not set(flags[k]) & set(UNDEFINED_FLAGS)}
    gt = torch.from_numpy(sample.gt_mask) if sample.gt_mask is not None else None
    groups = [g for g in spec.metrics if g not in ("faithfulness", "sanity")]
    inputs = MetricInputs(sample.id, maps=defined, prediction=prediction, ground_truth=gt,
                          image=image, model=model, class_index=spec.target_index,
                          activation=spec.model.output_activation, target_region=region,
                          settings=settings)
    rows = evaluate_image(inputs, groups) if groups else []
    if not bool(torch.isfinite(probability).all()):
        # NaN compares false, so the prediction is empty and Dice would read 0: a number
        # that says nothing about this model; the image-level metrics are invalid instead
        rows = [MetricRow(r.image, r.layer, r.method, r.metric, None, "invalid",
                          NON_FINITE_OUTPUT) if not (r.layer or r.method) else r for r in rows]
    curves: dict[tuple[str, str], dict[str, list[float]]] = {}
    faith = {k: v for k, v in defined.items() if k in plan.faithfulness_keys}
    found: FaithfulnessCurves | str | None = None
    if faith:
        finputs = MetricInputs(sample.id, maps=faith, prediction=prediction, image=image,
                               model=model, class_index=spec.target_index,
            activation=spec.model.output_activation, target_region=region, settings=settings)
        rows += evaluate_image(finputs, ["faithfulness"])
        found = finputs.faithfulness
        if not isinstance(found, str):
            for j, key in enumerate(faith):
                curves[key] = {"deletion": found.deletion[j].tolist(),
                               "insertion": found.insertion[j].tolist()}
    for key in order:  # undefined maps: every per-map metric is n/a with the reason
        if key not in defined:
            reason = "; ".join(FLAG_REASONS.get(f, f) for f in flags[key] if f in UNDEFINED_FLAGS)
            for spec_metric in METRICS.values():
                if spec_metric.per_map and spec_metric.group in groups:
                    rows.append(MetricRow(sample.id, key[0], key[1], spec_metric.name, None,
                                          "n/a", reason))
    by_cell: dict[tuple[str, str], dict[str, MetricValue]] = {}
    image_level: dict[str, MetricValue] = {}
    for row in rows:
        shown = MetricValue.of_row(row.value, row.status, row.reason)
        if row.layer or row.method:
            by_cell.setdefault((row.layer, row.method), {})[row.metric] = shown
        else:
            image_level[row.metric] = shown
    cells = {}
    for key in order:
        metrics = by_cell.get(key, {})
        ratio = metrics.get("attention_ratio")
        status = "invalid" if "non_finite" in flags[key] else (
            "ok" if ratio is not None and ratio.ok else "n/a")
        cells[key] = Cell(
            layer=key[0], method=key[1],
            map=maps[key].numpy().astype(np.float32) if key in defined else None,
            flags=flags[key], metrics=metrics,
            verdict=verdict(ratio.value if ratio else None, settings.bands, status=status),
            approximate=key in approximate, curves=curves.get(key, {}))
    result = ImageResult(
        id=sample.id, source=sample.path, display=sample.display,
        probability=probability.numpy().astype(np.float32), prediction=prediction.numpy(),
        ground_truth=sample.gt_mask, mask_source=sample.mask_path,
        dice=image_level.get("dice"), iou=image_level.get("iou"), cells=cells,
        notes=list(sample.notes))
    return result, rows, found if isinstance(found, FaithfulnessCurves) else None


def _map_arrays(results, i: int) -> dict[str, np.ndarray]:
    """The maps of image i for export: normalised (float16) and raw (float32) per cell."""
    arrays = {}
    for result in results:
        for (layer, method), stacked in result.maps.items():
            arrays[f"{layer}|{method}|normalised"] = stacked[i].numpy().astype(np.float16)
            arrays[f"{layer}|{method}|raw"] = result.raw[(layer, method)][i].numpy()
    return arrays


def _sanity(model, samples: list[tuple[Sample, torch.Tensor]], plan: Plan, spec: Spec,
            device: torch.device, settings: MetricSettings,
            events: list[str]) -> tuple[SanityResult, list[SanityRow]]:
    """Cascading randomisation on the first images; the target region stays the trained
    model's, so every level explains the same pixels. The engines' events are added to
    `events`."""
    images = torch.stack([s.tensor for s, _ in samples])
    fixed = torch.stack([region for _, region in samples])
    layers = sorted({k[0] for k in plan.sanity_keys}, key=list(plan.layers).index)
    methods = sorted({k[1] for k in plan.sanity_keys}, key=spec.methods.index)
    target = SegmentationTarget(spec.target_index, "ground_truth", spec.target.threshold,
                                spec.model.output_activation)
    score = spec.method_options.scorecam
    fitted = {"batch_size": spec.runtime.batch_size, "chunk": score.chunk_size}

    def explain(candidate: torch.nn.Module) -> dict[tuple[str, str], torch.Tensor]:
        engine = CamEngine(candidate, {la: plan.layers[la] for la in layers}, methods,
                           device=device, precision=spec.runtime.precision,
                           batch_size=fitted["batch_size"],
                           scorecam_max_channels=score.max_channels,
                           scorecam_chunk=fitted["chunk"])
        explained = engine.explain(images, target, fixed)
        events.extend(f"sanity check: {event}" for event in explained.events)
        if explained.events:  # the next levels start from the sizes that fitted
            fitted.update(batch_size=engine.batch_size, chunk=engine.scorecam_chunk)
        return {k: v for k, v in explained.maps.items() if k in plan.sanity_keys}

    result = sanity_check(model, explain, seed=spec.runtime.seed,
                          levels=spec.metric_options.sanity.levels,
                          threshold=settings.sanity_threshold)
    return result, sanity_rows(result, plan.sanity_keys)


def sanity_rows(result: SanityResult, keys: Iterable[tuple[str, str]]) -> list[SanityRow]:
    """The report's rows of a sanity check: per level the mean |rho| and mean SSIM over
    the images (`SanityResult.curves`, the statistic the verdict compares: a signed mean
    would let +0.7 and -0.65 cancel to 0.03 beside "failed"), and the verdict."""
    verdicts = result.verdicts()
    rows = []
    for key in keys:
        spearman, ssim = result.curves(key)
        v = verdicts.get(key)
        rows.append(SanityRow(key[0], key[1], [level.stage for level in result.levels],
                              spearman, ssim, result.threshold,
                              None if v is None or v.status == "n/a" else v.status == "pass",
                              v.reason if v else "not computed"))
    return rows


def _context(spec: Spec, text: str, spec_path: Path, model, fmt: str, sha: str, infos, plan,
             samples: list[SampleRef], device: torch.device,
             warnings: list[str]) -> ReportContext:
    from reportgen.cam.methods import get_method

    m = spec.model
    norm = m.normalize if isinstance(m.normalize, str) else (
        f"mean {m.normalize.mean}, std {m.normalize.std}")
    methods = []
    for name in spec.methods:
        entry = get_method(name)
        note = ""
        if name == "scorecam" and spec.method_options.scorecam.max_channels:
            note = (f"approximate: at most {spec.method_options.scorecam.max_channels} "
                    "highest-variance channels scored")
        methods.append(ReportMethodRow(name, entry.family, entry.cost, entry.reference,
                                       entry.description, bool(note), note))
    bands = verdict_bands(spec)
    definitions = [MetricDefinition(
        s.name, s.title,
        s.formula + (f"; verdict: {bands.text}"
                     if s.name == "attention_ratio" else ""),
        s.direction, s.reference, s.group) for s in METRICS.values() if s.group in spec.metrics]
    report = spec.report
    image_dirs = sorted({_shown_path(s.path.parent, spec_path) for s in samples})
    return ReportContext(
        title=report.title, report_id=report.id, author=report.author,
        date=report.date or datetime.now(UTC).date().isoformat(),
        description=report.description, intended_use=report.intended_use,
        limitations=report.limitations,
        reviewers=[(r.name, r.role) for r in report.reviewers],
        model=ModelCard(m.architecture, m.encoder,
                        m.checkpoint.name if m.checkpoint else "none (random weights)", sha,
                        fmt, parameter_count(model), m.size, m.names,
                        m.names[spec.target_index], m.output_activation, norm),
        layers=[LayerRow(i.name, i.path, i.channels, i.stride,
                         ALIASES[i.name].meaning if i.name in ALIASES else "module path")
                for i in infos],
        methods=methods, metric_definitions=definitions, image_count=len(samples),
        image_source=", ".join(image_dirs),
        mask_source=_shown_path(Path(spec.data.masks).parent, spec_path)
        if spec.data.masks else None,
        target_region=spec.target.region, spec_text=text, spec_name=spec_path.name,
        device=device_name(device), seed=spec.runtime.seed,
        precision=f"{spec.runtime.precision}: {arithmetic(spec.runtime.precision, device)}",
        colormap=spec.render.colormap, alpha=spec.render.alpha, versions=versions(),
        warnings=warnings, bounds=plan.bounds, verdict_layers=spec.verdict_layers,
        verdict_bands=bands)


def _write_pdf(staging: Path, pdf_rel: Path, context: ReportContext, spec_path: Path,
               manifest: dict[str, object], writer: SiteWriter, aggregates,
               sanity_rows: list[SanityRow], options: BuildOptions) -> None:
    from reportgen.render.pdf import write_pdf

    pdf_path = staging / pdf_rel
    write_pdf(staging, pdf_path, context, spec_path, manifest, writer.stats, aggregates,
              sanity_rows, plot_captions=writer.plot_captions)
    if options.sign is not None:
        from reportgen.render.pdf_sign import sign_pdf

        sign_pdf(pdf_path, options.sign, options.sign_password, context)


def _write_manifest(staging: Path, spec: Spec, spec_path: Path, samples: list[SampleRef], sha: str,
                    fmt: str, device: torch.device, determinism: list[str],
                    warnings: list[str], clock: Stopwatch, start_time: datetime,
                    context: ReportContext, pdf_rel: Path | None, events: list[str],
                    engine: dict[str, object]) -> dict[str, object]:
    from reportgen.manifest import write_manifest

    return write_manifest(staging, spec, spec_path, samples, sha, fmt, device_name(device),
                          determinism, warnings, clock.totals, start_time, context.versions,
                          pdf_rel.as_posix() if pdf_rel else None, excluded=context.excluded,
                          events=events, engine=engine)


def _open_cache(spec: Spec, options: BuildOptions, checkpoint_sha: str,
                resolved: dict[str, str], device: torch.device) -> ResultCache | None:
    """The results cache of this build, or None (`--no-cache`, `runtime.cache: null`, or a
    method that draws random numbers, whose results depend on what was drawn before)."""
    if not options.cache or spec.runtime.cache is None:
        return None
    random = [m for m in spec.methods if m in RANDOM_METHODS]
    if random:
        log.info("cache off: %s draws random numbers", ", ".join(random))
        return None
    inputs = {"checkpoint": checkpoint_sha,
              "model": spec.model.model_dump(mode="json", exclude={"checkpoint", "trust_pickle"}),
              "intensity": spec.data.intensity, "target": spec.target.model_dump(mode="json"),
              "layers": resolved, "methods": spec.methods,
              "method_options": spec.method_options.model_dump(mode="json"),
              "metrics": spec.metrics, "metric_options": spec.metric_options.model_dump(
                  mode="json", exclude={"attention": {"verdict_layers"}}),  # presentation
              "precision": spec.runtime.precision, "seed": spec.runtime.seed,
              # batched kernels may round differently: a cache hit must equal a fresh build
              "batch_size": spec.runtime.batch_size, "device": device.type}
    limit = spec.runtime.cache_max_gb
    return ResultCache(spec.runtime.cache, inputs,
                       None if limit is None else int(limit * GB))


def _relative_name(path: Path, spec_path: Path) -> str:
    """`path` relative to the spec's folder, as the manifest locates inputs."""
    return Path(os.path.relpath(path.resolve(), spec_path.resolve().parent)).as_posix()


def _shown_path(path: Path, spec_path: Path) -> str:
    """`path` as the report shows it: relative to the spec's folder and normalised, as the
    manifest locates inputs (`_relative_name`); absolute (normalised) when the two share
    no folder but the filesystem root, where a relative path would only climb through it.
    """
    target, base = path.resolve(), spec_path.resolve().parent
    try:
        shared = Path(os.path.commonpath([target, base]))
    except ValueError:  # another drive (Windows)
        return target.as_posix()
    if shared == Path(target.anchor):
        return target.as_posix()
    return _relative_name(path, spec_path)


def check_spec(spec_path: Path, device: str | None = None) -> list[dict[str, object]]:
    """Every requested layer x method on the first image (`reportgen check`)."""
    from reportgen.cam import check_methods

    spec, _ = parse_spec(Path(spec_path))
    dev = resolve_device(device or spec.runtime.device)
    warnings: list[str] = []
    model, _, _ = _load_model(spec, Stopwatch(), warnings)
    m = spec.model
    resolved = resolve_layers(model, spec.layers, m.size, m.in_channels)
    samples = load_samples(spec.data.model_copy(update={"limit": 1}), m.size, m.in_channels,
                           m.norm)
    target = SegmentationTarget(spec.target_index, spec.target.region, spec.target.threshold,
                                m.output_activation)
    gt = None
    if samples[0].gt_mask is not None:
        gt = torch.from_numpy(samples[0].gt_mask)
    score = spec.method_options.scorecam  # exactly what a build would run
    rows = check_methods(model.to(dev), resolved, spec.methods, samples[0].tensor, target,
                         device=dev, gt_mask=gt, precision=spec.runtime.precision,
                         scorecam_max_channels=score.max_channels,
                         scorecam_chunk=score.chunk_size, scorecam_layers=score.layers)
    return [{"layer": r.layer, "method": r.method, "ok": r.ok, "reason": r.reason,
             "seconds": r.seconds, "min": r.map_min, "max": r.map_max, "flags": r.flags}
            for r in rows]
