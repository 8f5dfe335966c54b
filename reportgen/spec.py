"""The YAML spec: pydantic models, loading with line numbers, and path resolution.

`load_spec(path)` returns a validated `Spec` whose relative paths are resolved
against the spec file's folder, or raises `SpecError` listing every problem at
once as ``file:line:column: field.path: message (hint)``.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from reportgen.compute.discovery import IMAGE_SUFFIXES, mask_for, search_images
from reportgen.compute.verdict_bands import VerdictBands
from reportgen.errors import SpecError

# The methods a spec gets when it names none: the four of the original report.
SEED_METHODS = ("gradcam", "gradcam++", "scorecam", "layercam")
# Layers the median verdicts leave out unless the spec names them: their ratios say little
# about what the model attends to (`reportgen.report.wording` says why, for the reader).
NOT_VERDICT_LAYERS = ("encoder_early", "seg_head")
COLORMAPS = ("viridis", "cividis", "inferno", "magma", "plasma", "turbo", "jet")


def method_names() -> list[str]:
    """Every CAM method name the engine knows (the engine's registry is the source)."""
    from reportgen.compute.cam.methods import METHODS

    return list(METHODS)


def layer_aliases() -> list[str]:
    """Every layer alias (the layer resolvers' registry is the source)."""
    from reportgen.compute.models.layers import ALIASES

    return list(ALIASES)


def metric_groups() -> list[str]:
    """Every metric group a spec may name (the metric registry is the source)."""
    from reportgen.compute.metrics.registry import GROUPS

    return list(GROUPS)


def _metric_groups_described(schema: dict[str, Any]) -> None:
    """The `metrics` field's description in the generated reference: the registry's groups
    (filled in when the reference is made, so that reading a spec imports no torch)."""
    schema["description"] = ", ".join(metric_groups())


def architecture_names() -> list[str]:
    """Every smp architecture a spec may name (smp's own list is the source)."""
    from reportgen.compute.models.build import ARCHITECTURES

    return list(ARCHITECTURES)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Lengths of the spec's text fields. A label is printed whole on the cover, in page
# headers and tables; free text (Markdown) runs on over pages, and its long words get
# break opportunities (`report.views.common.breakable`) so layout time stays linear.
LABEL_CHARS = 200
ID_CHARS = 64
FREE_TEXT_CHARS = 20_000


class Reviewer(Strict):
    name: str = Field(max_length=LABEL_CHARS)
    role: str = Field("", max_length=LABEL_CHARS)


class ReportSection(Strict):
    """Who the report is for and what it claims; shown on the site's index and the PDF cover."""

    title: str = Field("Class-activation-map validation report", max_length=LABEL_CHARS,
                       description=f"Title (at most {LABEL_CHARS} characters)")
    id: str = Field("REPORT", max_length=ID_CHARS, description="Report identifier, printed in "
                    f"every page's header (at most {ID_CHARS} characters)")
    author: str = Field("", max_length=LABEL_CHARS,
                        description=f"Author, shown on the cover (at most {LABEL_CHARS} "
                        "characters)")
    date: str | None = Field(None, description="Report date, YYYY-MM-DD; default: the build "
                             "date")
    description: str = Field("", max_length=FREE_TEXT_CHARS, description="Free text "
                             "(Markdown) for the index and the PDF's summary (at most "
                             f"{FREE_TEXT_CHARS} characters)")
    intended_use: str = Field("", max_length=FREE_TEXT_CHARS,
                              description="Model-card section: what the model is for "
                              f"(Markdown, at most {FREE_TEXT_CHARS} characters)")
    limitations: str = Field("", max_length=FREE_TEXT_CHARS,
                             description="Model-card section: known limitations "
                             f"(Markdown, at most {FREE_TEXT_CHARS} characters)")
    reviewers: list[Reviewer] = Field(default_factory=list,
                                      description="[{name, role}] for the PDF's sign-off block")

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        # The PDF is dated with it and the dossier cites it: it must be a real calendar day.
        if value is None:
            return value
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(f"{value!r}: write the date as YYYY-MM-DD, e.g. 2026-01-31")
        try:
            datetime.date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value} is not a day of the calendar ({exc})") from None
        return value

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: object) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # YAML has already changed it: 00042 reads as 34 (octal), 1_000 as 1000
            raise ValueError(f"the id must be text: quote it as written (YAML read it as the "
                             f"number {value!r}), e.g. id: \"00042\"")
        return value


