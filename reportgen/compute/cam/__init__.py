"""Class-activation maps for segmentation models.

from reportgen.compute.cam import CamEngine, SegmentationTarget
engine = CamEngine(model, layers=["encoder_last", "decoder.blocks.x_0_4"],  # as in a spec
                   methods=["gradcam", "gradcam++", "scorecam", "layercam"])
result = engine.explain(images, SegmentationTarget(class_index=0, region="prediction"))
result.maps["encoder_last", "gradcam"]   # [N, H, W] in [0, 1]
"""

from reportgen.compute.cam.engine import (
    CamEngine,
    CamResult,
    CheckOptions,
    CheckRow,
    check_methods,
    compute_cam,
)
from reportgen.compute.cam.methods import (
    METHODS,
    MethodEntry,
    MethodListing,
    get_method,
    list_methods,
)
from reportgen.compute.cam.normalise import FLAG_REASONS
from reportgen.compute.cam.target import SegmentationTarget

__all__ = [
    "FLAG_REASONS",
    "METHODS",
    "CamEngine",
    "CamResult",
    "CheckOptions",
    "CheckRow",
    "MethodEntry",
    "MethodListing",
    "SegmentationTarget",
    "check_methods",
    "compute_cam",
    "get_method",
    "list_methods",
]
