"""Fixtures shared by the CAM engine's test modules (each asks for them by name)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.cam_fixtures import one_thread, trained_unetpp


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a whole test module (see `one_thread`): a module opts in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The briefly trained U-Net++ of `trained_unetpp`."""
    return trained_unetpp()
