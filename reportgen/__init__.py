"""reportgen: class-activation-map reports for image segmentation models."""

__version__ = "0.1.0"
