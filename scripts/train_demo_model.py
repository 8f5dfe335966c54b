"""Train the demo brain-segmentation model shipped under ``data/demo/model/``.

The demo report explains a real, trained segmentation model. This script trains a
segmentation_models_pytorch ``UnetPlusPlus`` with an ``efficientnet-b0`` encoder (random
initialisation: no pretrained weights are downloaded) to segment the brain on the axial MRI
slices written by ``scripts/make_demo_data.py``, on the CPU, in a few minutes.

Preprocessing is exactly the report's (``normalize: imagenet``): read the PNG as 8-bit
grayscale, ``cv2.resize`` to SIZE x SIZE with ``INTER_LINEAR`` (masks: ``INTER_NEAREST``),
replicate the gray channel to 3 channels, divide by 255, subtract the ImageNet mean and divide
by the ImageNet std. Augmentation (training batches only) acts on the resized [0, 1] image before
normalisation: horizontal flips, a small random affine (rotation, scale, shift) and intensity
jitter (contrast, brightness, gamma).

Loss: Dice + BCE on the logits; optimiser: Adam with a cosine learning-rate schedule. A few
training slices are held out for validation; the epoch with the best validation Dice is kept.
The test slices are used only once, at the end, to report the test Dice.

Outputs:

* ``data/demo/model/unetpp_effb0_brain.safetensors``: the ``model.state_dict()`` with
  floating-point tensors stored as fp16 (integer buffers unchanged);
* ``data/demo/model/MODEL_CARD.md``: architecture, data, training and evaluation, with the
  test Dice measured after loading the fp16 weights back into an fp32 model.

Usage::

    python scripts/train_demo_model.py              # defaults used for the shipped model
    python scripts/train_demo_model.py --help
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data" / "demo"
ARCHITECTURE = "UnetPlusPlus"
ENCODER = "efficientnet-b0"
CHECKPOINT_NAME = "unetpp_effb0_brain.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    """Images as resized gray [0, 1] arrays (N, S, S) and binary masks (N, S, S)."""

    names: list[str]
    images: torch.Tensor
    masks: torch.Tensor


def load_split(folder: Path, size: int) -> Split:
    """Load every image/mask pair of a split, resized like the report does."""
    paths = sorted((folder / "images").glob("*.png"))
    if not paths:
        sys.exit(f"no images in {folder / 'images'}; run scripts/make_demo_data.py first")
    images, masks = [], []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(folder / "masks" / path.name), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            sys.exit(f"cannot read {path} or its mask")
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        images.append(image.astype(np.float32) / 255.0)
        masks.append((mask > 127).astype(np.float32))
    return Split(
        [p.stem for p in paths],
        torch.from_numpy(np.stack(images)),
        torch.from_numpy(np.stack(masks)),
    )


def subset(split: Split, indices: list[int]) -> Split:
    return Split([split.names[i] for i in indices], split.images[indices], split.masks[indices])


def normalise(gray: torch.Tensor) -> torch.Tensor:
    """(N, S, S) gray in [0, 1] -> (N, 3, S, S) ImageNet-normalised network input."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (gray.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std


