"""Computation: models and layers, images and masks, class-activation maps, metrics, and
the per-image pipeline that runs them. Nothing here knows how a report looks; the
cache of per-image results is keyed by the source of this package only."""
