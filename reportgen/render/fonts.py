"""Characters of the report that no installed font can print in the PDF.

WeasyPrint lays the PDF out with the machine's fonts (fontconfig, through Pango). A
character that no installed font has is printed as an empty box, while the PDF's text
layer still holds the right character: reading the text back cannot see the defect, so
the build looks before it renders and says so in the report's warnings.
"""

from __future__ import annotations

import bisect
import logging
import subprocess
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, is_dataclass

log = logging.getLogger(__name__)

# Debian's packages of fonts for the scripts a report is most likely to need beyond
# the Latin, Greek and Cyrillic ones that DejaVu prints
FONT_HINT = ("install a font that has them (on Debian: fonts-noto-cjk for Chinese, "
             "Japanese and Korean, fonts-noto-core for most other scripts) and build again")
SHOWN_CHARACTERS = 12


class FontCoverage:
    """The union of the character sets of the installed fonts, as fontconfig lists them."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for first, last in sorted(ranges):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self._firsts = [first for first, _ in merged]
        self._lasts = [last for _, last in merged]

    @classmethod
    def from_fc_list(cls, output: str) -> FontCoverage:
        """Parse `fc-list --format '%{charset}\\n'`: hexadecimal code points and ranges
        ("20-7e a0-17f 192 ..."), one font per line."""
        ranges = []
        for item in output.split():
            first, _, last = item.partition("-")
            ranges.append((int(first, 16), int(last or first, 16)))
        return cls(ranges)

    def has(self, character: str) -> bool:
        code = ord(character)
        index = bisect.bisect_right(self._firsts, code) - 1
        return index >= 0 and code <= self._lasts[index]


def installed_fonts() -> FontCoverage | None:
    """The machine's font coverage; None when fontconfig's `fc-list` cannot tell (it is
    in Debian's package fontconfig, which WeasyPrint's libraries do not need)."""
    try:
        listed = subprocess.run(["fc-list", "--format", "%{charset}\n"], capture_output=True,
                                text=True, timeout=60, check=True).stdout
        return FontCoverage.from_fc_list(listed)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        log.warning("the PDF's characters were not checked against the installed fonts "
                    "(fc-list: %s); install fontconfig for the check", error)
        return None


def _printed(character: str) -> bool:
    """Whether the character needs a glyph: not a space, line break or control/format
    character (which Pango lays out without one)."""
    return not character.isspace() and unicodedata.category(character) not in ("Cc", "Cf")


def _texts(value: object, where: str) -> Iterator[tuple[str, str]]:
    """(field name, text) for every string inside a dataclass, dict (its values), list or
    tuple."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():  # keys are field names, not shown text
            yield from _texts(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item, where)


def unprintable_text(shown: dict[str, object], coverage: FontCoverage | None) -> list[str]:
    """A warning (or none) naming the characters of `shown` (field name -> what the PDF
    prints of it) that no font in `coverage` has, and the fields they are in."""
    if coverage is None:
        return []
    missing: dict[str, None] = {}  # insertion-ordered set
    fields: dict[str, None] = {}
    for where, text in _texts(shown, ""):
        for character in text:
            if _printed(character) and not coverage.has(character):
                missing[character] = None
                fields[where] = None
    if not missing:
        return []
    characters = list(missing)
    # with their code points: in the PDF the characters themselves print as boxes
    listed = " ".join(f"{c} (U+{ord(c):04X})" for c in characters[:SHOWN_CHARACTERS]) + (
        f" and {len(characters) - SHOWN_CHARACTERS} more"
        if len(characters) > SHOWN_CHARACTERS else "")
    return [f"no installed font has {len(characters)} character(s) of the report "
            f"({listed}; in {', '.join(fields)}): the PDF prints them as empty boxes; "
            + FONT_HINT]
