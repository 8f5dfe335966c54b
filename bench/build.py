"""Time a whole `reportgen build` by stage, with its peak memory, against a seed-style loop.

    python bench/build.py --config cpu        # the demo spec (specs/validation.yaml) on the CPU
    python bench/build.py --config gpu        # reference configuration: U-Net++ efficientnet-b5,
                                              # 640 px, 100 images, 5 layers x 4 methods,
                                              # every metric, site + PDF
    python bench/build.py --config streaming  # peak RAM of a small build, 100 vs 1,000 images

(with the package installed, or PYTHONPATH=. from the repository root).

Every measured run is a subprocess of its own, so each peak (`ru_maxrss`, and
`torch.cuda.max_memory_allocated` on CUDA) belongs to that run alone. The stage times
come from the build's manifest, except rendering and the PDF, timed from here around
`SiteWriter` and `write_pdf` (the manifest is written before the PDF): render is split
into figures (`SiteWriter._figures`: per-image figures; `_plots`: dataset plots) and HTML
(the rest: pages, thumbnails, tables). The images are computed in a background thread
while the pages are written, so stage times may add up to more than the wall time.

The baseline is what a hand-written script does with pytorch-grad-cam: for each image,
each layer and each method, one CAM object and one call with a
`SemanticSegmentationTarget`, the seed's attention statistics, and one matplotlib figure
(input | overlay) saved per map. It computes no faithfulness, sanity check, site or PDF:
the speed-up below compares a full report with maps and figures only. Its time per image
does not depend on the number of images (one image at a time), so it runs on the first
`--baseline-images` images and is reported per image.

The gpu configuration writes a random-weight checkpoint (timing does not depend on the
weights) and synthetic 640 x 640 images with disc masks into a temporary folder and
explains the ground-truth discs (`target.region: ground_truth`), so that no map is
skipped for an empty prediction.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
ALL_LAYERS = ["encoder_early", "encoder_mid", "encoder_last", "decoder_last", "seg_head"]
SEED_METHODS = ["gradcam", "gradcam++", "scorecam", "layercam"]
STAGES = ["model", "data", "cam", "scorecam", "metrics", "sanity", "maps", "cache", "figures",
          "html", "pdf"]


# ------------------------------------------------------------------ inputs


def write_synthetic_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """RGB noise with a bright disc per image (JPEG), and the disc as a 0/255 PNG mask."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2
        image = rng.random((size, size, 3)) * 80 + disc[:, :, None] * 150
        cv2.imwrite(str(folder / "images" / f"img{i:04d}.jpg"), image.astype(np.uint8))
        cv2.imwrite(str(folder / "masks" / f"img{i:04d}.png"), disc.astype(np.uint8) * 255)


def random_checkpoint(path: Path, architecture: str, encoder: str, seed: int = 0) -> None:
    """A state_dict of a freshly initialised smp model (random weights)."""
    import torch

    from reportgen.compute.models import build_model

    torch.manual_seed(seed)
    torch.save(build_model(architecture, encoder, 1, 3).state_dict(), path)


def demo_spec(folder: Path) -> Path:
    """specs/validation.yaml with absolute inputs and its output inside `folder`."""
    source = ROOT / "specs" / "validation.yaml"
    spec = yaml.safe_load(source.read_text())
    base = source.parent
    spec["model"]["checkpoint"] = str((base / spec["model"]["checkpoint"]).resolve())
    spec["data"]["images"] = str((base / spec["data"]["images"]).resolve())
    spec["data"]["masks"] = str((base / spec["data"]["masks"]).resolve())
    spec["output"] = {"site": "site", "pdf": "site/report.pdf"}
    spec["runtime"]["device"] = "cpu"
    path = folder / "validation.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def reference_spec(folder: Path, images: int, variant: str = "full", pdf: bool = True,
                   encoder: str = "efficientnet-b5", size: int = 640) -> Path:
    """The reference configuration on random weights and synthetic images.

    Variant "full" is seed-b5.yaml as it stands (every metric, site + PDF); "maps" does
    the baseline's work only (the maps, the attention statistics and the site's
    figures: metrics attention, dice and localisation; no faithfulness, sanity or PDF).
    """
    if not (folder / "best_model.pth").exists():
        random_checkpoint(folder / "best_model.pth", "UnetPlusPlus", encoder)
        write_synthetic_images(folder, images, size)
    spec = yaml.safe_load((ROOT / "specs" / "seed-b5.yaml").read_text())
    spec["model"].update(checkpoint="best_model.pth", encoder=encoder, input_size=size)
    spec["data"] = {"images": "images/*.jpg", "masks": "masks/{stem}.png"}
    spec["target"]["region"] = "ground_truth"
    spec["output"] = {"site": f"site-{variant}",
                      "pdf": f"site-{variant}/report.pdf" if pdf and variant == "full" else None}
    if variant == "maps":
        spec["metrics"] = ["attention", "dice", "localisation"]
    path = folder / f"reference-{variant}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def pdf_available() -> bool:
    """Whether WeasyPrint (and the Pango it loads) can be imported here."""
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as error:
        print(f"# no PDF: WeasyPrint cannot be loaded ({error})")
        return False
    return True


