"""Error types shared by every stage.

`UserError` (and subclasses) are mistakes in what the user gave us: a bad spec,
a missing file, a checkpoint that does not fit the model. The CLI prints their
message without a traceback and exits with code 2. Anything else is a bug and
exits with code 1.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; printed without a traceback (exit 2)."""


class SpecError(UserError):
    """One or more problems in a spec file, each already formatted with its location."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class CheckpointError(UserError):
    """A checkpoint cannot be read or does not fit the model."""


class LayerError(UserError):
    """A layer alias or module path cannot be resolved."""


class DataError(UserError):
    """An image or mask cannot be read."""
