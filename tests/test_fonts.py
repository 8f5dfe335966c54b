"""Which characters of a report the installed fonts can print (fontconfig's coverage)."""

from __future__ import annotations

from dataclasses import dataclass

from reportgen.render.fonts import FontCoverage, installed_fonts, unprintable_text


def test_fontconfig_charsets_parse_into_one_coverage_of_every_font():
    coverage = FontCoverage.from_fc_list("20-7e a0-17f 3b1\n4e00-4e0f\n\n41-5a 3a3\n")
    assert all(coverage.has(c) for c in "Az~\u00a0ſαΣ一\u4e0f")
    assert not any(coverage.has(c) for c in "\u1f00\u0180\u4e10\u03b2\U0010fffd\x1f")


def test_the_installed_fonts_print_latin_greek_and_the_reports_symbols():
    coverage = installed_fonts()
    assert coverage is not None, "fontconfig's fc-list is missing"
    assert all(coverage.has(c) for c in "Aé ρ ≥ – × ±")
    assert not coverage.has("\U0010fffd")


@dataclass
class Card:
    title: str
    classes: list[str]


def test_unprintable_characters_are_listed_once_with_the_fields_they_are_in():
    coverage = FontCoverage([(0x20, 0x7E)])
    shown = {"model": Card("Lésion", ["fond", "lésion"]), "spec": "title: Lésion\n\tx: ∅",
             "image names": ["a.png"]}
    [warning] = unprintable_text(shown, coverage)
    assert ("2 character(s) of the report (é (U+00E9) ∅ (U+2205); in model.title, "
            "model.classes, spec)") in warning
    assert unprintable_text({"spec": "plain\n\ttext\u200b"}, coverage) == []  # no glyph needed
    assert unprintable_text(shown, None) == []  # coverage unknown: nothing claimed


def test_a_long_list_of_unprintable_characters_is_cut_short():
    [warning] = unprintable_text({"title": "".join(map(chr, range(0x4E00, 0x4E14)))},
                                 FontCoverage([]))
    assert "20 character(s)" in warning and "and 8 more" in warning


def test_without_fc_list_the_build_says_it_could_not_check(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "/nonexistent")
    with caplog.at_level("WARNING", logger="reportgen.render.fonts"):
        assert installed_fonts() is None
    assert "not checked against the installed fonts" in caplog.text
