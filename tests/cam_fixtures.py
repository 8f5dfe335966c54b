"""Shared test material for the CAM engine: synthetic shapes and a briefly trained U-Net++.

A model trained for a few steps has gradients far from vanishing, so agreement
with pytorch-grad-cam is tested on maps with real structure.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import segmentation_models_pytorch as smp
import torch

SIZE = 64
LAYERS = {
    "encoder_early": "encoder._blocks.2",  # efficientnet-b0 out_indexes[0]: stride 4
    "encoder_last": "encoder._blocks.15",
    "decoder_last": "decoder.blocks.x_0_4",
}


def synthetic_shapes(count: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images [N, 3, size, size] with one bright disc or square each, and its mask."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(count, 3, size, size, generator=generator)
    masks = torch.zeros(count, size, size)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for index in range(count):
        centre = torch.randint(size // 4, 3 * size // 4, (2,), generator=generator)
        radius = int(torch.randint(size // 10, size // 5, (1,), generator=generator))
        if index % 2:
            shape = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2
        else:
            shape = ((rows - centre[0]).abs() <= radius) & ((cols - centre[1]).abs() <= radius)
        masks[index] = shape.float()
        images[index] += 1.5 * shape.float()
    return images, masks


@functools.cache
def trained_unetpp() -> torch.nn.Module:
    """U-Net++ / efficientnet-b0 (no pretrained weights), 20 Adam steps on synthetic shapes."""
    torch.manual_seed(0)
    model = smp.UnetPlusPlus("efficientnet-b0", encoder_weights=None, classes=1)
    images, masks = synthetic_shapes(32, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_function = torch.nn.BCEWithLogitsLoss()
    model.train()
    for step in range(20):
        batch = slice((step * 4) % 32, (step * 4) % 32 + 4)
        loss = loss_function(model(images[batch])[:, 0], masks[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    for parameter in model.parameters():
        parameter.grad = None
    return model


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps, flattened."""
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: these small kernels are latency bound, and two threads on
    a loaded two-core machine spin against each other (ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
