"""The build pipeline: spec -> model -> data -> cam -> metrics -> render -> output.

One straight pipeline. Images stream through in batches of `runtime.batch_size`:
each batch gets its maps from one engine call and its metrics in a background
thread (or on Ray workers), while render threads write the previous images'
.npz files, figures and pages, in order; only a bounded number of images is held
at any time, so memory does not grow with the data.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from reportgen import __version__
from reportgen.build_run import BuildOptions, BuildRun
from reportgen.cache import GB, RANDOM_METHODS, ResultCache
from reportgen.compute.cam import CamEngine, CheckRow
from reportgen.compute.cam.engine import resolve_device
from reportgen.compute.cam.scorecam import arithmetic
from reportgen.compute.data import (
    Sample,
    SampleRef,
    aspect_change,
    aspect_warning,
    check_inputs,
    load_sample,
    load_samples,
    sample_refs,
)
from reportgen.compute.executors import computed_batches
from reportgen.compute.metrics import (
    METRICS,
    MetricInputs,
    MetricRow,
    MetricSettings,
    SanityResult,
    aggregate,
    evaluate_image,
    sanity_check,
    write_metrics_csv,
    write_metrics_json,
)
from reportgen.compute.models import LayerInfo, build_model, load_checkpoint, resolve_layers
from reportgen.compute.models.build import parameter_count
from reportgen.compute.models.layers import ALIASES
from reportgen.compute.pipeline import (
    ImageOutput,
    Pipeline,
    Plan,
    Stopwatch,
    cpu_threads,
    plan_layers,
    seed_everything,
    segmentation_target,
)
from reportgen.errors import UserError
from reportgen.hashing import package_versions, sha256_path, write_npz
from reportgen.manifest import (
    git_commit,
    shown_location,
    source_date,
    write_checksums,
    write_manifest,
)
from reportgen.output import (
    check_cache_folder,
    check_output_folder,
    name_in_site,
    output_lock,
    pdf_in_site,
    site_folder,
    staging_folder,
    swap_in,
)
from reportgen.report import wording
from reportgen.report.results import (
    LayerRow,
    MethodRow,
    MetricDefinition,
    ModelCard,
    ReportContext,
    SanityRow,
)
from reportgen.spec import Spec, parse_spec

if TYPE_CHECKING:
    from reportgen.render.site import PreparedImage, SiteWriter

log = logging.getLogger(__name__)

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


NO_CHECKOUT = "none (not run from a git checkout, or git could not tell)"


def versions() -> dict[str, str]:
    """reportgen's version and commit, Python's, and the libraries' (the audit page)."""
    return {"reportgen": __version__, "reportgen-commit": git_commit() or NO_CHECKOUT,
            "python": platform.python_version(),
            **package_versions(("torch", "torchvision", "segmentation-models-pytorch",
                                "grad-cam", "weasyprint", "numpy", "opencv-python-headless",
                                "timm"))}


