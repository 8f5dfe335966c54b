"""reportgen: class-activation-map reports for image segmentation models."""

from reportgen.offline import stay_offline

__version__ = "0.1.0"

stay_offline()  # before any module of the package can import timm or huggingface_hub
