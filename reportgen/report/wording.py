"""Words for the reader about how a report was computed: what the spec left out or
bounded, and what "≈" means. The computation hands over facts (which layers and
methods, how many channels); every sentence about them is written here, once, and the
site and the PDF show the same words.
"""

from __future__ import annotations

from reportgen.spec import Spec

# Why the median verdicts leave out a layer by default (`spec.NOT_VERDICT_LAYERS`).
NOT_VERDICT_REASONS = {
    "encoder_early": "its maps follow edges and texture, so low ratios are expected there",
    "seg_head": "its maps restate the predicted logits: they show where the prediction is, "
                "not what led to it",
}


def verdict_note(spec: Spec) -> str:
    """A sentence on which layers the median verdicts leave out and why, or on why
    they rest on layers usually left out ("" when there is nothing to say)."""
    chosen = spec.metric_options.attention.verdict_layers is not None
    left_out = [la for la in spec.layers if la not in spec.verdict_layers]
    if left_out and chosen:
        return (f"Not counted: {', '.join(left_out)} (left out by "
                "metric_options.attention.verdict_layers).")
    if left_out:
        return ("Not counted: " + ", ".join(f"{la} ({NOT_VERDICT_REASONS[la]})"
                                            for la in left_out)
                + "; metric_options.attention.verdict_layers changes this.")
    usual = [la for la in spec.verdict_layers if la in NOT_VERDICT_REASONS]
    if usual and not chosen:  # the spec has no other layer
        return ("Counted only layers usually left out: " + ", ".join(
            f"{la} ({NOT_VERDICT_REASONS[la]})" for la in usual)
            + "; add encoder_mid, encoder_last or decoder_last to the layers for a "
            "verdict on what the model attends to.")
    return ""
