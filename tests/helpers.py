"""Small builders shared by the foundation tests: images on disk and spec files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml


def write_images(folder: Path, count: int = 3, size: int = 64, masks: bool = True,
                 seed: int = 0) -> None:
    """Grayscale discs on noise, with their masks as 0/255 PNGs under folder/masks."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (folder / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [size // 6]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = (rng.random((size, size)) * 60 + disc * 150).astype(np.uint8)
        cv2.imwrite(str(folder / "images" / f"img{i:02d}.png"), image)
        if masks:
            cv2.imwrite(str(folder / "masks" / f"img{i:02d}.png"), disc.astype(np.uint8) * 255)


def write_spec(path: Path, **sections: object) -> Path:
    """Write a spec with sensible small defaults, overridden per section."""
    spec: dict[str, object] = {
        "model": {"architecture": "UnetPlusPlus", "encoder": "efficientnet-b0",
                  "input_size": 64},
        "data": {"images": "images/*.png", "masks": "masks/{stem}.png"},
        "layers": ["encoder_early", "encoder_last", "decoder_last"],
        "methods": ["gradcam", "gradcam++"],
    }
    for key, value in sections.items():
        if value is None:
            spec.pop(key, None)
        elif isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}  # type: ignore[dict-item]
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fresh_unet():
    """A fresh 2-class Unet/resnet18, the architecture of the `trained` fixture."""
    from reportgen.compute.models import build_model

    return build_model("Unet", "resnet18", classes=2)
