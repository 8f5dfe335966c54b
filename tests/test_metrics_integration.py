"""A small trained segmentation model end to end: the sanity check tells Grad-CAM
from an edge detector that ignores the model, and every metric of a real image
lands in the CSV / JSON exports."""

import csv
import json

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from reportgen.compute.cam import CamEngine, SegmentationTarget
from reportgen.compute.metrics import (
    GROUPS,
    METRICS,
    MetricInputs,
    MetricSettings,
    aggregate,
    evaluate_image,
    sanity_check,
    write_metrics_csv,
    write_metrics_json,
)

SIZE = 48
LAYERS = {"encoder_last": "encoder.layer2", "decoder_last": "decoder.blocks.2"}


def synthetic_shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with one bright-red lesion (square or disc, the mask) and one
    green distractor square that is not a lesion."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.3
    masks = torch.zeros(count, SIZE, SIZE)
    for index in range(count):
        row, col = torch.randint(12, SIZE - 12, (2,), generator=generator).tolist()
        radius = int(torch.randint(5, 9, (1,), generator=generator))
        if index % 2:
            lesion = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
        else:
            lesion = ((rows - row).abs() <= radius) & ((cols - col).abs() <= radius)
        masks[index] = lesion.float()
        images[index, 0] += 0.7 * lesion
        row, col = torch.randint(4, SIZE - 4, (2,), generator=generator).tolist()
        images[index, 1, row - 4:row + 4, col - 4:col + 4] += 0.7
    return images, masks


@pytest.fixture(scope="module")
def trained_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3,
                     decoder_channels=(16, 8, 8), classes=1)
    images, masks = synthetic_shapes(32, seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        batch = torch.randint(0, len(images), (8,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(model(images[batch])[:, 0], masks[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_shapes(4, seed=1)


def test_trained_model_segments_the_lesions(trained_model, test_images):
    images, masks = test_images
    with torch.no_grad():
        prediction = trained_model(images)[:, 0] > 0
    dice = 2 * (prediction & masks.bool()).sum() / (prediction.sum() + masks.sum())
    assert dice > 0.6


def test_gradcam_passes_the_sanity_check_and_an_edge_detector_fails_it(
        trained_model, test_images):
    images, masks = test_images

    def gradcam(model: torch.nn.Module) -> dict:
        engine = CamEngine(model, layers=LAYERS, methods=["gradcam"], device="cpu")
        # A fixed target (the ground truth) so that only the model changes.
        target = SegmentationTarget(class_index=0, region="ground_truth")
        return engine.explain(images, target, gt_masks=masks).maps

    def sobel(_: torch.nn.Module) -> dict:
        kernel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
        gray = images.mean(dim=1, keepdim=True)
        edges = torch.hypot(F.conv2d(gray, kernel, padding=1),
                            F.conv2d(gray, kernel.mT, padding=1))[:, 0]
        return {("input", "sobel"): edges / edges.amax(dim=(1, 2), keepdim=True)}

    gradcam_verdicts = sanity_check(trained_model, gradcam, seed=0, levels=3).verdicts()
    sobel_verdicts = sanity_check(trained_model, sobel, seed=0, levels=3).verdicts()

    assert {key: v.status for key, v in gradcam_verdicts.items()} == {
        ("encoder_last", "gradcam"): "pass", ("decoder_last", "gradcam"): "pass"}
    assert sobel_verdicts["input", "sobel"].status == "fail"
    assert sobel_verdicts["input", "sobel"].statistic == pytest.approx(1.0)


def test_every_metric_of_an_image_is_exported_identically_twice(
        trained_model, test_images, tmp_path):
    images, masks = test_images
    engine = CamEngine(trained_model, layers=LAYERS, methods=["gradcam", "gradcam++"],
                       device="cpu")
    result = engine.explain(images, SegmentationTarget(class_index=0, region="prediction"))
    sanity = sanity_check(trained_model, lambda model: CamEngine(
        model, layers=LAYERS, methods=["gradcam", "gradcam++"], device="cpu").explain(
        images, SegmentationTarget(class_index=0, region="ground_truth"), gt_masks=masks).maps,
        levels=1)
    settings = MetricSettings(faithfulness_steps=5, batch_size=16)
    rows = []
    for index in range(len(images)):
        inputs = MetricInputs(
            f"img-{index}", maps={key: maps[index] for key, maps in result.maps.items()},
            prediction=result.regions[index], ground_truth=masks[index], image=images[index],
            model=trained_model, sanity=sanity, image_index=index, settings=settings)
        rows += evaluate_image(inputs, GROUPS)

    per_map = [spec for spec in METRICS.values() if spec.per_map]
    assert len(rows) == len(images) * (len(result.maps) * len(per_map) + 2)
    assert all((row.value is None) == (row.status != "ok") for row in rows)
    assert {row.metric for row in rows} == set(METRICS)

    paths = [tmp_path / name for name in ("a.csv", "b.csv", "a.json", "b.json")]
    write_metrics_csv(rows, paths[0])
    write_metrics_csv(list(reversed(rows)), paths[1])
    write_metrics_json(rows, paths[2])
    write_metrics_json(list(reversed(rows)), paths[3])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[2].read_bytes() == paths[3].read_bytes()

    with paths[0].open() as stream:
        table = list(csv.DictReader(stream))
    assert list(table[0]) == ["image", "layer", "method", "metric", "value", "status", "reason"]
    assert len(table) == len(rows) == len(json.loads(paths[2].read_text()))

    summary = aggregate(rows)
    dice_row = next(row for row in summary if row.metric == "dice")
    assert dice_row.n + dice_row.n_na == len(images)
