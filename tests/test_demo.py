"""The shipped demo: real MRI slices and a trained checkpoint that reproduce the model card."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from reportgen.compute.data import load_samples
from reportgen.compute.discovery import find_images
from reportgen.compute.metrics import dice
from reportgen.compute.models import build_model, load_checkpoint
from reportgen.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "validation.yaml"


def card_dice() -> float:
    card = (ROOT / "data" / "demo" / "model" / "MODEL_CARD.md").read_text()
    return float(re.search(r"mean over the \d+ test\s+slices: \*\*([0-9.]+)\*\*", card).group(1))


def test_demo_spec_names_the_shipped_test_slices_and_checkpoint():
    spec = load_spec(SPEC)
    images = find_images(spec.data)
    assert len(images) == 8 and all(p.parent.parent.name == "test" for p in images)
    assert spec.model.checkpoint.is_file()
    assert spec.layers == ["encoder_early", "encoder_mid", "encoder_last", "decoder_last",
                           "seg_head"]
    assert set(spec.methods) >= {"gradcam", "gradcam++", "scorecam", "layercam"}


def test_committed_checkpoint_reproduces_the_model_card_dice():
    spec = load_spec(SPEC)
    m = spec.model
    model = build_model(m.architecture, m.encoder, m.classes, m.in_channels)
    load_checkpoint(model, m.checkpoint)
    samples = load_samples(spec.data, m.size, m.in_channels, m.norm)
    with torch.no_grad():
        logits = model.eval()(torch.stack([s.tensor for s in samples]))
    prediction = torch.sigmoid(logits[:, 0]) > spec.target.threshold
    truth = torch.stack([torch.from_numpy(s.gt_mask) for s in samples])
    values = [v.value for v in dice(prediction, truth)]
    assert abs(sum(values) / len(values) - card_dice()) <= 0.005
