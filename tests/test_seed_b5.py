"""The reference user's configuration works end to end: U-Net++ / EfficientNet-B5 from a
state_dict checkpoint, images and masks in a dataset folder (small size for speed)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import yaml

from reportgen.build import BuildOptions, build
from reportgen.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def test_seed_b5_spec_validates_against_the_schema():
    spec = load_spec(ROOT / "specs" / "seed-b5.yaml", check_files=False)  # its data is yours
    assert spec.model.encoder == "efficientnet-b5" and spec.model.size == (640, 640)


@pytest.mark.slow
def test_seed_b5_configuration_builds_end_to_end(tmp_path: Path):
    spec = yaml.safe_load((ROOT / "specs" / "seed-b5.yaml").read_text())
    torch.manual_seed(0)
    model = smp.UnetPlusPlus("efficientnet-b5", encoder_weights=None, classes=1)
    (tmp_path / "models").mkdir()
    torch.save(model.state_dict(), tmp_path / "models" / "best_model.pth")
    images, masks = tmp_path / "Dataset/test/images", tmp_path / "Dataset/test/masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        picture = (rng.random((80, 96, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(images / f"case{i}.jpg"), picture)
        mask = np.zeros((80, 96), np.uint8)
        mask[20:60, 30:70] = 255
        cv2.imwrite(str(masks / f"case{i}.png"), mask)
    # The shipped file, shrunk only where a CPU test must be fast.
    spec["model"]["input_size"] = 64
    spec["method_options"]["scorecam"]["max_channels"] = 4
    spec["metric_options"]["faithfulness"]["steps"] = 4
    spec["metric_options"]["sanity"].update(images=1, levels=2)
    spec["output"]["pdf"] = None
    path = tmp_path / "seed-b5.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path)
    assert loaded.model.checkpoint == tmp_path / "models" / "best_model.pth"
    result = build(path, BuildOptions())
    assert result.images == 2
    page = (tmp_path / "site-b5" / "images" / "case0.html").read_text()
    assert "encoder_last" in page and "scorecam" in page
    with (tmp_path / "site-b5" / "data" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    sanity = [r for r in rows if r["metric"] == "sanity_spearman"]
    measured = [r for r in sanity if r["status"] == "ok"]
    assert len(measured) >= len(sanity) // 2
    assert all(0 <= float(r["value"]) <= 1 for r in measured)
    assert all(r["reason"] for r in sanity if r["status"] != "ok")  # e.g. a constant map
    assert {r["metric"] for r in rows} >= {"deletion_auc", "insertion_auc", "dice",
                                           "attention_ratio", "pointing_game"}
    shutil.rmtree(tmp_path / "site-b5")