class Normalization(Strict):
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


IMAGENET = Normalization(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


class ModelSection(Strict):
    architecture: str = Field(description="smp architecture, e.g. UnetPlusPlus")
    encoder: str = Field(description="smp encoder name, e.g. efficientnet-b5, or tu-<timm name>")
    checkpoint: Path | None = Field(
        None,
        description="state_dict / full model / Lightning .ckpt / .safetensors / smp "
        "save_pretrained folder; omitted = random weights (reported as such)",
    )
    classes: int = Field(1, ge=1, description="output channels of the model")
    class_names: list[str] | None = Field(None, description="one name per class (at most "
                                          f"{LABEL_CHARS} characters each)")
    activation: Literal["sigmoid", "softmax"] | None = Field(
        None, description="default: sigmoid for 1 class, softmax otherwise"
    )
    input_size: int | tuple[int, int] = Field(640, description="int or [H, W]; multiples of 32")
    in_channels: int = Field(3, ge=1, description="input channels; grayscale is replicated")
    normalize: Literal["imagenet", "none"] | Normalization = Field(
        "imagenet", description="imagenet, none, or {mean: [...], std: [...]}")
    trust_pickle: bool = Field(
        False, description="allow loading a pickled whole model (can run code: trusted files only)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for the smp constructor"
    )

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        return _choice(value, architecture_names(), "architecture")

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        from reportgen.compute.models.build import check_encoder_name

        problem = check_encoder_name(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        sizes = (value, value) if isinstance(value, int) else value
        if any(s <= 0 or s % 32 for s in sizes):
            what = (f"input_size {value} must be" if isinstance(value, int) else
                    f"input_size {list(value)}: height and width must each be")
            raise ValueError(f"{what} a positive multiple of 32 (smp models downsample 5 "
                             "times), e.g. 256, 512 or 640")
        return value

    @model_validator(mode="after")
    def _class_names(self) -> ModelSection:
        long = [n for n in self.class_names or () if len(n) > LABEL_CHARS]
        if long:
            raise ValueError(f"class name {long[0][:40]!r}... has {len(long[0])} characters; "
                             f"a class name has at most {LABEL_CHARS}")
        if self.class_names is not None and len(self.class_names) != self.classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for "
                             f"{self.classes} classes")
        if self.activation == "softmax" and self.classes == 1:
            raise ValueError("activation softmax needs classes >= 2: over one output channel "
                             "it is 1 everywhere (use sigmoid for a 1-class model)")
        return self

    @property
    def size(self) -> tuple[int, int]:
        s = self.input_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])

    @property
    def output_activation(self) -> str:
        return self.activation or ("sigmoid" if self.classes == 1 else "softmax")

    @property
    def norm(self) -> Normalization | None:
        if self.normalize == "imagenet":
            return IMAGENET
        if self.normalize == "none":
            return None
        return self.normalize

    @property
    def names(self) -> list[str]:
        return self.class_names or (["foreground"] if self.classes == 1 else
                                    [f"class {i}" for i in range(self.classes)])


