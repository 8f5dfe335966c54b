"""Words for the reader about how a report was computed: what the spec left out or
bounded, and what "≈" means. The computation hands over facts (which layers and
methods, how many channels); every sentence about them is written here, once, and the
site and the PDF show the same words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reportgen.spec import Spec

if TYPE_CHECKING:
    from reportgen.compute.pipeline import Plan

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


def bounds(plan: Plan) -> list[str]:
    """What the spec limited, one sentence each, said wherever results are shown:
    approximate Score-CAM layers, Score-CAM left out of layers, the faithfulness curves'
    resolution and subset, the sanity check's images, levels and methods."""
    spec = plan.spec
    sentences = [f"Score-CAM at {layer} is approximate: the {kept} highest-variance channels "
                 f"of {total} were scored"
                 for layer, (kept, total) in plan.scorecam_channels.items()]
    score = spec.method_options.scorecam
    if "scorecam" in spec.methods and score.layers:
        sentences.append(f"Score-CAM computed only at: {', '.join(score.layers)}")
    if "faithfulness" in spec.metrics:
        faith = spec.metric_options.faithfulness
        subset = "" if faith.layers is None and faith.methods is None else (
            f", only for layers {', '.join(faith.layers or list(plan.layers))} x methods "
            f"{', '.join(faith.methods or spec.methods)}")
        sentences.append(f"Deletion/insertion AUC: {faith.steps} steps, {faith.baseline} "
                         f"baseline{subset}")
    if "sanity" in spec.metrics:
        sentences.append(f"Sanity check on the first {plan.sanity_images} image(s), "
                         f"{spec.metric_options.sanity.levels} randomisation levels, methods "
                         f"{', '.join(plan.sanity_methods)}")
    return sentences


def approximate_note(plan: Plan) -> str:
    """What "≈" means beside a value of an approximate map ("" when none is)."""
    if not plan.scorecam_channels:
        return ""
    at = ", ".join(f"{layer} ({total} channels)"
                   for layer, (_, total) in plan.scorecam_channels.items())
    kept = plan.spec.method_options.scorecam.max_channels
    return (f"≈ approximate: Score-CAM scored only the {kept} highest-variance channels "
            f"(method_options.scorecam.max_channels) at {at}")


def method_note(plan: Plan, method: str) -> str:
    """The methods table's note on `method`: where its maps are approximate ("" when
    nowhere)."""
    layers = [layer for layer, approximate in plan.approximate if approximate == method]
    if not layers:
        return ""
    return (f"approximate at {', '.join(layers)}: only the "
            f"{plan.spec.method_options.scorecam.max_channels} highest-variance channels were "
            "scored")


def approximate_cell_reason(kept_channels: int) -> str:
    """Why `reportgen check` flags a Score-CAM cell approximate."""
    return (f"approximate: only the {kept_channels} highest-variance channels are scored "
            "(method_options.scorecam.max_channels)")