def build(spec_path: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build the report of `spec_path`; the output folder is replaced only on success."""
    options = options or BuildOptions()
    started = time.perf_counter()
    spec_path = Path(spec_path)
    spec, text = parse_spec(spec_path)
    site = site_folder(spec.output.site)  # a link's target: the link stays
    check_output_folder(site, spec_path.resolve().parent, options.force)
    check_cache_folder(spec.runtime.cache, site)
    pdf_rel = None if spec.output.pdf is None else pdf_in_site(site, spec.output.pdf)
    if options.sign is not None:  # a key that cannot sign must not cost a whole build
        if pdf_rel is None:
            raise UserError("--sign signs the PDF, but output.pdf is null: no PDF is written")
        from reportgen.render.pdf_sign import check_signing_key

        check_signing_key(options.sign, options.sign_password)
    m = spec.model
    # Every input is read once before anything is computed or written: a bad file found
    # late must never cost a half build.
    inputs = sample_refs(spec.data, (spec.output.site, spec.runtime.cache))
    refs, excluded = check_inputs(inputs, m.size, m.in_channels, m.norm,
                                  spec.data.intensity, options.keep_going, **spec.mask_reading)
    with output_lock(site), cpu_threads(spec.runtime.threads):
        run = BuildRun(spec, spec_path, text, options,
                       resolve_device(options.device or spec.runtime.device), pdf_rel, refs,
                       excluded)
        staging = staging_folder(site)
        try:
            _build_into(staging, run)
            swap_in(staging, site)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                name_in_site(exc, staging, site)
            raise
    shown = spec.output.site  # as the user named it, a link included
    return BuildResult(shown, shown / pdf_rel if pdf_rel else None, len(refs),
                       time.perf_counter() - started, run.warnings)


def _load_model(spec: Spec, clock: Stopwatch, warnings: list[str]):
    m = spec.model
    with clock("model"):
        model = build_model(m.architecture, m.encoder, m.classes, m.in_channels, m.options)
        fmt, sha = "none", ""
        if m.checkpoint is not None:
            fmt = load_checkpoint(model, m.checkpoint, m.trust_pickle,
                                  f"{m.architecture} / {m.encoder}", warnings)
            sha = sha256_path(m.checkpoint)
        else:
            warnings.append("no checkpoint: the model has RANDOM weights; maps and metrics "
                            "say nothing about a trained model")
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            warnings.append("the checkpoint holds NaN or infinite weights: every map and "
                            "metric is invalid")
    return model, fmt, sha


def _build_into(staging: Path, run: BuildRun) -> None:
    """Write the whole report of `run` into the empty folder `staging`."""
    from reportgen.render.site import SiteWriter

    spec, clock = run.spec, run.clock
    run.determinism = seed_everything(spec.runtime.seed, run.device)
    model, run.checkpoint_format, run.checkpoint_sha = _load_model(spec, clock, run.warnings)
    with clock("model"):
        resolved, infos, run.plan = plan_layers(spec, model, len(run.inputs))
    model = model.to(run.device).eval()
    run.versions = versions()
    context = _context(run, model, infos)
    if run.pdf is not None:
        run.warnings.extend(_unprintable(context, run.inputs))
    if run.excluded:
        run.warnings.append(f"{len(run.excluded)} input(s) excluded (--keep-going): see "
                            "Excluded inputs")
    writer = SiteWriter(staging, context, [r.id for r in run.inputs],
                        single_file=run.options.single_file or spec.output.single_file)
    cache = _open_cache(run, resolved)
    to_compute = len(run.inputs) if cache is None else cache.missing(run.inputs)
    pipeline = Pipeline(spec, model, resolved, run.plan, infos, run.device, to_compute)
    done = _compute_and_render(run, pipeline, cache, writer, staging)
    # before the summary pages and the manifest
    run.warnings.extend(aspect_warning(done.stretches))
    sanity_rows: list[SanityRow] = []
    if run.plan.sanity_keys and done.sanity_samples:
        sanity_rows = _sanity_check(run, model, done, pipeline.settings)
    run.events = done.events
    with clock("metrics"):
        aggregates = aggregate(done.rows)
        write_metrics_csv(done.rows, staging / "data" / "metrics.csv")
        write_metrics_json(done.rows, staging / "data" / "metrics.json")
        write_metrics_csv(aggregates, staging / "data" / "metrics_summary.csv")
    if source_date() is None:  # a reproducible build (SOURCE_DATE_EPOCH) shows no timings
        context.timings.update({k: round(v, 3) for k, v in clock.totals.items()})
    with clock("render"):
        writer.finish(aggregates, sanity_rows)
    run.engine = {"scorecam_compiled": pipeline.scorecam_compiled,
                  "arithmetic": arithmetic(spec.runtime.precision, run.device),
                  # whose rows of metrics.csv come from approximate maps
                  "approximate": [list(key) for key in run.plan.approximate]}
    manifest = write_manifest(staging, run)
    if run.pdf is not None:
        with clock("pdf"):
            _write_pdf(staging, run, context, manifest, writer)
    write_checksums(staging)


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


def _computed_batches(run: BuildRun, pipeline: Pipeline, cache: ResultCache | None = None,
                      ) -> Iterator[tuple[list[Sample], list[ImageOutput]]]:
    """Load and compute the images batch by batch, in the spec's order, ahead of the
    caller (`reportgen.compute.executors`: a background thread, or Ray workers); with a cache,
    only the images that miss it are computed."""
    spec, refs, clock = run.spec, run.inputs, run.clock
    m, batch = spec.model, spec.runtime.batch_size

    def loaded() -> Iterator[list[Sample]]:
        for first in range(0, len(refs), batch):
            with clock("data"):
                part = [load_sample(r, m.size, m.in_channels, m.norm, spec.data.intensity,
                                    **spec.mask_reading)
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


@dataclass
class ImagesDone:
    """What the image loop leaves for the dataset pages, the metrics files and the
    manifest once every image's maps and page are written."""

    rows: list[MetricRow] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what the run adapted to (out of memory)
    stretches: list[float] = field(default_factory=list)  # each image's aspect-ratio change
    # the first images and their target regions, for the sanity check
    sanity_samples: list[tuple[Sample, torch.Tensor]] = field(default_factory=list)


def _compute_and_render(run: BuildRun, pipeline: Pipeline, cache: ResultCache | None,
                        writer: SiteWriter, staging: Path) -> ImagesDone:
    """Compute the images batch by batch while render workers write each one's maps,
    figures and page; at most `render_workers + 1` images wait, so memory stays bounded."""
    spec, refs, clock, options = run.spec, run.inputs, run.clock, run.options
    done = ImagesDone()
    committed = 0
    if options.progress:
        options.progress("images", 0, len(refs))

    def prepare(image_id: str, output: ImageOutput) -> PreparedImage:
        with clock("maps"):
            write_npz(staging / "data" / "maps" / f"{image_id}.npz", output.maps,
                      compress=spec.output.compress_maps, level=MAPS_COMPRESSION)
        with clock("render"):
            return writer.prepare_image(output.result)

    def commit(future: Future[PreparedImage]) -> None:
        nonlocal committed
        prepared = future.result()
        with clock("render"):
            writer.commit_image(prepared)
        committed += 1
        if options.progress:
            options.progress("images", committed, len(refs))

    (staging / "data" / "maps").mkdir(parents=True)
    workers = render_workers(spec)
    pending: deque[Future[PreparedImage]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="reportgen-render") as pool:
        try:
            for part, outputs in _computed_batches(run, pipeline, cache):
                for sample, output in zip(part, outputs, strict=True):
                    done.rows.extend(output.rows)
                    done.events.extend(output.events)
                    done.stretches.append(aspect_change(sample.original_size, spec.model.size))
                    if len(done.sanity_samples) < spec.metric_options.sanity.images:
                        done.sanity_samples.append((sample, output.region))
                    pending.append(pool.submit(prepare, sample.id, output))
                    while len(pending) > workers + 1 or (pending and pending[0].done()):
                        commit(pending.popleft())
                del part, outputs  # nothing of a batch outlives it but its rows and page
            while pending:
                commit(pending.popleft())
        finally:
            for future in pending:
                future.cancel()
    return done


def _sanity_check(run: BuildRun, model: torch.nn.Module, done: ImagesDone,
                  settings: MetricSettings) -> list[SanityRow]:
    """The sanity check on the first images: its rows for the pages, its per-image values
    added to `done.rows` and its engines' events to `done.events`."""
    progress, plan = run.options.progress, run.plan
    if progress:
        progress("sanity check", 0, 1)
    with run.clock("sanity"):
        sanity, rows = _sanity(run, model, done.sanity_samples, settings, done.events)
        for index, (sample, _) in enumerate(done.sanity_samples):
            inputs = MetricInputs(sample.id, maps={k: torch.zeros(1) for k in plan.sanity_keys},
                                  model=model, sanity=sanity, image_index=index,
                                  settings=settings)
            done.rows.extend(evaluate_image(inputs, ["sanity"]))
    if progress:
        progress("sanity check", 1, 1)
    return rows


def _sanity(run: BuildRun, model: torch.nn.Module, samples: list[tuple[Sample, torch.Tensor]],
            settings: MetricSettings, events: list[str]) -> tuple[SanityResult, list[SanityRow]]:
    """Cascading randomisation on the first images; the target region stays the trained
    model's, so every level explains the same pixels. The engines' events are added to
    `events`."""
    spec, plan = run.spec, run.plan
    images = torch.stack([s.tensor for s, _ in samples])
    fixed = torch.stack([region for _, region in samples])
    layers = sorted({k[0] for k in plan.sanity_keys}, key=list(plan.layers).index)
    methods = sorted({k[1] for k in plan.sanity_keys}, key=spec.methods.index)
    target = segmentation_target(spec, "ground_truth")
    score = spec.method_options.scorecam
    fitted = {"batch_size": spec.runtime.batch_size, "chunk": score.chunk_size}

    def explain(candidate: torch.nn.Module) -> dict[tuple[str, str], torch.Tensor]:
        engine = CamEngine(candidate, {la: plan.layers[la] for la in layers}, methods,
                           device=run.device, precision=spec.runtime.precision,
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


def _context(run: BuildRun, model: torch.nn.Module, infos: list[LayerInfo]) -> ReportContext:
    """What the pages show of the build `run` besides the per-image results."""
    spec, plan, folder = run.spec, run.plan, run.spec_folder
    report = spec.report
    image_dirs = sorted({shown_location(s.path.parent, folder) for s in run.inputs})
    return ReportContext(
        title=report.title, report_id=report.id, author=report.author,
        # a reproducible build (SOURCE_DATE_EPOCH) is dated by it, like its manifest
        date=report.date or (source_date() or datetime.now(UTC)).date().isoformat(),
        description=report.description, intended_use=report.intended_use,
        limitations=report.limitations,
        reviewers=[(r.name, r.role) for r in report.reviewers],
        model=_model_card(run, model),
        layers=[LayerRow(i.name, i.path, i.channels, i.stride,
                         ALIASES[i.name].meaning if i.name in ALIASES else "module path")
                for i in infos],
        methods=_method_rows(spec, plan), metric_definitions=_metric_definitions(spec),
        image_count=len(run.inputs), image_source=", ".join(image_dirs),
        mask_source=shown_location(Path(spec.data.masks).parent, folder)
        if spec.data.masks else None,
        target_region=spec.target.region, spec_text=run.spec_text,
        spec_name=run.spec_path.name, device=run.device_label, seed=spec.runtime.seed,
        precision=f"{spec.runtime.precision}: {arithmetic(spec.runtime.precision, run.device)}",
        colormap=spec.render.colormap, alpha=spec.render.alpha, versions=run.versions,
        warnings=run.warnings, bounds=wording.bounds(plan), approximate=plan.approximate,
        approximate_note=wording.approximate_note(plan),
        verdict_layers=spec.verdict_layers, verdict_note=wording.verdict_note(spec),
        verdict_bands=spec.metric_options.attention.bands,
        # shown as the input hashes are
        excluded=[(shown_location(ref.path, folder), reason) for ref, reason in run.excluded],
        pdf=run.pdf.as_posix() if run.pdf is not None else None)


def _model_card(run: BuildRun, model: torch.nn.Module) -> ModelCard:
    m, spec = run.spec.model, run.spec
    norm = m.normalize if isinstance(m.normalize, str) else (
        f"mean {m.normalize.mean}, std {m.normalize.std}")
    return ModelCard(m.architecture, m.encoder,
                     m.checkpoint.name if m.checkpoint else "none (random weights)",
                     run.checkpoint_sha, run.checkpoint_format, parameter_count(model), m.size,
                     m.names, m.names[spec.target_index], m.output_activation, norm)


def _method_rows(spec: Spec, plan: Plan) -> list[MethodRow]:
    from reportgen.compute.cam.methods import get_method

    rows = []
    for name in spec.methods:
        entry = get_method(name)
        note = wording.method_note(plan, name)
        rows.append(MethodRow(name, entry.family, entry.cost, entry.reference,
                              entry.description, bool(note), note))
    return rows


def _metric_definitions(spec: Spec) -> list[MetricDefinition]:
    bands = spec.metric_options.attention.bands
    return [MetricDefinition(
        s.name, s.title,
        s.formula + (f"; verdict: {bands.text}" if s.name == "attention_ratio" else ""),
        s.direction, s.reference, s.group) for s in METRICS.values() if s.group in spec.metrics]


def _unprintable(context: ReportContext, refs: list[SampleRef]) -> list[str]:
    """A warning naming the characters of the PDF that no installed font prints."""
    from reportgen.render.fonts import installed_fonts, unprintable_text

    shown = {key: value for key, value in asdict(context).items() if key != "spec_text"}
    shown |= {"spec": context.spec_text, "image names": [r.path.name for r in refs]}
    return unprintable_text(shown, installed_fonts())


def _write_pdf(staging: Path, run: BuildRun, context: ReportContext,
               manifest: dict[str, object], writer: SiteWriter) -> None:
    from reportgen.render.pdf import write_pdf

    pdf_path = staging / run.pdf
    write_pdf(staging, pdf_path, context, run.spec_path, manifest, writer.built)
    if run.options.sign is not None:
        from reportgen.render.pdf_sign import sign_pdf

        sign_pdf(pdf_path, run.options.sign, run.options.sign_password, context)


def _open_cache(run: BuildRun, resolved: dict[str, str]) -> ResultCache | None:
    """The results cache of this build, or None (`--no-cache`, `runtime.cache: null`, or a
    method that draws random numbers, whose results depend on what was drawn before)."""
    spec, options, device = run.spec, run.options, run.device
    if not options.cache or spec.runtime.cache is None:
        return None
    random = [m for m in spec.methods if m in RANDOM_METHODS]
    if random:
        log.info("cache off: %s draws random numbers", ", ".join(random))
        return None
    inputs = {"checkpoint": run.checkpoint_sha,
              "model": spec.model.model_dump(mode="json", exclude={"checkpoint", "trust_pickle"}),
              "intensity": spec.data.intensity, "target": spec.target.model_dump(mode="json"),
              "mask_label": spec.mask_label,
              "layers": resolved, "methods": spec.methods,
              "method_options": spec.method_options.model_dump(mode="json"),
              "metrics": spec.metrics, "metric_options": spec.metric_options.model_dump(
                  mode="json", exclude={"attention": {"verdict_layers"}}),  # presentation
              "precision": spec.runtime.precision, "seed": spec.runtime.seed,
              # batched kernels may round differently: a cache hit must equal a fresh build
              "batch_size": spec.runtime.batch_size, "device": device.type,
              # CPU arithmetic depends on the threads of the process that computes
              "threads": spec.runtime.threads or ("per Ray worker"
                                                  if spec.runtime.executor == "ray"
                                                  else torch.get_num_threads())}
    limit = spec.runtime.cache_max_gb
    return ResultCache(spec.runtime.cache, inputs,
                       None if limit is None else int(limit * GB))


def check_spec(spec_path: Path, device: str | None = None
               ) -> tuple[list[dict[str, object]], list[str]]:
    """Every requested layer x method on the first image (`reportgen check`): one row per
    cell, and the warnings of loading the model (random weights, NaN weights, tensors of
    other modules dropped from a checkpoint), which a build would print too."""
    from reportgen.compute.cam import CheckOptions, check_methods

    spec, _ = parse_spec(Path(spec_path))
    dev = resolve_device(device or spec.runtime.device)
    warnings: list[str] = []
    model, _, _ = _load_model(spec, Stopwatch(), warnings)
    m = spec.model
    resolved = resolve_layers(model, spec.layers, m.size, m.in_channels)
    samples = load_samples(spec.data.model_copy(update={"limit": 1}), m.size, m.in_channels,
                           m.norm, outputs=(spec.output.site, spec.runtime.cache),
                           **spec.mask_reading)
    target = segmentation_target(spec)
    gt = None
    if samples[0].gt_mask is not None:
        gt = torch.from_numpy(samples[0].gt_mask)
    score = spec.method_options.scorecam  # exactly what a build would run
    rows = check_methods(model.to(dev), resolved, spec.methods, samples[0].tensor, target,
                         device=dev, gt_mask=gt, options=CheckOptions(
                             spec.runtime.precision, score.max_channels, score.chunk_size,
                             score.layers or None))
    return [{"layer": r.layer, "method": r.method, "ok": r.ok, "reason": _check_reason(r),
             "seconds": r.seconds, "min": r.map_min, "max": r.map_max, "flags": r.flags}
            for r in rows], warnings


def _check_reason(row: CheckRow) -> str:
    """A `reportgen check` row's reason, with why it is approximate where it is."""
    if row.scored_channels is None:
        return row.reason
    return "; ".join(filter(None, [row.reason,
                                   wording.approximate_cell_reason(row.scored_channels[0])]))
