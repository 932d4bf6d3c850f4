"""The review pages' accessibility checks that need no browser: text contrast computed from the CSS
colours (WCAG 2 relative luminance), every form control labelled, and the `hidden` attribute winning
over the panels' display rules."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "api"
CSS = (API / "static" / "hv.css").read_text(encoding="utf-8")
TEMPLATES = sorted((API / "templates").glob("*.html"))


def _luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(ch * 2 for ch in h)
    chans = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in chans]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def _var(name: str) -> str:
    m = re.search(rf"--{name}:\s*(#[0-9a-fA-F]{{3,6}})", CSS)
    assert m, f"--{name} not in hv.css"
    return m.group(1)


def _rule_colour(selector: str) -> str:
    m = re.search(re.escape(selector) + r"\s*\{[^}]*?(?<![-\w])color:\s*([^;}]+)", CSS)
    assert m, f"no color for {selector!r} in hv.css"
    value = m.group(1).strip()
    v = re.fullmatch(r"var\(--([\w-]+)\)", value)
    return _var(v.group(1)) if v else value


def test_contrast_formula_matches_known_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#98a2b3", "#ffffff") == pytest.approx(2.58, abs=0.01)  # the old zero-count grey


@pytest.mark.parametrize(
    ("what", "fg", "bg"),
    [
        ("zero-count differential rows on a panel", lambda: _rule_colour(".diff tr.zero td"), lambda: "#ffffff"),
        ("muted text on a panel", lambda: _var("muted"), lambda: _var("panel")),
        ("muted text on the page background", lambda: _var("muted"), lambda: _var("bg")),
        ("table headers on their band", lambda: _rule_colour(".grid th"), lambda: "#f8fafc"),
        ("legend text on a panel", lambda: _rule_colour(".legend"), lambda: _var("panel")),
    ],
)
def test_text_contrast_is_at_least_4_5(what: str, fg, bg) -> None:  # type: ignore[no-untyped-def]
    ratio = contrast(fg(), bg())
    assert ratio >= 4.5, f"{what}: {fg()} on {bg()} is {ratio:.2f}:1"


def test_hidden_attribute_wins_over_display_rules() -> None:
    assert re.search(r"\[hidden\]\s*\{\s*display:\s*none\s*!important", CSS)
    selected = (API / "templates" / "_selected.html").read_text(encoding="utf-8")
    assert re.search(r'<section[^>]*id="selected"[^>]*\bhidden\b', selected)


class _Controls(HTMLParser):
    """Form controls (input except hidden, select, textarea) and whether each has a label: inside a
    <label>, named by a <label for>, or aria-label / aria-labelledby."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.controls: list[tuple[dict[str, str | None], bool]] = []
        self.label_for: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self.depth += 1
            if a.get("for"):
                self.label_for.add(str(a["for"]))
        elif tag in ("input", "select", "textarea") and not (tag == "input" and a.get("type") == "hidden"):
            self.controls.append((a, self.depth > 0 or bool(a.get("aria-label") or a.get("aria-labelledby"))))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.depth = max(0, self.depth - 1)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_every_input_and_select_has_a_label(template: Path) -> None:
    parser = _Controls()
    parser.feed(re.sub(r"\{#.*?#\}", "", template.read_text(encoding="utf-8"), flags=re.S))
    unlabelled = [a for a, ok in parser.controls if not ok and a.get("id") not in parser.label_for]
    assert not unlabelled, f"{template.name}: unlabelled controls {unlabelled}"


def test_the_parser_sees_controls() -> None:
    parser = _Controls()
    parser.feed('<label>A <input id="a"></label><input id="b"><select aria-label="c"></select><input type="hidden">')
    assert [(a.get("id"), ok) for a, ok in parser.controls] == [("a", True), ("b", False), (None, True)]
