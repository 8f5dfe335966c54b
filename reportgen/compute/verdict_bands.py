"""The attention-ratio verdict bands: one definition, which the spec's
`metric_options.attention.bands` validates and the attention metric applies.

Its own module, free of torch, so that reading a spec stays light.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator


class VerdictBands(BaseModel):
    """Attention-ratio verdict bands: above excellent "excellent", from good "good", from
    fair "fair", else "concerning" (reportgen.compute.metrics.VerdictBands applies them)."""

    # frozen: a default argument and a field default of the metric settings
    model_config = ConfigDict(extra="forbid", frozen=True)

    excellent: float = 5.0
    good: float = 2.0
    fair: float = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> VerdictBands:
        if not self.excellent > self.good > self.fair > 0:
            raise ValueError("bands must satisfy excellent > good > fair > 0")
        return self

    @property
    def lines(self) -> tuple[float, float, float]:
        """The bounds (fair, good, excellent), low to high, as drawn on ratio plots."""
        return (self.fair, self.good, self.excellent)

    @property
    def text(self) -> str:
        """The bands in words, e.g. "above 5 excellent, 2–5 good, 1–2 fair, below 1
        concerning"."""
        return (f"above {self.excellent:g} excellent, {self.good:g}–{self.excellent:g} good, "
                f"{self.fair:g}–{self.good:g} fair, below {self.fair:g} concerning")


DEFAULT_BANDS = VerdictBands()
"""The original report's bands (5, 2, 1)."""