def streaming_spec(folder: Path, images: int, pdf: bool) -> Path:
    """A small, cheap build whose cost is mostly per-image I/O and rendering."""
    write_synthetic_images(folder, images, 64)
    spec = {
        "report": {"title": f"Streaming check, {images} images", "id": "BENCH-STREAM"},
        "model": {"architecture": "Unet", "encoder": "resnet18", "input_size": 64},
        "data": {"images": "images/*.jpg", "masks": "masks/{stem}.png"},
        "target": {"region": "ground_truth"},
        "layers": ["encoder_last", "decoder_last"],
        "methods": ["gradcam"],
        "metrics": ["attention"],
        "output": {"site": "site", "pdf": "site/report.pdf" if pdf else None},
        "runtime": {"device": "cpu", "batch_size": 8},
    }
    path = folder / "streaming.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------ measured runs (subprocesses)


def peaks() -> dict[str, float | None]:
    """Peak resident memory of this process and peak CUDA memory allocated, in MiB."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.max_memory_allocated() / 2**20
    return {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_mib": gpu}


def run_build(spec_path: Path) -> dict[str, object]:
    """Build the report of `spec_path` and return its stage times and peaks."""
    from reportgen.build import BuildOptions, build, render_workers
    from reportgen.render import pdf
    from reportgen.render.site import SiteWriter
    from reportgen.spec import parse_spec

    seconds = {"render": 0.0, "figures": 0.0, "pdf": 0.0}
    lock = threading.Lock()  # images are drawn on several render threads at once

    def timed(owner: object, name: str, stage: str) -> None:
        method = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                with lock:
                    seconds[stage] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    for name in ("prepare_image", "commit_image", "finish"):
        timed(SiteWriter, name, "render")
    for name in ("_figures", "_plots"):
        timed(SiteWriter, name, "figures")
    timed(pdf, "write_pdf", "pdf")
    os.environ.pop("SOURCE_DATE_EPOCH", None)  # the manifest keeps its timings
    start = time.perf_counter()
    result = build(spec_path, BuildOptions(force=True))
    wall = time.perf_counter() - start
    manifest = json.loads((result.site / "data" / "manifest.json").read_text())
    stages = {k: v for k, v in manifest["timings"].items() if k not in ("render", "pdf")}
    stages["figures"] = seconds["figures"]
    stages["html"] = seconds["render"] - seconds["figures"]
    if result.pdf is not None:
        stages["pdf"] = seconds["pdf"]
    return {"wall": wall, "images": result.images, "stages": stages,
            "render_workers": render_workers(parse_spec(spec_path)[0]),
            "device": manifest["device"], "pdf": result.pdf is not None, **peaks()}


def run_baseline(spec_path: Path, images: int, out: Path) -> dict[str, object]:
    """The seed-style loop on the first `images` images of the spec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from reportgen.compute.data import sample_refs
    from reportgen.compute.models import build_model, load_checkpoint, resolve_layers
    from reportgen.spec import parse_spec

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM,
               "layercam": LayerCAM}
    spec, _ = parse_spec(spec_path)
    m = spec.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    model = build_model(m.architecture, m.encoder, m.classes, m.in_channels, m.options)
    if m.checkpoint is not None:
        load_checkpoint(model, m.checkpoint, m.trust_pickle, m.encoder)
    model = model.to(device).eval()
    layers = resolve_layers(model, spec.layers, m.size, m.in_channels)
    model_seconds = time.perf_counter() - start
    mean = np.array(m.norm.mean, dtype=np.float32) if m.norm else 0.0
    std = np.array(m.norm.std, dtype=np.float32) if m.norm else 1.0
    refs = sample_refs(spec.data)[:images]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for ref in refs:
        rgb = cv2.cvtColor(cv2.imread(str(ref.path)), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (m.size[1], m.size[0])).astype(np.float32) / 255.0
        tensor = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)).unsqueeze(0)
        tensor = tensor.float().to(device)
        if spec.target.region == "ground_truth":
            mask = cv2.resize(cv2.imread(str(ref.mask_path), cv2.IMREAD_GRAYSCALE),
                              (m.size[1], m.size[0]), interpolation=cv2.INTER_NEAREST) > 0
            mask = mask.astype(np.float32)
        else:
            with torch.no_grad():
                probability = torch.sigmoid(model(tensor)[0, spec.target_index])
            mask = (probability > spec.target.threshold).float().cpu().numpy()
        for layer, path in layers.items():
            for method in spec.methods:
                with classes[method](model=model,
                                     target_layers=[model.get_submodule(path)]) as cam:
                    grayscale = cam(input_tensor=tensor,
                                    targets=[SemanticSegmentationTarget(spec.target_index,
                                                                        mask)])[0]
                inside, outside = grayscale[mask > 0], grayscale[mask == 0]
                ratio = (inside.mean() / outside.mean()
                         if inside.size and outside.size and outside.mean() > 0 else None)
                figure, axes = plt.subplots(1, 2, figsize=(10, 5))
                axes[0].imshow(rgb)
                axes[0].set_title("input")
                axes[1].imshow(show_cam_on_image(rgb, grayscale, use_rgb=True))
                axes[1].set_title(f"{method} @ {layer}: mean {grayscale.mean():.3f}, "
                                  f"ratio {ratio if ratio is None else round(float(ratio), 2)}")
                figure.savefig(out / f"{ref.id}_{layer}_{method}.png", dpi=100)
                plt.close(figure)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"wall": time.perf_counter() - start, "model": model_seconds, "images": len(refs),
            **peaks()}