def augment(
    gray: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip, small affine and intensity jitter on a batch of (N, S, S) images."""
    n = gray.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-12.0, 12.0) * math.pi / 180.0
    scale = uniform(0.9, 1.1)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, uniform(-0.08, 0.08)], dim=1),
            torch.stack([sin * flip, cos, uniform(-0.08, 0.08)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, 1, *gray.shape[1:]], align_corners=False)
    gray = F.grid_sample(gray.unsqueeze(1), grid, mode="bilinear", align_corners=False)[:, 0]
    mask = F.grid_sample(mask.unsqueeze(1), grid, mode="nearest", align_corners=False)[:, 0]

    contrast = uniform(0.8, 1.2).view(n, 1, 1)
    brightness = uniform(-0.08, 0.08).view(n, 1, 1)
    gamma = uniform(0.8, 1.25).view(n, 1, 1)
    gray = (gray.clamp(0, 1) ** gamma * contrast + brightness).clamp(0, 1)
    return gray, mask


def build_model() -> torch.nn.Module:
    return smp.UnetPlusPlus(encoder_name=ENCODER, encoder_weights=None, in_channels=3, classes=1)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, split: Split, batch_size: int) -> None:
    """Replace BatchNorm running statistics by their exact average over the training images.

    The EfficientNet encoder's BatchNorm layers use momentum 0.01, so after the few hundred
    optimiser steps of this short training their running statistics still lean on their
    initial values and the model in eval mode would not match the model being trained.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the passes below
    model.train()
    for start in range(0, len(split.names), batch_size):
        model(normalise(split.images[start : start + batch_size]))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


@torch.no_grad()
def dice_scores(model: torch.nn.Module, split: Split, batch_size: int = 8) -> list[float]:
    """Per-image Dice at SIZE x SIZE, prediction = sigmoid(logit) > 0.5 (empty vs empty = 1)."""
    model.eval()
    scores = []
    for start in range(0, len(split.names), batch_size):
        gray = split.images[start : start + batch_size]
        truth = split.masks[start : start + batch_size] > 0.5
        pred = torch.sigmoid(model(normalise(gray))[:, 0]) > 0.5
        inter = (pred & truth).sum(dim=(1, 2)).float()
        total = (pred.sum(dim=(1, 2)) + truth.sum(dim=(1, 2))).float()
        dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
        scores.extend(dice.tolist())
    return scores


def save_fp16(model: torch.nn.Module, path: Path, size: int) -> None:
    """Save the state_dict as safetensors, floating-point tensors in fp16."""
    state = {
        key: (value.half() if value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }
    metadata = {
        "format": "pt",
        "architecture": ARCHITECTURE,
        "encoder": ENCODER,
        "in_channels": "3",
        "classes": "1",
        "activation": "sigmoid",
        "input_size": str(size),
        "normalize": "imagenet",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_fp16_as_fp32(path: Path) -> torch.nn.Module:
    model = build_model()
    state = {
        k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()
    }
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def forward_seconds(model: torch.nn.Module, size: int, repeats: int = 10) -> float:
    """Median wall time of one batch-1 forward pass at SIZE x SIZE."""
    x = torch.zeros(1, 3, size, size)
    model.eval()
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_model_card(path: Path, args: argparse.Namespace, facts: dict[str, str]) -> None:
    card = f"""# Demo model: brain segmentation, U-Net++ / EfficientNet-B0

Checkpoint: `{CHECKPOINT_NAME}` (safetensors, {facts["file_mb"]} MB). The tensors are the
`model.state_dict()` of the model below, keys unchanged; floating-point tensors are stored in
fp16 (integer BatchNorm counters unchanged). Load them into an fp32 model with `.float()`.

## Model

- Library: segmentation_models_pytorch {smp.__version__}.
- Architecture: `smp.{ARCHITECTURE}(encoder_name="{ENCODER}", encoder_weights=None,
  in_channels=3, classes=1)`, {facts["params"]} parameters.
- Encoder: `{ENCODER}`, randomly initialised (no pretrained weights).
- Output: 1 channel of logits; activation `sigmoid`; class `brain`; threshold 0.5.
- Input size: {args.size} x {args.size}.
- Preprocessing (`normalize: imagenet`): 8-bit grayscale PNG -> `cv2.resize` to
  {args.size} x {args.size} with `INTER_LINEAR` -> gray replicated to 3 channels -> / 255 ->
  ImageNet normalisation (mean {IMAGENET_MEAN}, std {IMAGENET_STD}).
- Forward time: {facts["forward_ms"]} ms per image (batch 1, fp32,
  torch.set_num_threads({args.threads}), {facts["cpu"]}).

Why {args.size} px: the CPU demo report (Score-CAM with one forward pass per channel,
deletion/insertion curves with many forward passes, on every test image, layer and method) must
stay within its time budget. On the same machine a forward pass at 256 px took
{facts["forward_256_ms"]} ms against {facts["forward_ms"]} ms at {args.size} px, and brain masks
are large, smooth shapes that need no finer resolution.

## Data

Axial slices of the Colin27 T1-weighted brain MRI and its skull-stripped version (brain
mask = skull-stripped voxels > 0) from Debian's `mricron-data`; see `../LICENSE-DATA.md` and
`../README.md`. Training slices are never within 2 planes of a test slice.

- Training: {facts["n_train"]} slices from `data/demo/train/`.
- Validation: {facts["n_val"]} slices held out from `data/demo/train/`: {facts["val_names"]}.
- Test: {facts["n_test"]} slices in `data/demo/test/`: {facts["test_names"]}.

All slices come from one volume (one healthy adult head), so the test Dice measures
generalisation across planes of that head, not across people, scanners or pathologies. This
model is a demonstration artefact, not a clinical tool.

## Training

- Loss: Dice + BCE on the logits.
- Optimiser: Adam, learning rate {args.lr:g} with a cosine schedule to 0, batch size
  {args.batch_size}.
- BatchNorm: after each epoch the running statistics are recomputed exactly over the
  (unaugmented) training images before validation, because the encoder's BatchNorm momentum
  of 0.01 leaves them far behind the weights in a short training.
- Epochs: {args.epochs}; the checkpoint is epoch {facts["best_epoch"]}, the best validation
  Dice ({facts["best_val"]}).
- Augmentation: horizontal flip; rotation +-12 deg, scale 0.9-1.1, shift +-4 % of the side;
  contrast 0.8-1.2, brightness +-0.08, gamma 0.8-1.25.
- Seed: {args.seed} (Python, NumPy and torch; deterministic algorithms).
- Training time: {facts["train_min"]} min.
- Machine: {facts["cpu"]}, {os.cpu_count()} cores, CPU only, torch {torch.__version__},
  torch.set_num_threads({args.threads}).

## Evaluation

Test Dice with the fp16 checkpoint loaded back into an fp32 model, at {args.size} x {args.size}
(sigmoid > 0.5 against the nearest-neighbour-resized mask), mean over the {facts["n_test"]} test
slices: **{facts["test_dice"]}** (per slice: {facts["test_per_image"]}).

## Reproduce

```
python scripts/make_demo_data.py
{facts["command"]}
```
"""
    path.write_text(card)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="demo data folder")
    parser.add_argument("--size", type=int, default=192, help="square input size (multiple of 32)")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate")
    parser.add_argument(
        "--val-every",
        type=int,
        default=8,
        help="hold out every VAL_EVERY-th training slice (starting at the 4th) for validation",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    if args.size % 32:
        parser.error("--size must be a multiple of 32")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    everything = load_split(args.data / "train", args.size)
    val_idx = list(range(min(3, len(everything.names) - 1), len(everything.names), args.val_every))
    train = subset(everything, [i for i in range(len(everything.names)) if i not in val_idx])
    val = subset(everything, val_idx)
    test = load_split(args.data / "test", args.size)
    print(f"train {len(train.names)}, val {len(val.names)}, test {len(test.names)}", flush=True)

    model = build_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(train.names) / args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.epochs * steps_per_epoch)
    dice_loss = smp.losses.DiceLoss(mode="binary", from_logits=True)
    generator = torch.Generator().manual_seed(args.seed)
    out_dir = args.data / "model"
    checkpoint = out_dir / CHECKPOINT_NAME

    best_val, best_epoch = -1.0, 0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train.names), generator=generator)
        losses = []
        for first in range(0, len(order), args.batch_size):
            batch = order[first : first + args.batch_size]
            gray, mask = augment(train.images[batch], train.masks[batch], generator)
            logits = model(normalise(gray))
            target = mask.unsqueeze(1)
            loss = dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        recalibrate_batchnorm(model, train, args.batch_size)
        val_dice = float(np.mean(dice_scores(model, val)))
        if val_dice > best_val:
            best_val, best_epoch = val_dice, epoch
            save_fp16(model, checkpoint, args.size)
        elapsed = time.perf_counter() - start
        print(
            f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  val Dice {val_dice:.4f}  "
            f"best {best_val:.4f} (epoch {best_epoch})  {elapsed / 60:.1f} min",
            flush=True,
        )
    train_minutes = (time.perf_counter() - start) / 60

    reloaded = load_fp16_as_fp32(checkpoint)
    test_scores = dice_scores(reloaded, test)
    test_dice = float(np.mean(test_scores))
    forward = forward_seconds(reloaded, args.size)
    forward_256 = forward_seconds(reloaded, 256)
    print(f"test Dice (fp16 weights in fp32 model) {test_dice:.4f}", flush=True)
    print(f"forward {forward * 1000:.0f} ms per image at {args.size} px", flush=True)

    command = shlex.join(["python", "scripts/train_demo_model.py", *sys.argv[1:]])
    facts = {
        "file_mb": f"{checkpoint.stat().st_size / 1e6:.1f}",
        "params": f"{sum(p.numel() for p in reloaded.parameters()):,}",
        "forward_ms": f"{forward * 1000:.0f}",
        "forward_256_ms": f"{forward_256 * 1000:.0f}",
        "cpu": cpu_name(),
        "n_train": str(len(train.names)),
        "n_val": str(len(val.names)),
        "val_names": ", ".join(f"`{n}`" for n in val.names),
        "n_test": str(len(test.names)),
        "test_names": ", ".join(f"`{n}`" for n in test.names),
        "best_epoch": str(best_epoch),
        "best_val": f"{best_val:.4f}",
        "train_min": f"{train_minutes:.1f}",
        "test_dice": f"{test_dice:.4f}",
        "test_per_image": ", ".join(f"{s:.3f}" for s in test_scores),
        "command": command,
    }
    write_model_card(out_dir / "MODEL_CARD.md", args, facts)
    print(f"wrote {checkpoint} and {out_dir / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
