"""Time of the metrics per image relative to the CAM time, on a small model.

    python bench/metrics.py [--size 128] [--images 4] [--device cpu]

CAM: the gradient family (gradcam, gradcam++, layercam) at two layers in one
engine pass. Metrics: each group of the registry over the same maps; the sanity
check (3 cascade levels, one CAM pass each) is divided over the images.
Prints one Markdown table row per stage (median of --repeats runs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch

from reportgen.compute.cam import CamEngine, SegmentationTarget
from reportgen.compute.metrics import MetricInputs, MetricSettings, evaluate_image, sanity_check

LAYERS = {"encoder_last": "encoder.layer4", "decoder_last": "decoder.blocks.4"}
METHODS = ["gradcam", "gradcam++", "layercam"]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = smp.Unet("resnet18", encoder_weights=None, classes=1).to(device).eval()
    images = torch.rand(args.images, 3, args.size, args.size, device=device)
    target = SegmentationTarget(class_index=0, region="image")
    engine = CamEngine(model, layers=LAYERS, methods=METHODS, device=device)

    def explain(trial: torch.nn.Module = model) -> dict:
        return CamEngine(trial, layers=LAYERS, methods=METHODS, device=device).explain(
            images, target).maps

    result = engine.explain(images, target)
    maps = {key: value.to(device) for key, value in result.maps.items()}
    # Half of each image as the prediction and the ground truth, so every metric is defined.
    mask = torch.zeros(args.size, args.size, dtype=torch.bool, device=device)
    mask[:, : args.size // 2] = True
    settings = MetricSettings()

    def metrics(groups: list[str]) -> Callable[[], object]:
        def run() -> None:
            for index in range(args.images):
                evaluate_image(MetricInputs(
                    f"img-{index}", maps={key: value[index] for key, value in maps.items()},
                    prediction=mask, ground_truth=mask, image=images[index], model=model,
                    settings=settings), groups)
        return run

    per_image = {
        "CAM (3 gradient methods x 2 layers)": median_seconds(
            lambda: engine.explain(images, target), args.repeats) / args.images,
        "attention + dice + localisation": median_seconds(
            metrics(["attention", "dice", "localisation"]), args.repeats) / args.images,
        "faithfulness (20 steps, blur)": median_seconds(
            metrics(["faithfulness"]), args.repeats) / args.images,
        "sanity (3 levels)": median_seconds(
            lambda: sanity_check(model, explain, levels=3), args.repeats) / args.images,
    }
    cam = per_image["CAM (3 gradient methods x 2 layers)"]
    print(f"| stage | ms per image | x CAM |  ({args.images} images, {args.size} px, "
          f"{device}, {torch.get_num_threads()} threads)")
    print("|---|---:|---:|")
    for stage, seconds in per_image.items():
        print(f"| {stage} | {seconds * 1000:.1f} | {seconds / cam:.2f} |")


if __name__ == "__main__":
    main()