def measured(mode: str, spec: Path, *extra: str) -> dict[str, object]:
    """Run `mode` on `spec` in a fresh Python process and return what it measured."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        subprocess.run([sys.executable, __file__, "--run", mode, "--spec", str(spec),
                        "--result", handle.name, *extra], check=True, env=env)
        return json.loads(Path(handle.name).read_text())


# ------------------------------------------------------------------ reports


def machine() -> str:
    """Platform, CPU model and core count, torch version, and the GPU if any."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip()
              for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    cpu = models[0] if models else platform.processor() or platform.machine()
    name = (f"{platform.platform()}, {cpu} ({os.cpu_count()} cores), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    if torch.cuda.is_available():
        name += f", {torch.cuda.get_device_name(0)}"
    return name


def mib(value: object) -> str:
    return "–" if value is None else f"{float(value):,.0f} MiB"


def build_table(report: dict, baseline: dict | None) -> str:
    """The Markdown table of one configuration."""
    stages = report["stages"]
    # seconds summed per stage: stages overlap, and the render threads' add up
    lines = ["| stage | seconds | share of wall |", "|---|---:|---:|"]
    for stage in STAGES:
        if stage in stages:
            lines.append(f"| {stage} | {stages[stage]:.1f} | "
                         f"{100 * stages[stage] / report['wall']:.0f} % |")
    per_second = report["images"] / report["wall"]
    # the images are computed in one thread while render threads draw the previous ones
    compute = sum(stages.get(k, 0.0) for k in ("data", "cam", "scorecam", "metrics"))
    render = sum(stages.get(k, 0.0) for k in ("maps", "cache", "figures", "html"))
    threads = report.get("render_workers") or 1
    lines += [
        f"| **wall (whole build)** | **{report['wall']:.1f}** | 100 % |",
        "",
        f"Per-image work: computation (data, CAM, Score-CAM, metrics; one thread) "
        f"{compute:.1f} s, rendering (maps, cache, figures, HTML) {render:.1f} s summed over "
        f"{threads} render thread(s), so at least {render / threads:.1f} s of wall time. The "
        f"two run at the same time: that part of the build takes at least "
        f"{max(compute, render / threads):.1f} s, at most {compute + render:.1f} s.",
        "",
        "| | reportgen build | seed-style loop |",
        "|---|---:|---:|",
        f"| images | {report['images']} | {baseline['images'] if baseline else '–'} |",
    ]
    if baseline:
        base_per_image = baseline["wall"] / baseline["images"]
        own_per_image = report["wall"] / report["images"]
        lines += [
            f"| seconds per image | {own_per_image:.2f} | {base_per_image:.2f} |",
            f"| images per second | {per_second:.3f} | {1 / base_per_image:.3f} |",
            f"| peak RAM (process) | {mib(report['rss_mib'])} | {mib(baseline['rss_mib'])} |",
            f"| peak GPU memory | {mib(report['gpu_mib'])} | {mib(baseline['gpu_mib'])} |",
            f"| **end-to-end speed-up** | **{base_per_image / own_per_image:.1f}x** | 1x |",
        ]
    else:
        lines += [f"| images per second | {per_second:.3f} | – |",
                  f"| peak RAM (process) | {mib(report['rss_mib'])} | – |",
                  f"| peak GPU memory | {mib(report['gpu_mib'])} | – |"]
    return "\n".join(lines)


def streaming_table(runs: list[tuple[int, bool, dict]]) -> str:
    lines = ["| images | PDF | wall s | images/s | peak RAM | peak GPU memory |",
             "|---:|---|---:|---:|---:|---:|"]
    for count, pdf, report in runs:
        lines.append(f"| {count:,} | {'yes' if pdf else 'no'} | {report['wall']:.1f} | "
                     f"{count / report['wall']:.1f} | {mib(report['rss_mib'])} | "
                     f"{mib(report['gpu_mib'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["cpu", "gpu", "streaming"], default="cpu")
    parser.add_argument("--images", type=int, help="gpu: images of the build (default 100)")
    parser.add_argument("--baseline-images", type=int,
                        help="images of the seed-style loop (default: cpu 2, gpu 10)")
    parser.add_argument("--sizes", default="100,1000", help="streaming: image counts")
    parser.add_argument("--pdf", action="store_true", help="streaming: also write the PDF")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--variants", default="full",
                        help="gpu: comma-separated; full (seed-b5.yaml: every metric, site + "
                             "PDF) and/or maps (the baseline's work: maps, attention, figures)")
    parser.add_argument("--no-pdf", action="store_true", help="gpu: build no PDF")
    parser.add_argument("--encoder", default="efficientnet-b5",
                        help="gpu: encoder (a smaller one tries the script out on a CPU)")
    parser.add_argument("--size", type=int, default=640, help="gpu: image size")
    parser.add_argument("--run", choices=["build", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:  # one measured run, in its own process
        if args.run == "build":
            found = run_build(args.spec)
        else:
            found = run_baseline(args.spec, args.baseline_images,
                                 args.result.parent / "baseline-figures")
        args.result.write_text(json.dumps(found))
        return

    print(f"# {datetime.date.today()} {machine()}")
    with tempfile.TemporaryDirectory(prefix="reportgen-bench-") as tmp:
        folder = Path(tmp)
        if args.config == "streaming":
            runs = []
            for count in (int(n) for n in args.sizes.split(",")):
                sub = folder / str(count)
                spec = streaming_spec(sub, count, args.pdf)
                runs.append((count, args.pdf, measured("build", spec)))
                print(f"# {count} images: {runs[-1][2]}", flush=True)
            print(streaming_table(runs))
            return
        if args.config == "cpu":
            specs = {"demo": demo_spec(folder)}
            base_count = args.baseline_images or 2
        else:
            pdf = not args.no_pdf and pdf_available()
            specs = {variant: reference_spec(folder, args.images or 100, variant, pdf,
                                             args.encoder, args.size)
                     for variant in args.variants.split(",")}
            base_count = args.baseline_images or 10
        reports = {}
        for variant, spec in specs.items():
            reports[variant] = measured("build", spec)
            print(f"# build ({variant}): {reports[variant]}", flush=True)
        baseline = None
        if not args.no_baseline:
            spec = next(iter(specs.values()))
            baseline = measured("baseline", spec, "--baseline-images", str(base_count))
            print(f"# baseline: {baseline}", flush=True)
        for variant, report in reports.items():
            print(f"\n## {variant}\n# device: {report['device']}")
            print(build_table(report, baseline))

if __name__ == "__main__":
    main()
