"""Time the CAM engine against pytorch-grad-cam on the same model, images and target.

pytorch-grad-cam runs as its README teaches: one CAM object and one call per
method x layer, one `SemanticSegmentationTarget` per image. The engine runs every
method x layer in one `explain`. The floor is one forward + backward per batch.

    python bench/engine.py --config cpu --scorecam-layers decoder_last --max-channels 16
    python bench/engine.py --config gpu          # U-Net++ efficientnet-b5, 640 px, batch 8
    python bench/engine.py --config gpu --compile

(with the package installed, or PYTHONPATH=. from the repository root).

Weights are random (encoder_weights=None): timing does not depend on them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from reportgen.compute.cam import CamEngine, SegmentationTarget

LIBRARY_CLASSES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
}
PRESETS = {
    "cpu": {"encoder": "efficientnet-b0", "size": 256, "images": 2, "batch_size": 2},
    "gpu": {"encoder": "efficientnet-b5", "size": 640, "images": 8, "batch_size": 8},
}
ALL_LAYERS = ["encoder_early", "encoder_mid", "encoder_last", "decoder_last", "seg_head"]


def efficientnet_layers(model: torch.nn.Module) -> dict[str, str]:
    """The design's layer aliases on smp U-Net++ with an EfficientNet encoder."""
    out_indexes = model.encoder._out_indexes
    return {
        "encoder_early": f"encoder._blocks.{out_indexes[0]}",
        "encoder_mid": f"encoder._blocks.{out_indexes[2]}",
        "encoder_last": f"encoder._blocks.{len(model.encoder._blocks) - 1}",
        "decoder_last": "decoder.blocks.x_0_4",
        "seg_head": "segmentation_head.0",
    }


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prediction_masks(model: torch.nn.Module, batch: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [(torch.sigmoid(logits[0]) > 0.5).float().cpu().numpy() for logits in model(batch)]


def time_library(model, images, batch_size, layers, method, device, chunk) -> float:
    """Seconds for pytorch-grad-cam, one call per batch for one method at one layer
    (Score-CAM with its default 16 masked inputs per forward unless `chunk` is given)."""
    synchronise(device)
    start = time.perf_counter()
    cam = LIBRARY_CLASSES[method](model=model, target_layers=[model.get_submodule(layers)])
    if method == "scorecam" and chunk:
        cam.batch_size = chunk
    for index in range(0, len(images), batch_size):
        batch = images[index : index + batch_size]
        targets = [SemanticSegmentationTarget(0, mask) for mask in prediction_masks(model, batch)]
        cam(input_tensor=batch, targets=targets)
    cam.activations_and_grads.release()
    synchronise(device)
    return time.perf_counter() - start


def time_floor(model, images, batch_size, device) -> float:
    """One forward + one backward per batch with the segmentation target (input gradients
    only: no parameter gradients, as the engine)."""
    synchronise(device)
    start = time.perf_counter()
    for index in range(0, len(images), batch_size):
        batch = images[index : index + batch_size].clone().requires_grad_(True)
        logits = model(batch)[:, 0]
        score = (logits * (torch.sigmoid(logits.detach()) > 0.5)).sum()
        torch.autograd.grad(score, batch)
    synchronise(device)
    return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    """Platform, CPU model and core count, torch threads and version, and the GPU if any."""
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    cpu = models[0] if models else platform.processor() or platform.machine()
    name = f"{platform.platform()}, {cpu} ({os.cpu_count()} cores), "
    name += f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if device.type == "cuda":
        name += f", {torch.cuda.get_device_name(device)}"
    return name


def warm_compile(args: argparse.Namespace, chunk: int, device: torch.device) -> float | None:
    """Seconds of the first compiled Score-CAM call in a new process that finds this
    run's compile cache warm (what a second build on the same machine pays), or None
    (with the reason printed) when the probe fails. This process's cached GPU memory is
    released first, so the probe can use the same chunk (a different one would compile
    a new shape)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    command = [sys.executable, __file__, *sys.argv[1:], "--compile-probe", str(chunk),
               "--compile-cache", args.compile_cache]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        print("  warm compilation probe: no answer in 300 s")
        return None
    lines = done.stdout.strip().splitlines()
    try:
        return float(lines[-1])
    except (IndexError, ValueError):
        print(f"  warm compilation probe failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return None


def probe_compile(model, images, score_layers, target, device, args, batch_size: int,
                  chunk: int) -> None:
    """Print the seconds of a first compiled Score-CAM call on one image (after an
    eager call has loaded the device's kernels), with the given chunk shape."""
    options = {"device": device, "precision": args.precision, "batch_size": batch_size,
               "scorecam_chunk": chunk}
    CamEngine(model, score_layers, ["gradcam"], **options).explain(images[:1], target)
    engine = CamEngine(model, score_layers, ["scorecam"], scorecam_compile=True, **options)
    synchronise(device)
    start = time.perf_counter()
    engine.explain(images[:1], target)
    synchronise(device)
    print(f"{time.perf_counter() - start:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--encoder")
    parser.add_argument("--size", type=int)
    parser.add_argument("--images", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default="gradcam,gradcam++,scorecam,layercam")
    parser.add_argument("--layers", default=",".join(ALL_LAYERS))
    parser.add_argument("--scorecam-layers", help="Score-CAM on these layers only (default all)")
    parser.add_argument(
        "--scorecam-chunk", type=int, help="masked inputs per forward, both (default: each own)"
    )
    parser.add_argument("--max-channels", type=int, help="engine-only Faster Score-CAM run")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--compile", action="store_true", help="also run Score-CAM through torch.compile"
    )
    parser.add_argument(
        "--compile-cache",
        help="torch's compile cache (TORCHINDUCTOR_CACHE_DIR) for --compile; default: a new "
        "empty folder, so the first compilation is cold and a second process then finds it warm",
    )
    parser.add_argument("--compile-probe", type=int, help=argparse.SUPPRESS)  # see warm_compile
    parser.add_argument("--skip-library-scorecam", action="store_true")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    preset = PRESETS[args.config]
    encoder = args.encoder or preset["encoder"]
    size = args.size or preset["size"]
    count = args.images or preset["images"]
    batch_size = args.batch_size or preset["batch_size"]
    if args.threads:
        torch.set_num_threads(args.threads)
    own_cache = bool(args.compile and not args.compile_cache and not args.compile_probe)
    if own_cache:
        args.compile_cache = tempfile.mkdtemp(prefix="bench-inductor-")
    if args.compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(args.compile_cache).resolve())
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )

    torch.manual_seed(0)
    model = smp.UnetPlusPlus(encoder, encoder_weights=None, classes=1).to(device).eval()
    images = torch.randn(count, 3, size, size, device=device)
    aliases = efficientnet_layers(model)
    layers = {name: aliases[name] for name in args.layers.split(",")}
    methods = args.methods.split(",")
    gradient_methods = [method for method in methods if method != "scorecam"]
    score_layers = (
        {name: layers[name] for name in args.scorecam_layers.split(",")}
        if args.scorecam_layers
        else layers
    )
    target = SegmentationTarget(class_index=0, region="prediction")
    if args.compile_probe:
        probe_compile(model, images, score_layers, target, device, args, batch_size,
                      args.compile_probe)
        return

    print(f"# {datetime.date.today()} {device_name(device)}")
    print(f"# U-Net++ {encoder}, {size} px, {count} images, batch {batch_size}, device {device}")
    print(f"# layers {layers}; Score-CAM layers {list(score_layers)}")
    time_floor(model, images[:batch_size], batch_size, device)  # warm-up
    floor = time_floor(model, images, batch_size, device)

    library: dict[str, float] = {}
    for method in methods:
        if method == "scorecam" and args.skip_library_scorecam:
            continue
        method_layers = score_layers if method == "scorecam" else layers
        library[method] = sum(
            time_library(model, images, batch_size, path, method, device, args.scorecam_chunk)
            for path in method_layers.values()
        )

    def run_engine(engine_methods, engine_layers, warm_up=1, on_device=False, **options):
        """Seconds for the engine over all images, its stage timings, the Score-CAM chunk,
        and the seconds of a first call on `warm_up` images, timed apart (kernel loading,
        the automatic chunk's probe; with torch.compile the compilation), as the floor
        and the library run after a warm-up of the model."""
        engine = CamEngine(
            model,
            engine_layers,
            engine_methods,
            device=device,
            batch_size=batch_size,
            precision=args.precision,
            scorecam_chunk=args.scorecam_chunk,
            **options,
        )
        synchronise(device)
        start = time.perf_counter()
        engine.explain(images[:warm_up], target, on_device=on_device)
        synchronise(device)
        first = time.perf_counter() - start
        synchronise(device)
        start = time.perf_counter()
        result = engine.explain(images, target, on_device=on_device)
        synchronise(device)
        return time.perf_counter() - start, result.timings, engine.scorecam_chunk, first

    engine_gradient, gradient_stages, _, first = run_engine(
        gradient_methods, layers, warm_up=batch_size
    )
    notes = [f"  engine gradient family: first call on {batch_size} images {first:.2f} s"]
    kept, _, _, _ = run_engine(
        gradient_methods, layers, warm_up=batch_size, on_device=True
    )
    rows = [
        ("floor: 1 forward + 1 backward", None, floor),
        (
            f"gradient family {gradient_methods}",
            sum(library[m] for m in gradient_methods),
            engine_gradient,
        ),
        (
            "same, maps left on the device (explain(on_device=True))",
            sum(library[m] for m in gradient_methods),
            kept,
        ),
    ]
    notes.append(
        f"  engine / floor: {engine_gradient / floor:.2f}x (maps copied to the host), "
        f"{kept / floor:.2f}x (left on the device)"
    )
    warm_probe = None
    if "scorecam" in methods:
        engine_score, score_stages, chunk, first = run_engine(["scorecam"], score_layers)
        notes.append(f"  engine Score-CAM: first call on 1 image {first:.2f} s")
        rows.append((f"scorecam (full), {args.precision}", library.get("scorecam"), engine_score))
        notes.append(f"  Score-CAM chunk (masked inputs per forward): {chunk}")
        if args.compile:
            compiled, _, compiled_chunk, first = run_engine(
                ["scorecam"], score_layers, scorecam_compile=True
            )
            rows.append(
                (f"scorecam (full), {args.precision}, compiled", library.get("scorecam"), compiled)
            )
            per_image = compiled / count
            notes.append(
                f"  torch.compile: first call on 1 image {first:.1f} s "
                f"(cold compilation included), then {per_image:.3f} s/img, chunk {compiled_chunk}"
            )
            warm_probe = (compiled_chunk, first, per_image)
        if args.max_channels:
            engine_fast, _, _, _ = run_engine(
                ["scorecam"], layers, scorecam_max_channels=args.max_channels
            )
            rows.append(
                (f"scorecam max_channels={args.max_channels}, all layers", None, engine_fast)
            )
    print(f"{'work':58s} {'library s/img':>14s} {'engine s/img':>13s} {'speed-up':>9s}")
    for name, library_seconds, engine_seconds in rows:
        library_text = f"{library_seconds / count:14.3f}" if library_seconds else f"{'-':>14s}"
        ratio = f"{library_seconds / engine_seconds:8.1f}x" if library_seconds else f"{'-':>9s}"
        print(f"{name:58s} {library_text} {engine_seconds / count:13.3f} {ratio}")
    for method, seconds in library.items():
        print(f"  library {method}: {seconds / count:.3f} s/img")
    print(
        f"  engine stages (gradient run): { {k: round(v, 3) for k, v in gradient_stages.items()} }"
    )
    if "scorecam" in methods:
        print(
            f"  engine stages (scorecam run): { {k: round(v, 3) for k, v in score_stages.items()} }"
        )
    for note in notes:
        print(note)
    if warm_probe is not None:  # last: printed results survive a failed probe
        compiled_chunk, cold, per_image = warm_probe
        warm = warm_compile(args, compiled_chunk, device)
        if warm is not None:
            print(f"  torch.compile in a new process with torch's on-disk cache warm (a later "
                  f"build on this machine): first call {warm:.1f} s")
        for label, seconds in (("cold", cold), ("warm", warm)):
            if seconds is None or "scorecam" not in library:
                continue
            for total in (count, 100, 1000):
                amortised = (seconds + per_image * total) / total
                print(f"  compiled Score-CAM, {label} compilation amortised over {total}"
                      f" images: {amortised:.3f} s/img,"
                      f" {library['scorecam'] / count / amortised:.1f}x pytorch-grad-cam")
    if own_cache:
        shutil.rmtree(args.compile_cache, ignore_errors=True)


if __name__ == "__main__":
    main()
