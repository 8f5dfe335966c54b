"""The spec: good specs load with resolved paths; bad ones name file:line, field and a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reportgen.compute.discovery import find_images
from reportgen.errors import SpecError
from reportgen.report.wording import verdict_note
from reportgen.spec import load_spec
from reportgen.spec_reference import json_schema, reference_markdown
from tests.helpers import write_images, write_spec


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write_images(tmp_path, count=4)
    return tmp_path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.problems


def test_good_spec_resolves_paths_against_its_folder(project: Path, monkeypatch):
    monkeypatch.chdir("/")
    spec = load_spec(write_spec(project / "spec.yaml"))
    assert spec.output.site == project / "site"
    assert [p.name for p in find_images(spec.data)] == [f"img0{i}.png" for i in range(4)]
    assert spec.model.size == (64, 64)
    assert spec.model.output_activation == "sigmoid"
    assert spec.target_index == 0


def test_verdicts_leave_out_encoder_early_and_seg_head_unless_told_and_say_why(project: Path):
    layers = ["encoder_early", "encoder_last", "decoder_last", "seg_head"]
    spec = load_spec(write_spec(project / "a.yaml", layers=layers))
    assert spec.verdict_layers == ["encoder_last", "decoder_last"]
    assert verdict_note(spec).startswith("Not counted: encoder_early (its maps follow edges")
    assert ", seg_head (its maps restate the predicted logits" in verdict_note(spec)
    spec = load_spec(write_spec(project / "b.yaml", layers=["encoder_early", "seg_head"]))
    assert spec.verdict_layers == ["encoder_early", "seg_head"]  # no other to count
    assert verdict_note(spec).startswith("Counted only layers usually left out: encoder_early")
    chosen = {"attention": {"verdict_layers": ["seg_head", "encoder_early"]}}
    spec = load_spec(write_spec(project / "c.yaml", layers=layers, metric_options=chosen))
    assert spec.verdict_layers == ["encoder_early", "seg_head"]  # in the spec's order
    assert verdict_note(spec) == ("Not counted: encoder_last, decoder_last (left out by "
                                 "metric_options.attention.verdict_layers).")
    spec = load_spec(write_spec(project / "d.yaml", layers=["encoder_last"]))
    assert verdict_note(spec) == ""


def test_images_as_folder_list_and_limit_keep_sorted_order(project: Path):
    spec = load_spec(write_spec(project / "a.yaml", data={"images": "images", "limit": 2}))
    assert [p.name for p in find_images(spec.data)] == ["img00.png", "img01.png"]
    listed = ["images/img03.png", "images/img01.png"]
    spec = load_spec(write_spec(project / "b.yaml", data={"images": listed}))
    assert [p.name for p in find_images(spec.data)] == ["img01.png", "img03.png"]


BAD_SPECS = [
    # (what, sections, expected fragments of one problem)
    ("unknown key", {"report": {"titel": "x"}}, ["report.titel", "did you mean 'title'"]),
    ("wrong type", {"runtime": {"batch_size": "eight"}}, ["runtime.batch_size", "integer"]),
    ("missing checkpoint", {"model": {"checkpoint": "nope.pth"}},
     ["model.checkpoint", "not found", "nope.pth"]),
    ("glob matching nothing", {"data": {"images": "none/*.png", "masks": None}},
     ["data.images", "no image matches"]),
    ("unknown layer alias", {"layers": ["encoder_lst"]},
     ["layers.0", "did you mean 'encoder_last'", "decoder_last"]),
    ("unknown method", {"methods": ["gradcam", "gradcamm"]},
     ["methods.1", "did you mean 'gradcam'", "layercam"]),
    ("method spelt without its plus signs", {"methods": ["gradcam", "gradcampp"]},
     ["methods.1", "did you mean 'gradcam++'"]),
    ("masks unmatched", {"data": {"masks": "other/{stem}.png"}},
     ["data.masks", "no mask for 4 of 4"]),
    ("limit zero", {"data": {"limit": 0}}, ["data.limit", "positive"]),
    ("no render worker", {"runtime": {"render_workers": 0}}, ["runtime.render_workers"]),
    ("unknown class name", {"target": {"class": "tumour"}, "model": {"class_names": ["lesion"]}},
     ["target.class", "'tumour'", "lesion"]),
    ("input size", {"model": {"input_size": 100}},
     ["model.input_size", "input_size 100 must be a positive multiple of 32"]),
    ("input size as [H, W]", {"model": {"input_size": [96, 100]}},
     ["model.input_size", "height and width must each be a positive multiple of 32"]),
    ("architecture written in another case", {"model": {"architecture": "UNetPlusPlus"}},
     ["model.architecture", "did you mean 'UnetPlusPlus'?", "DeepLabV3Plus"]),
    ("unknown encoder", {"model": {"encoder": "efficientnet-b9"}},
     ["model.encoder", "did you mean efficientnet-b7", "tu-<name>"]),
    ("softmax over one class", {"model": {"activation": "softmax"}},
     ["model", "softmax needs classes >= 2"]),
    ("missing model", {"model": None}, ["model", "required"]),
    ("unknown metric", {"metrics": ["dice", "attnetion"]}, ["metrics.1", "'attention'"]),
    ("bad device", {"runtime": {"device": "gpu"}}, ["runtime.device", "cuda:N"]),
    ("ground truth target without masks", {"target": {"region": "ground_truth"},
                                            "data": {"masks": None}}, ["data.masks"]),
    ("subset outside the spec's layers", {"method_options": {"scorecam": {"layers": ["seg_head"]}}},
     ["method_options.scorecam.layers", "seg_head"]),
    ("no verdict layer", {"metric_options": {"attention": {"verdict_layers": []}}},
     ["metric_options.attention.verdict_layers", "at least 1"]),
    ("verdict layers outside the spec's layers",
     {"metric_options": {"attention": {"verdict_layers": ["seg_head"]}}},
     ["metric_options.attention.verdict_layers", "seg_head"]),
    ("empty image list", {"data": {"images": [], "masks": None}}, ["data.images", "empty"]),
    ("label masks for one class", {"data": {"mask_values": "labels"}},
     ["mask_values labels needs a model of 2 or more classes"]),
]


@pytest.mark.parametrize("what,sections,fragments", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_names_line_field_and_fix(project: Path, what, sections, fragments):
    path = write_spec(project / "spec.yaml", **sections)
    problems = problems_of(path)
    matching = [p for p in problems if all(f in p for f in fragments)]
    assert matching, f"{what}: no problem mentions {fragments}: {problems}"
    assert matching[0].startswith(f"{path}:"), matching[0]
    line = int(matching[0].split(":")[1])
    assert 1 <= line <= len(path.read_text().splitlines())


def test_unknown_key_points_at_its_line(project: Path):
    path = project / "spec.yaml"
    write_spec(path, runtime={"batchsize": 2})
    lines = path.read_text().splitlines()
    (problem,) = problems_of(path)
    line = int(problem.split(":")[1])
    assert "batchsize" in lines[line - 1]
    assert "did you mean 'batch_size'" in problem


def test_every_problem_is_reported_at_once(project: Path):
    path = write_spec(project / "spec.yaml", report={"titel": "x"}, layers=["nope"],
                      model={"checkpoint": "missing.pth"}, data={"limit": -1})
    assert len(problems_of(path)) == 4


def test_problems_are_listed_in_the_order_of_their_lines(project: Path):
    path = write_spec(project / "spec.yaml", model={"checkpoint": "missing.pth"},
                      layers=["encoder_lst"], report={"titel": "x"})
    problems = problems_of(path)
    positions = [tuple(int(n) for n in p.split(":")[1:3]) for p in problems]
    assert positions == sorted(positions) and len(problems) == 3
    # the schema orders report before model, and file problems came last
    assert [p.split(": ")[1] for p in problems] == ["model.checkpoint", "layers.0",
                                                      "report.titel"]


def test_every_smp_architecture_is_accepted_and_a_timm_encoder_is_taken_on_trust(
        project: Path):
    # the names the docs and users write, as smp spells its classes
    for architecture in ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
                         "Linknet", "MAnet", "PAN", "UPerNet", "Segformer", "DPT"):
        spec = load_spec(write_spec(project / "spec.yaml",
                                    model={"architecture": architecture}))
        assert spec.model.architecture == architecture
    # timm's names are too many to list cheaply: the build tells a wrong one
    spec = load_spec(write_spec(project / "spec.yaml", model={"encoder": "tu-convnext_atto"}))
    assert spec.model.encoder == "tu-convnext_atto"


def test_the_pdf_follows_a_site_given_without_a_pdf(project: Path):
    spec = load_spec(write_spec(project / "a.yaml", output={"site": "out/site_b5"}))
    assert spec.output.site == project / "out" / "site_b5"
    assert spec.output.pdf == project / "out" / "site_b5" / "report.pdf"
    path = write_spec(project / "b.yaml", output={"site": "out/b5", "pdf": None})
    assert "pdf: null" in path.read_text()
    assert load_spec(path).output.pdf is None  # null still means no PDF
    spec = load_spec(write_spec(project / "c.yaml",
                                output={"site": "out/b5", "pdf": "out/b5/dossier/b5.pdf"}))
    assert spec.output.pdf == project / "out" / "b5" / "dossier" / "b5.pdf"
    assert load_spec(write_spec(project / "d.yaml")).output.pdf == project / "site" / "report.pdf"


def test_yaml_syntax_error_has_position(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text("model:\n  architecture: [Unet\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "YAML syntax error" in problem


def spec_plus(project: Path, yaml_text: str, **sections: object) -> tuple[Path, str]:
    """A spec with `yaml_text` written after its sections, as a user would type it; (its
    path, the text before the addition)."""
    path = write_spec(project / "spec.yaml", **sections)
    text = path.read_text()
    path.write_text(text + yaml_text)
    return path, text


def test_a_duplicated_key_is_an_error_not_a_silent_override(project: Path):
    path, text = spec_plus(project, "model: {architecture: Unet, encoder: resnet18}\n")
    (problem,) = problems_of(path)
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("model"))
    assert problem.startswith(f"{path}:{len(text.splitlines()) + 1}:1: YAML error: duplicate "
                              f"key 'model' (first at line {first})")


def test_yaml_aliases_work_but_cannot_expand_without_bound(project: Path, tmp_path: Path):
    path, _ = spec_plus(project, "layers: &chosen [encoder_last, decoder_last]\n"
                        "metric_options:\n  sanity:\n    layers: *chosen\n", layers=None)
    spec = load_spec(path)
    assert spec.metric_options.sanity.layers == spec.layers == ["encoder_last", "decoder_last"]
    bomb = tmp_path / "bomb.yaml"
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]'] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb.write_text("\n".join(levels) + "\n")  # 9**10 values once expanded
    (problem,) = problems_of(bomb)
    assert problem.startswith(f"{bomb}:") and "expands to more than 10000 values" in problem


def test_an_unquoted_date_is_taken_as_written_and_a_numeric_id_must_be_quoted(project: Path):
    path, text = spec_plus(project, "report:\n  date: 2026-01-31\n  id: \"00042\"\n")
    spec = load_spec(path)
    assert (spec.report.date, spec.report.id) == ("2026-01-31", "00042")
    path.write_text(text + "report:\n  id: 00042\n")  # YAML 1.1 reads an octal 34
    (problem,) = problems_of(path)
    assert "report.id" in problem and "quote it as written" in problem and "34" in problem


def test_a_pattern_takes_image_files_and_suffixless_dicoms_but_not_notes_or_folders(
        project: Path):
    images = project / "images"
    (images / "notes.txt").write_text("acquisition notes")
    (images / "sub.png").mkdir()
    (images / "IM0001").write_bytes((images / "img00.png").read_bytes())
    by_folder = load_spec(write_spec(project / "a.yaml", data={"images": "images", "masks": None}))
    assert [p.name for p in find_images(by_folder.data)] == [f"img0{i}.png" for i in range(4)]
    by_glob = load_spec(write_spec(project / "b.yaml", data={"images": "images/*", "masks": None}))
    assert [p.name for p in find_images(by_glob.data)] == ["IM0001"] + [
        f"img0{i}.png" for i in range(4)]


def test_a_home_relative_path_means_the_home_folder(project: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(project))
    spec = load_spec(write_spec(project / "spec.yaml", output={"site": "~/out"}))
    assert spec.output.site == project / "out"


def test_method_typed_the_way_people_say_it_suggests_the_registered_name(project: Path):
    typed = ["gradcampp", "GradCAM++", "grad_cam_plus_plus", "Grad-CAM", "scorcam", "layer-cam"]
    path = write_spec(project / "spec.yaml", methods=typed)
    suggested = [p.split("did you mean ")[1].split("?")[0] for p in problems_of(path)]
    assert suggested == ["'gradcam++'", "'gradcam++'", "'gradcam++'", "'gradcam'", "'scorecam'",
                         "'layercam'"]


def test_misindented_key_names_its_line_and_explains_the_indentation(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text("model:\n  architecture: UnetPlusPlus\n encoder: efficientnet-b0\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3:2: YAML syntax error: expected <block end>")
    assert "check the indentation of this line and the one above" in problem
    assert "YAML nests by indentation" in problem


def test_an_unquoted_index_path_in_a_bracket_list_says_to_quote_it(project: Path):
    path, text = spec_plus(project, "layers: [encoder_early, encoder._blocks[15]]\n",
                           layers=None)
    (problem,) = problems_of(path)
    line = len(text.splitlines()) + 1
    assert problem.startswith(f"{path}:{line}:40: YAML syntax error: expected ',' or ']'")
    assert problem.endswith('quote a layer path with [index]: "encoder._blocks[15]")')
    path.write_text(text + 'layers: [encoder_early, "encoder._blocks[15]"]\n')
    assert load_spec(path).layers == ["encoder_early", "encoder._blocks[15]"]


def test_tab_indentation_is_explained(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text("model:\n\tarchitecture: UnetPlusPlus\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2:1:") and "indent with spaces" in problem


def test_duplicate_image_names_are_refused(project: Path):
    (project / "more").mkdir()
    (project / "more" / "img00.png").write_bytes((project / "images" / "img00.png").read_bytes())
    path = write_spec(project / "spec.yaml", data={"images": "**/img00.png", "masks": None})
    assert any("share the name 'img00'" in p for p in problems_of(path))


def test_json_schema_describes_every_section():
    schema = json.loads(json_schema())
    assert {"model", "data", "layers", "methods", "metrics", "output", "runtime"} <= set(
        schema["properties"])
    assert "model" in schema["required"] and "data" in schema["required"]
    assert "class" in schema["$defs"]["TargetSection"]["properties"]


def test_spec_files_shipped_with_the_project_validate():
    shipped = sorted(Path(__file__).parents[1].joinpath("specs").glob("*.yaml"))
    assert len(shipped) >= 2
    for path in shipped:
        load_spec(path, check_files=False)  # the seed's data is the user's own


def test_guide_embeds_the_generated_spec_reference():
    guide = (Path(__file__).parents[1] / "docs" / "guide.md").read_text()
    start, end = "<!-- spec-reference:start -->\n", "<!-- spec-reference:end -->"
    embedded = guide[guide.index(start) + len(start):guide.index(end)]
    assert embedded == reference_markdown(), (
        "docs/guide.md is out of date: paste the output of `reportgen schema --markdown` "
        "between the spec-reference markers")
