"""Hostile or unusual YAML in a spec: refused with file, line and field, or read as YAML
means it; never a traceback."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest

from reportgen import cli
from reportgen.spec import load_spec
from tests.helpers import write_images, write_spec

FAST = {"layers": ["encoder_last", "decoder_last"], "methods": ["gradcam"], "output": {"pdf": None}}


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    write_images(tmp_path, count=1)
    return write_spec(tmp_path / "spec.yaml", **FAST)


def run_validate(path: Path, capsys) -> tuple[int, str]:
    code = cli.main(["validate", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("nesting", [
    "report: {title: " + "[" * 600 + "]" * 600 + "}\n",
    "report:\n  title: " + "{a: " * 600 + "1" + "}" * 600 + "\n",
    "report:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 120)) + "  " * 120 + "v\n",
], ids=["flow lists", "flow mappings", "block mappings"])
def test_deep_nesting_is_refused_at_its_line_not_a_recursion_error(spec: Path, nesting: str,
                                                                   capsys):
    spec.write_text(spec.read_text() + nesting)
    code, message = run_validate(spec, capsys)
    assert code == 2 and "Traceback" not in message and "RecursionError" not in message
    assert f"{spec}:" in message and "more than 50 levels deep" in message


@pytest.mark.parametrize("written", ["2026-02-30", "2026-13-01"])
def test_an_unquoted_impossible_date_is_an_error_of_report_date(spec: Path, written: str,
                                                                capsys):
    spec.write_text(spec.read_text() + f"report:\n  date: {written}\n")
    code, message = run_validate(spec, capsys)
    assert code == 2 and "Traceback" not in message
    line = len(spec.read_text().splitlines())
    assert f"{spec}:{line}:9: report.date: {written} is not a day of the calendar" in message


def test_a_date_in_words_is_refused_with_the_form_to_write(spec: Path, capsys):
    spec.write_text(spec.read_text() + "report:\n  date: 7 December 2026\n")
    code, message = run_validate(spec, capsys)
    assert code == 2 and "report.date" in message and "YYYY-MM-DD" in message


def test_a_date_shaped_title_stays_text_as_written(spec: Path):
    spec.write_text(spec.read_text() + "report:\n  title: 2026-01-31\n  date: 2026-01-31\n")
    report = load_spec(spec).report
    assert (report.title, report.date) == ("2026-01-31", "2026-01-31")


def test_yaml_merge_keys_merge_and_a_key_beside_them_overrides(spec: Path):
    spec.write_text(spec.read_text() + (
        "metric_options:\n"
        "  faithfulness: &common {layers: [encoder_last], methods: [gradcam]}\n"
        "  sanity:\n"
        "    <<: *common\n"
        "    layers: [decoder_last]\n"))
    options = load_spec(spec).metric_options
    assert options.sanity.methods == ["gradcam"]  # merged
    assert options.sanity.layers == ["decoder_last"]  # the key beside the merge wins
    assert options.faithfulness.layers == ["encoder_last"]


def test_a_bad_value_that_came_through_a_merge_is_located_at_the_anchor(spec: Path, capsys):
    text = spec.read_text() + ("metric_options:\n"
                               "  faithfulness: &common {layers: [encoder_last]}\n"
                               "  attention:\n"
                               "    <<: *common\n")
    spec.write_text(text)
    code, message = run_validate(spec, capsys)
    line = text.splitlines().index("  faithfulness: &common {layers: [encoder_last]}") + 1
    assert code == 2 and f"{spec}:{line}:" in message and "attention.layers" in message


def test_a_key_written_twice_beside_a_merge_is_still_a_duplicate(spec: Path, capsys):
    spec.write_text(spec.read_text() + ("metric_options:\n"
                                        "  faithfulness: &common {steps: 8}\n"
                                        "  sanity:\n"
                                        "    <<: *common\n"
                                        "    layers: [encoder_last]\n"
                                        "    layers: [decoder_last]\n"))
    code, message = run_validate(spec, capsys)
    assert code == 2 and "duplicate key 'layers'" in message


@pytest.mark.parametrize(("section", "key", "limit"), [
    ("report", "author", 200), ("report", "title", 200), ("report", "id", 64),
    ("report", "description", 20_000)])
def test_text_beyond_its_documented_length_is_refused_naming_the_field(
        spec: Path, capsys, section: str, key: str, limit: int):
    spec.write_text(spec.read_text() + f"{section}:\n  {key}: {'x' * (limit + 1)}\n")
    code, message = run_validate(spec, capsys)
    assert code == 2 and f"{section}.{key}" in message and f"at most {limit}" in message


def test_a_class_name_beyond_the_label_length_is_refused(spec: Path, capsys):
    spec.write_text(spec.read_text().replace("input_size: 64", "input_size: 64\n  class_names: "
                                             f"[{'c' * 201}]"))
    code, message = run_validate(spec, capsys)
    assert code == 2 and "model" in message and "at most 200" in message


def test_long_words_in_free_text_get_a_break_opportunity_every_30_characters():
    from reportgen.report.views.common import markdown

    html = str(markdown("see `" + "p/" * 40 + "` and " + "<x>" * 3000 + " end"))
    runs = re.split(r"<wbr>|\s", re.sub(r"</?(p|code)>", " ", html))
    assert max(len(unescape(run)) for run in runs) == 30
    assert "&lt;x&gt;" in html and "<x>" not in html  # still escaped, split between entities