class DataSection(Strict):
    images: str | list[str] = Field(
        description="glob (files with an image suffix or none), folder (files with an image "
        "suffix), or list of files")
    masks: str | None = Field(None, description="ground-truth pattern with {stem}, e.g. "
                                                "masks/{stem}.png")
    limit: int | None = Field(None, description="keep the first N images in sorted order")
    intensity: Literal["dtype", "minmax"] = Field(
        "dtype", description="16-bit scaling: by the type's range (dtype) or per image (minmax)"
    )
    mask_values: Literal["binary", "labels"] | None = Field(
        None, description="how masks mark the target class: binary (non-zero is inside) or "
        "labels (each pixel holds a class index); default binary for 1 class, labels otherwise")

    @field_validator("images")
    @classmethod
    def _some_images(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("the list of images is empty")
        return value

    @field_validator("limit")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("limit must be a positive number of images (or omitted for all)")
        return value

    @field_validator("masks")
    @classmethod
    def _has_stem(cls, value: str | None) -> str | None:
        if value is not None and "{stem}" not in value:
            raise ValueError("masks must contain {stem}, e.g. masks/{stem}.png")
        return value


class TargetSection(Strict):
    class_: int | str = Field(0, alias="class", description="class index or name")
    region: Literal["prediction", "ground_truth", "image"] = Field(
        "prediction", description="pixels whose logits are summed: the model's prediction, the "
        "ground-truth mask, or the whole image")
    threshold: float = Field(0.5, gt=0, lt=1, description="sigmoid threshold of the prediction")


class AttentionOptions(Strict):
    bands: VerdictBands = Field(default_factory=VerdictBands)
    verdict_layers: list[str] | None = Field(
        None, min_length=1, description="layers whose verdicts make each image's and the "
        "report's median verdict (default: every layer but encoder_early, where low ratios "
        "are expected, and seg_head, whose maps restate the prediction; all layers when no "
        "other is given)")


class FaithfulnessOptions(Strict):
    steps: int = Field(20, ge=2, le=1000, description="pixels are removed/revealed in this many "
                       "equal parts")
    baseline: Literal["blur", "zero"] = Field("blur", description="what removed pixels become")
    layers: list[str] | None = Field(None, description="subset of layers (default: all)")
    methods: list[str] | None = Field(None, description="subset of methods (default: all)")


class SanityOptions(Strict):
    threshold: float = Field(0.5, gt=0, le=1, description="pass when mean |Spearman| at full "
                             "randomisation is below")
    images: int = Field(4, ge=1, description="images used (the first N)")
    levels: int = Field(4, ge=1, description="randomisation levels compared (the last is the "
                        "fully randomised model)")
    layers: list[str] | None = Field(None, description="subset of layers (default: all)")
    methods: list[str] | None = Field(None, description="subset of methods (default: the "
                                      "gradient family)")


class MetricOptions(Strict):
    attention: AttentionOptions = Field(default_factory=AttentionOptions)
    faithfulness: FaithfulnessOptions = Field(default_factory=FaithfulnessOptions)
    sanity: SanityOptions = Field(default_factory=SanityOptions)


class ScoreCamOptions(Strict):
    max_channels: int | None = Field(
        None, ge=1, description="keep the N highest-variance channels (approximate)"
    )
    chunk_size: int | None = Field(None, ge=1, description="masked inputs per forward")
    layers: list[str] | None = Field(None, description="subset of layers (default: all)")


class MethodOptions(Strict):
    scorecam: ScoreCamOptions = Field(default_factory=ScoreCamOptions)


class RenderSection(Strict):
    colormap: str = Field("viridis", description="matplotlib colormap; " + ", ".join(COLORMAPS))
    alpha: float = Field(0.5, ge=0, le=1, description="heatmap opacity in overlays")

    @field_validator("colormap")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in COLORMAPS:
            raise ValueError(f"unknown colormap {value!r}; valid: {', '.join(COLORMAPS)}")
        return value


class OutputSection(Strict):
    site: Path = Field(Path("site"), description="output folder (replaced atomically)")
    pdf: Path | None = Field(Path("site/report.pdf"), description="the PDF, inside the site "
                             "folder; default: report.pdf in output.site; null for none")
    single_file: bool = Field(False, description="also write one self-contained HTML file")
    compress_maps: bool = Field(True, description="deflate the exported maps (data/maps/*.npz, "
                                "zlib level 1): about 20 % smaller, but 25x the CPU time of "
                                "storing them (at 640 px, 0.5 s instead of 0.02 s per image "
                                "of 20 maps)")

    @model_validator(mode="after")
    def _pdf_follows_site(self) -> OutputSection:
        # `site: out/b5` alone means out/b5/report.pdf, not a PDF in another folder
        if "pdf" not in self.model_fields_set:
            self.pdf = self.site / "report.pdf"
        return self


class RuntimeSection(Strict):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (--device overrides)")
    batch_size: int = Field(8, ge=1, description="images per engine call (halved on CUDA "
                            "out-of-memory)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="CAM arithmetic on CUDA: bf16/fp16 = Score-CAM under autocast; "
        "fp32 = float32 throughout, TF32 off; auto = bf16 Score-CAM and PyTorch's default "
        "TF32 convolutions. Float32 on the CPU")
    seed: int = Field(0, description="seed of every random generator")
    compile: Literal["auto", "always", "never"] = Field(
        "auto", description="torch.compile the model for Score-CAM (auto: on CUDA when the "
        "work repays the compilation)")
    cache: Path | None = Field(
        Path(".reportgen-cache"), description="folder of cached per-image maps and metrics, "
        "so rebuilds and interrupted builds recompute nothing unchanged; null: no cache "
        "(--no-cache for one build, `reportgen cache clear` empties it)")
    cache_max_gb: float | None = Field(
        20.0, gt=0, description="largest size of the cache in GB (10^9 bytes): after a build "
        "the least recently used entries are removed until it fits (a 640 px image of 5 "
        "layers x 4 methods takes about 0.05 GB); null: no limit")
    executor: Literal["local", "ray"] = Field(
        "local", description="local: this process (rendering overlaps the computation); ray: "
        "shard the images over Ray workers, each loading the model once (extra "
        "`reportgen[ray]`); the report is identical on the same hardware with the same "
        "runtime.threads")
    ray_address: str | None = Field(
        None, description="Ray cluster to join (e.g. ray://head:10001 or auto); default: start "
        "a local Ray instance on this machine")
    workers: int | None = Field(
        None, ge=1, description="Ray workers; default: one per GPU of the cluster, else 2 "
        "(each gets one GPU when the device is CUDA)")
    threads: int | None = Field(
        None, ge=1, description="CPU threads of each computing process (this one, or each Ray "
        "worker). CPU arithmetic depends on it, so two builds agree to the byte only with the "
        "same count; default: torch's (the cores) locally, the cluster's CPUs over the "
        "workers on Ray")
    render_workers: int | None = Field(
        None, ge=1, le=64, description="threads drawing the figures and pages and writing the maps "
        "while the next images are computed; default: half the CPU cores, 2 to 8")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            return value
        raise ValueError(f"device {value!r} must be auto, cpu, cuda or cuda:N")


def _spelling_key(name: str) -> str:
    """Case and separators do not distinguish names (Grad-CAM, grad_cam, gradcam)."""
    return re.sub(r"[\s_.-]", "", name.lower())


def _spellings(name: str) -> set[str]:
    """Ways people type `name` without its '+': gradcam++ as gradcampp or gradcam_plus_plus."""
    return {_spelling_key(s) for s in (name, name.replace("+", "p"), name.replace("+", "plus"))}


def _choice(value: str, valid: Sequence[str], what: str, extra: str = "") -> str:
    if value in valid:
        return value
    # Compare normalised spellings, or difflib finds 'gradcam' (a prefix) closer to
    # 'gradcampp' than the 'gradcam++' the user meant.
    by_spelling = {s: name for name in valid for s in _spellings(name)}
    key = _spelling_key(value)
    close = [by_spelling[key]] if key in by_spelling else [
        by_spelling[s] for s in difflib.get_close_matches(key, list(by_spelling), n=1)]
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown {what} {value!r}: {hint}valid: {', '.join(valid)}{extra}")


def _layer_name(value: str) -> str:
    if "." in value or "[" in value or "@" in value:
        return value  # a module path (or list element), checked when the model is built
    return _choice(value, layer_aliases(), "layer alias",
                   " (or a dotted module path such as encoder._blocks.15)")


LayerName = Annotated[str, AfterValidator(_layer_name)]
def _method_name(value: str) -> str:
    return _choice(value, method_names(), "method")


def _metric_name(value: str) -> str:
    return _choice(value, metric_groups(), "metric")


MethodName = Annotated[str, AfterValidator(_method_name)]
MetricName = Annotated[str, AfterValidator(_metric_name)]


class Spec(Strict):
    """A reportgen build: what model, which images, which layers and methods, what output."""

    report: ReportSection = Field(default_factory=ReportSection)
    model: ModelSection
    data: DataSection
    target: TargetSection = Field(default_factory=TargetSection)
    layers: list[LayerName] = Field(default_factory=layer_aliases, min_length=1,
                                    description="layer aliases or dotted module paths")
    methods: list[MethodName] = Field(default_factory=lambda: list(SEED_METHODS), min_length=1,
                                      description="see `reportgen methods`")
    method_options: MethodOptions = Field(default_factory=MethodOptions)
    metrics: list[MetricName] = Field(default_factory=metric_groups,
                                      json_schema_extra=_metric_groups_described)
    metric_options: MetricOptions = Field(default_factory=MetricOptions)
    render: RenderSection = Field(default_factory=RenderSection)
    output: OutputSection = Field(default_factory=OutputSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)

    @field_validator("layers", "methods")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        twice = sorted({x for x in value if value.count(x) > 1})
        if twice:
            raise ValueError(f"listed twice: {', '.join(twice)}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        target = self.target.class_
        names = self.model.names
        if isinstance(target, str) and target not in names:
            raise ValueError(f"target.class {target!r} is not a class name; valid: "
                             f"{', '.join(names)}")
        if isinstance(target, int) and not 0 <= target < self.model.classes:
            raise ValueError(f"target.class {target} is out of range for "
                             f"{self.model.classes} classes (0..{self.model.classes - 1})")
        if self.data.mask_values == "labels" and self.model.classes == 1:
            raise ValueError("data.mask_values labels needs a model of 2 or more classes (a "
                             "1-class model's masks are binary)")
        if self.target.region == "ground_truth" and not self.data.masks:
            raise ValueError("target.region is ground_truth but data.masks is not given")
        for option, subset, full in (
            ("method_options.scorecam.layers", self.method_options.scorecam.layers, self.layers),
            ("metric_options.faithfulness.layers", self.metric_options.faithfulness.layers,
             self.layers),
            ("metric_options.faithfulness.methods", self.metric_options.faithfulness.methods,
             self.methods),
            ("metric_options.sanity.layers", self.metric_options.sanity.layers, self.layers),
            ("metric_options.sanity.methods", self.metric_options.sanity.methods, self.methods),
            ("metric_options.attention.verdict_layers",
             self.metric_options.attention.verdict_layers, self.layers),
        ):
            extra = [x for x in subset or [] if x not in full]
            if extra:
                raise ValueError(f"{option}: {', '.join(extra)} not among the spec's "
                                 f"{option.rsplit('.', 1)[1]} ({', '.join(full)})")
        return self

    @property
    def verdict_layers(self) -> list[str]:
        """The layers whose verdicts make the median verdicts, in spec order."""
        chosen = self.metric_options.attention.verdict_layers
        if chosen is None:
            chosen = [la for la in self.layers if la not in NOT_VERDICT_LAYERS] or self.layers
        return [la for la in self.layers if la in chosen]

    @property
    def target_index(self) -> int:
        c = self.target.class_
        return self.model.names.index(c) if isinstance(c, str) else c

    @property
    def mask_label(self) -> int | None:
        """The pixel value of the target class in label-map masks; None for binary masks."""
        values = self.data.mask_values or ("binary" if self.model.classes == 1 else "labels")
        return self.target_index if values == "labels" else None

    @property
    def mask_reading(self) -> dict[str, int | None]:
        """How the masks are read: `reportgen.compute.data.read_mask`'s keyword arguments."""
        label = self.mask_label
        return {"mask_label": label, "mask_classes": None if label is None else self.model.classes}


# ---------------------------------------------------------------- loading


MERGE_TAG = "tag:yaml.org,2002:merge"


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where a spec's meaning is at stake.

    A duplicated key is an error (PyYAML keeps the last one silently: a second `model:`
    would drop the first one's checkpoint); a key given beside a merge (`<<: *base`)
    overrides the merged one, as YAML says. Anchors and aliases are read, but `_Located`
    refuses a document that expands to more than `MAX_NODES` values: ten lines of nested
    aliases expand to billions. Dates stay text as written (`report.date` checks its own):
    PyYAML would turn `2026-01-31` into a date object and fail on `2026-02-30`.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}); a key may "
                    "appear once per mapping", key_node.start_mark)
            if isinstance(key, str):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> str:
        return self.construct_scalar(node)


SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", SpecLoader.construct_yaml_timestamp)


def _check_depth(text: str, path: Path) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` before PyYAML composes the document: its
    composer recurses once per level, so 500 nested `[` end in a RecursionError."""
    depth = 0
    for event in yaml.parse(text, Loader=SpecLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise SpecError([f"{path}:{mark.line + 1}:{mark.column + 1}: the spec nests "
                                 f"lists or mappings more than {MAX_DEPTH} levels deep; a "
                                 "spec needs a few"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


MAX_NODES = 10_000  # values a spec may expand to (a large spec has a few hundred)
MAX_DEPTH = 50


class _Located:
    """Line/column of every node of a YAML document, keyed by its path of keys/indices."""

    def __init__(self, path: Path, text: str):
        self.file = path
        self.marks: dict[tuple, tuple[int, int]] = {}
        self.key_marks: dict[tuple, tuple[int, int]] = {}
        node = yaml.compose(text, Loader=SpecLoader)
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, loc: tuple) -> None:
        if len(self.marks) >= MAX_NODES or len(loc) > MAX_DEPTH:
            line = node.start_mark.line + 1
            raise SpecError([f"{self.file}:{line}:{node.start_mark.column + 1}: the spec expands "
                             f"to more than {MAX_NODES} values or {MAX_DEPTH} levels (through "
                             "YAML aliases such as *name); write the values out"])
        self.marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            merged = [v for k, v in node.value if k.tag == MERGE_TAG]
            for key, value in node.value:
                if key.tag != MERGE_TAG:
                    child = loc + (key.value,)
                    self.key_marks[child] = (key.start_mark.line + 1,
                                             key.start_mark.column + 1)
                    self._walk(value, child)
            for value in merged:  # `<<: *base` or `<<: [*a, *b]`: keys given here win
                for source in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                    self._walk_merged(source, loc)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                self._walk(value, loc + (i,))

    def _walk_merged(self, node: yaml.Node, loc: tuple) -> None:
        """A merged mapping's keys, located where the anchor wrote them unless the merging
        mapping gives the key itself."""
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            child = loc + (key.value,)
            if key.tag != MERGE_TAG and child not in self.key_marks:
                self.key_marks[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
                self._walk(value, child)

    def where(self, loc: tuple, key: bool = False) -> str:
        probe = tuple(loc)
        while probe:
            table = self.key_marks if key else self.marks
            if probe in table:
                line, col = table[probe]
                return f"{self.file}:{line}:{col}"
            if probe in self.marks:
                line, col = self.marks[probe]
                return f"{self.file}:{line}:{col}"
            probe = probe[:-1]
        return f"{self.file}:1:1"


def _model_fields(loc: tuple) -> list[str]:
    """The valid keys at `loc` (for "did you mean")."""
    model: type[BaseModel] | None = Spec
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        annotation = field.annotation
        model = inner_model(annotation)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The spec section (a pydantic model) a field's annotation holds, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = inner_model(arg)
        if found is not None:
            return found
    return None


def _format_errors(exc: ValidationError, located: _Located) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        # pydantic reports union branches as extra path parts; keep the user's keys only
        loc = tuple(p for p in loc if isinstance(p, int) or not p.startswith(("int", "tuple",
                                                                                "list", "str",
                                                                                "literal")))
        field = ".".join(str(p) for p in loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            key = loc[-1]
            valid = _model_fields(loc[:-1])
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            problems.append(f"{located.where(loc, key=True)}: {field}: unknown key ({hint})")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{located.where(loc)}: {field}: {message}")
    return list(dict.fromkeys(problems))


# PyYAML's parser states, in words a spec author can act on (matched on its problem text).
YAML_HINTS = (
    ("expected <block end>", "check the indentation of this line and the one above: YAML nests "
     "by indentation, so keys of one section must start in the same column"),
    ("mapping values are not allowed", "a 'key:' where YAML expected a value: check this line's "
     "indentation against the key above it, or quote a value that contains ': '"),
    ("'\\t'", "YAML does not allow tabs for indentation: indent with spaces"),
    ("expected ',' or ']', but got '['", "a '[' inside a [...] list starts another list: "
     "quote a layer path with [index]: \"encoder._blocks[15]\""),
)


def _yaml_hint(problem: str) -> str:
    return next((f" ({hint})" for text, hint in YAML_HINTS if text in problem), "")


def parse_spec(path: Path, check_files: bool = True) -> tuple[Spec, str]:
    """Read and validate the YAML, reporting every problem at once.

    Schema problems and file problems (missing checkpoint, images, masks) are
    collected together. Relative paths are resolved against the spec's folder.
    Returns the resolved spec and the spec's text.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError([f"{path}: spec file not found"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read the spec ({exc})"]) from exc
    try:
        _check_depth(text, path)
        data = yaml.load(text, Loader=SpecLoader)  # a SafeLoader: no Python objects
        located = _Located(path, text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        hint = _yaml_hint(exc.problem or "")
        kind = "syntax error" if isinstance(exc, yaml.scanner.ScannerError
                                            | yaml.parser.ParserError) else "error"
        raise SpecError([f"{where}: YAML {kind}: {exc.problem}{hint}"]) from exc
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: YAML error: {exc}"]) from exc
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1:1: the spec must be a mapping with keys such as model, data"])
    base = path.resolve().parent
    problems = _check_files(data, base, located) if check_files else []
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_in_line_order(_format_errors(exc, located) + problems, path)) from exc
    if problems:
        raise SpecError(_in_line_order(problems, path))
    return _resolve_paths(spec, base), text


def _in_line_order(problems: list[str], path: Path) -> list[str]:
    """Problems sorted by the line and column they start with, as the author reads the file;
    those without a position keep their order, after the others."""
    position = re.compile(re.escape(str(path)) + r":(\d+):(\d+): ")

    def key(problem: str) -> tuple[int, int]:
        found = position.match(problem)
        return (int(found[1]), int(found[2])) if found else (1 << 62, 0)

    return sorted(problems, key=key)


def load_spec(path: str | Path, check_files: bool = True) -> Spec:
    """Load, validate and resolve a spec; every problem is reported at once."""
    return parse_spec(Path(path), check_files)[0]


def _absolute(p: str | Path, base: Path) -> Path:
    p = Path(p).expanduser()  # ~/data means the home folder, as in a shell
    return p if p.is_absolute() else base / p


def _resolve_paths(spec: Spec, base: Path) -> Spec:
    data = spec.data.model_copy(update={
        "images": [str(_absolute(p, base)) for p in spec.data.images]
        if isinstance(spec.data.images, list) else str(_absolute(spec.data.images, base)),
        "masks": str(_absolute(spec.data.masks, base)) if spec.data.masks else None,
    })
    ckpt = spec.model.checkpoint
    model = spec.model.model_copy(
        update={"checkpoint": None if ckpt is None else _absolute(ckpt, base)})
    pdf = spec.output.pdf
    output = spec.output.model_copy(update={
        "site": _absolute(spec.output.site, base),
        "pdf": None if pdf is None else _absolute(pdf, base)})
    cache = spec.runtime.cache
    runtime = spec.runtime.model_copy(
        update={"cache": None if cache is None else _absolute(cache, base)})
    return spec.model_copy(update={"data": data, "model": model, "output": output,
                                   "runtime": runtime})


def _check_files(raw: dict, base: Path, located: _Located) -> list[str]:
    """File problems, from the raw YAML so they are found even when the schema fails."""
    problems: list[str] = []
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    ckpt = model.get("checkpoint")
    if isinstance(ckpt, str) and not _absolute(ckpt, base).exists():
        problems.append(f"{located.where(('model', 'checkpoint'))}: model.checkpoint: not "
                        f"found: {_absolute(ckpt, base)}")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    images = data.get("images")
    limit = data.get("limit") if isinstance(data.get("limit"), int) else None
    masks = data.get("masks") if isinstance(data.get("masks"), str) else None
    if isinstance(images, list):
        for i, p in enumerate(images):
            if not isinstance(p, str) or not _absolute(p, base).is_file():
                problems.append(f"{located.where(('data', 'images', i))}: data.images.{i}: "
                                f"file not found: {p}")
        images = [str(_absolute(p, base)) for p in images if isinstance(p, str)]
    elif isinstance(images, str):
        images = str(_absolute(images, base))
    else:
        return problems
    section = DataSection.model_construct(
        images=images, limit=limit if limit and limit > 0 else None,
        masks=str(_absolute(masks, base)) if masks and "{stem}" in masks else None)
    outputs = _raw_outputs(raw, base)
    site = outputs[0]
    if site is not None:
        from reportgen.output import holds_the_spec

        problem = holds_the_spec(site, base)
        if problem:  # said once, at output.site; its inputs are not "the build's own output"
            problems.append(f"{located.where(('output', 'site'))}: {problem}")
            outputs[0] = None
    # logged once, when a build reads them
    searched, notes = search_images(section.images, section.limit, outputs)
    found = [p for p in searched if p.is_file()]
    where_images = located.where(("data", "images"))
    if not found and isinstance(images, str):
        said = "".join(f"; {note.removeprefix('data.images: ')}" for note in notes)
        problems.append(f"{where_images}: data.images: no image matches {images} "
                        f"(suffixes {', '.join(IMAGE_SUFFIXES)}){said}"
                        f"{_bracket_hint(section, outputs)}")
    stems: dict[str, Path] = {}
    for image in found:
        if image.stem in stems:
            problems.append(f"{where_images}: data.images: two images share the name "
                            f"{image.stem!r} ({stems[image.stem]} and {image}); pages and masks "
                            "are keyed by file name, so rename one")
        stems[image.stem] = image
    if section.masks and found:
        missing = [m for m in (mask_for(section, i) for i in found) if m and not m.is_file()]
        if missing:
            problems.append(f"{located.where(('data', 'masks'))}: data.masks: no mask for "
                            f"{len(missing)} of {len(found)} images (first missing: "
                            f"{missing[0]})")
    return problems


def _raw_outputs(raw: dict, base: Path) -> list[Path | None]:
    """output.site and runtime.cache of the raw YAML, as a build resolves them (their
    defaults when unset; None for a cache set to null or a value of the wrong type)."""
    folders: list[Path | None] = []
    for section, key, model in (("output", "site", OutputSection),
                                ("runtime", "cache", RuntimeSection)):
        values = raw.get(section) if isinstance(raw.get(section), dict) else {}
        value = values.get(key, model.model_fields[key].default)
        folders.append(_absolute(value, base) if isinstance(value, str | Path) else None)
    return folders


def _bracket_hint(section: DataSection, outputs: Sequence[Path | None]) -> str:
    """For a pattern holding `[` that matched nothing: that brackets are glob syntax, how to
    escape them, and what the pattern matches with them escaped (a folder `study [2024]`)."""
    pattern = str(section.images)
    if "[" not in pattern:
        return ""
    escaped = pattern.replace("[", "[[]")
    literal, _ = search_images(escaped, section.limit, outputs)
    hint = ("; [ ] * ? are glob syntax ([abc] matches one character: a, b or c); write [[] "
            "for a literal [")
    if literal:
        hint += (f": with its brackets taken literally, as {escaped}, the pattern matches "
                 f"{len(literal)} image(s), e.g. {literal[0]}")
    return hint
