"""PDF building blocks shared by the slide report and the flag report: fonts, colours, paragraph
styles, table styles, the page header and footer, the flags table, and the one-at-a-time build.

Text is set in Bitstream Vera, which reportlab ships (no font is fetched), so ``≥``, ``–`` and ``µ``
print; characters it lacks (superscript digits) are spelled out. Text that comes from people and
data (file and batch names, who verified, flag messages: everything set with :func:`para_text`
or :func:`draw_text`) may hold any script: the characters Vera lacks (Chinese, Japanese, Korean,
Cyrillic, most of Latin Extended) are set in a TrueType font that has them, the first one installed
of :data:`UNICODE_FONT_FILES` (Debian's ``fonts-wqy-microhei``, which ``.ci/run`` and the images
install). reportlab embeds only TrueType (glyf) outlines, so Noto CJK (CFF/OpenType) cannot serve.
A character no installed font has is printed as ``?`` -- only then, and the PDF then ends with a
note that says so (the names stored in the database are never changed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Table, TableStyle

log = logging.getLogger(__name__)

FONT, FONT_BOLD = "HVSans", "HVSans-Bold"
#: The font of characters Vera lacks (registered only when one of UNICODE_FONT_FILES is installed).
UNICODE_FONT = "HVUnicode"
#: TrueType fonts (glyf outlines) with Latin, Cyrillic and CJK glyphs, as Debian installs them:
#: (file, index in a collection); the first that exists is used.
UNICODE_FONT_FILES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),  # fonts-wqy-microhei (WenQuanYi Micro Hei)
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),  # fonts-wqy-zenhei
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),  # fonts-droid-fallback
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),  # fonts-arphic-uming
)
#: What the PDF says when characters had to be printed as ``?``.
MISSING_GLYPHS_NOTE = (
    "{n} character(s) of names or messages could not be printed: no font installed on this server has "
    "them, so they are shown as ?. The names stored in HematoVision are unchanged."
)
#: ... and, when no Unicode font is installed at all, what would print them.
NO_UNICODE_FONT_HINT = (
    " Installing the fonts-wqy-microhei package lets reports print Chinese, Japanese and Korean text."
)
#: Class colours (Okabe–Ito where possible: distinguishable with common colour-vision deficiencies).
CLASS_COLOURS = {
    "neutrophil": "#0072B2",
    "lymphocyte": "#009E73",
    "monocyte": "#E69F00",
    "eosinophil": "#D55E00",
    "basophil": "#CC79A7",
    "ig": "#56B4E9",
    "blast": "#E00000",
    "erythroblast": "#8B4513",
    "platelet": "#7F7F7F",
    "unidentified": "#222222",
}
_SPARE_COLOURS = ("#6A3D9A", "#B15928", "#1F78B4", "#33A02C", "#FB9A99")
SEVERITY_COLOURS = {
    "critical": "#B71C1C",
    "review": "#E65100",
    "borderline": "#F9A825",
    "warning": "#FBC02D",
    "info": "#78909C",
}
_SUPERSCRIPTS = str.maketrans({"⁰": "^0", "⁴": "^4", "⁵": "^5", "⁶": "^6", "⁷": "^7", "⁸": "^8", "⁹": "^9"})
_LABEL_TEXT = {"ig": "Immature granulocytes", "unidentified": "Unidentified"}
_BUILD_LOCK = threading.Lock()
_FONTS_LOCK = threading.Lock()


@dataclass
class _Fonts:
    """What was registered: the code points each font has (empty ``unicode``: no such font)."""

    ready: bool = False
    latin: frozenset[int] = frozenset()
    unicode: frozenset[int] = frozenset()
    unicode_file: str | None = None


_FONTS = _Fonts()
#: Characters printed as ``?`` in the document being built (reset by :func:`styles`).
_MISSING: ContextVar[list[str] | None] = ContextVar("hv_pdf_missing_glyphs", default=None)


def register_fonts() -> None:
    """Register Vera (shipped by reportlab) and the first installed Unicode font (once per process)."""
    with _FONTS_LOCK:
        if _FONTS.ready:
            return
        vera = TTFont(FONT, "Vera.ttf")
        pdfmetrics.registerFont(vera)
        pdfmetrics.registerFont(TTFont(FONT_BOLD, "VeraBd.ttf"))
        pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=FONT_BOLD, italic=FONT, boldItalic=FONT_BOLD)
        _FONTS.latin = frozenset(vera.face.charToGlyph)
        for path, index in UNICODE_FONT_FILES:
            if not Path(path).is_file():
                continue
            try:
                font = TTFont(UNICODE_FONT, path, subfontIndex=index)
            except Exception as e:  # noqa: BLE001 - a damaged or unsupported font file: try the next
                log.warning("font %s not usable (%s: %s)", path, e.__class__.__name__, e)
                continue
            pdfmetrics.registerFont(font)
            pdfmetrics.registerFontFamily(
                UNICODE_FONT, normal=UNICODE_FONT, bold=UNICODE_FONT, italic=UNICODE_FONT, boldItalic=UNICODE_FONT
            )
            _FONTS.unicode, _FONTS.unicode_file = frozenset(font.face.charToGlyph), path
            break
        else:
            log.info(
                "no Unicode TrueType font installed (%s): characters Vera lacks print as ?", UNICODE_FONT_FILES[0][0]
            )
        _FONTS.ready = True


def unicode_font_file() -> str | None:
    """The font file that sets characters Vera lacks, or None when none is installed."""
    register_fonts()
    return _FONTS.unicode_file


def text_runs(text: str) -> list[tuple[str | None, str]]:
    """``text`` cut into runs of one font: ``(None, run)`` for Vera, ``(UNICODE_FONT, run)`` for the
    characters only the Unicode font has. A character neither has becomes ``?`` (and is counted for
    the document's note)."""
    register_fonts()
    runs: list[tuple[str | None, str]] = []
    for ch in text:
        code = ord(ch)
        font: str | None = None
        if code not in _FONTS.latin and not ch.isspace():
            if code in _FONTS.unicode:
                font = UNICODE_FONT
            else:
                missing = _MISSING.get()
                if missing is not None:
                    missing.append(ch)
                ch = "?"
        if runs and runs[-1][0] == font:
            runs[-1] = (font, runs[-1][1] + ch)
        else:
            runs.append((font, ch))
    return runs


def para_text(value: Any) -> str:
    """Plain text made safe for a Paragraph: XML-escaped, glyphs Vera lacks spelled out or set in the
    Unicode font (``<font face=...>``), characters no font has as ``?``."""
    text = str("" if value is None else value).translate(_SUPERSCRIPTS)
    return "".join(
        escape(run) if font is None else f'<font face="{font}">{escape(run)}</font>' for font, run in text_runs(text)
    )


def draw_text(canvas: Canvas, x: float, y: float, text: str, font: str, size: float) -> None:
    """``canvas.drawString`` for text that may hold any script (runs in ``font`` or the Unicode font)."""
    for run_font, run in text_runs(text.translate(_SUPERSCRIPTS)):
        face = run_font or font
        canvas.setFont(face, size)
        canvas.drawString(x, y, run)
        x += pdfmetrics.stringWidth(run, face, size)
    canvas.setFont(font, size)


def missing_glyphs_note() -> list[Any]:
    """The closing note when characters of this document were printed as ``?`` (else nothing)."""
    missing = _MISSING.get() or []
    if not missing:
        return []
    style = ParagraphStyle(
        "note", fontName=FONT, fontSize=7, leading=9, spaceBefore=6, textColor=colors.HexColor("#B71C1C")
    )
    note = MISSING_GLYPHS_NOTE.format(n=len(missing)) + ("" if _FONTS.unicode else NO_UNICODE_FONT_HINT)
    return [Paragraph(escape(note), style)]


def styles() -> dict[str, ParagraphStyle]:
    """The paragraph styles. Called first by each PDF builder: it also starts the document's count of
    characters printed as ``?`` (see :func:`missing_glyphs_note`)."""
    register_fonts()
    _MISSING.set([])
    base = ParagraphStyle("body", fontName=FONT, fontSize=8.5, leading=11)
    return {
        "body": base,
        "small": ParagraphStyle("small", parent=base, fontSize=7, leading=9, textColor=colors.HexColor("#444444")),
        "cell": ParagraphStyle("cell", parent=base, fontSize=8, leading=10),
        "title": ParagraphStyle("title", parent=base, fontName=FONT_BOLD, fontSize=15, leading=19, spaceAfter=2),
        "h2": ParagraphStyle(
            "h2",
            parent=base,
            fontName=FONT_BOLD,
            fontSize=10.5,
            leading=14,
            spaceBefore=8,
            spaceAfter=3,
            textColor=colors.HexColor("#1A237E"),
        ),
        "banner": ParagraphStyle("banner", parent=base, fontName=FONT_BOLD, fontSize=9.5, leading=12),
    }


def label_text(cls: str) -> str:
    return _LABEL_TEXT.get(cls, cls.replace("_", " ").capitalize())


def class_colour(cls: str, order: list[str] | None = None) -> str:
    if cls in CLASS_COLOURS:
        return CLASS_COLOURS[cls]
    i = order.index(cls) if order and cls in order else len(cls)
    return _SPARE_COLOURS[i % len(_SPARE_COLOURS)]


def swatch(colour: str) -> str:
    """A small colour square inside a Paragraph (the font has no ■ glyph)."""
    return f'<span backColor="{colour}">&nbsp;&nbsp;&nbsp;&nbsp;</span>'


def grid_style(header_bg: str = "#E8EAF6") -> list[tuple[Any, ...]]:
    return [
        ("FONTNAME", (0, 0), (-1, -1), FONT),
        ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("FONTNAME", (0, 0), (-1, 0), FONT_BOLD),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor(header_bg)),
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#9E9E9E")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]


def page_decorator(title: str, footer: str) -> Callable[[Canvas, SimpleDocTemplate], None]:
    """A platypus ``onPage`` callback drawing the running header and footer."""

    def draw(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        w, h = doc.pagesize
        canvas.saveState()
        canvas.setFillColor(colors.HexColor("#1A237E"))
        canvas.rect(0, h - 11 * mm, w, 11 * mm, stroke=0, fill=1)
        canvas.setFillColor(colors.white)
        canvas.setFont(FONT_BOLD, 10)
        canvas.drawString(doc.leftMargin, h - 7 * mm, "HematoVision")
        canvas.setFont(FONT, 8.5)
        x = doc.leftMargin + pdfmetrics.stringWidth("HematoVision", FONT_BOLD, 10) + 4 * mm
        draw_text(canvas, x, h - 7 * mm, "·  " + title, FONT, 8.5)
        # "page N of M" is drawn by NumberedCanvas once the number of pages is known
        canvas.setFillColor(colors.HexColor("#555555"))
        draw_text(canvas, doc.leftMargin, 8 * mm, footer[:190], FONT, 6.5)
        canvas.restoreState()

    return draw


class NumberedCanvas(Canvas):
    """A canvas that holds its pages until the end so that each can say "page N of M"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # reportlab's name
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            w, h = self._pagesize
            self.saveState()
            self.setFillColor(colors.white)
            self.setFont(FONT, 8.5)
            self.drawRightString(w - 15 * mm, h - 7 * mm, f"page {self._pageNumber} of {total}")
            self.restoreState()
            super().showPage()
        super().save()


def build_pdf(out: BinaryIO | str | Path, title: str, story: list[Any], decorate: Any, **kw: Any) -> None:
    """Lay out ``story`` on A4 pages decorated by ``decorate``, one build at a time.

    reportlab keeps process-wide font state and is not documented as thread-safe; the API renders
    in server threads, so builds are serialised (a report takes a fraction of a second).
    """
    register_fonts()
    story = story + missing_glyphs_note()
    doc = SimpleDocTemplate(
        str(out) if isinstance(out, Path) else out,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=17 * mm,
        bottomMargin=14 * mm,
        title=title,
        author="HematoVision",
        creator="HematoVision",
        **kw,
    )
    with _BUILD_LOCK:
        doc.build(story, onFirstPage=decorate, onLaterPages=decorate, canvasmaker=NumberedCanvas)


def format_evidence(ev: dict[str, Any]) -> str:
    """One line of a flag's evidence: ``12/233 = 5.2 % (95% CI 2.7–8.9 %); threshold 5.0 %``."""
    parts = []
    if "percent" in ev and "count" in ev:
        text = f"{ev['count']}/{ev.get('of', '?')} = {ev['percent']} %"
        if ev.get("ci95"):
            text += f" (95% CI {ev['ci95'][0]}–{ev['ci95'][1]} %)"
        parts.append(text)
    elif "per_100_wbc" in ev:
        parts.append(f"{ev.get('count')}/{ev.get('of')} WBC = {ev['per_100_wbc']} per 100 WBC")
    elif "minimum" in ev:
        parts.append(f"{ev.get('count')} counted, minimum {ev['minimum']}")
    if "threshold_pct" in ev:
        parts.append(f"threshold {ev['threshold_pct']} %")
    if "absolute_per_l" in ev:  # reports of rules 2026.11-1
        parts.append(f"{ev['absolute_per_l'] / 1e9:.2f}×10^9/L (threshold {ev.get('threshold_per_l', 0) / 1e9:.1f})")
    if "absolute_10e9_per_l" in ev:
        lo, hi = ev.get("ci95_10e9_per_l") or [None, None]
        parts.append(
            f"{ev.get('class', '')} {ev.get('count')}/{ev.get('of')} × WBC {ev.get('wbc_10e9_per_l')} = "
            f"{ev['absolute_10e9_per_l']:.2f}×10^9/L (95% CI {lo}–{hi}); "
            f"{'lower' if ev.get('direction') == 'low' else 'upper'} limit {ev.get('threshold_10e9_per_l')} "
            f"({ev.get('age_partition', 'adult')})"
        )
    if "threshold_count" in ev:
        counted = "" if "of" in ev else f"{ev.get('count')} cell(s); "
        parts.append(f"{counted}threshold {ev['threshold_count']} cell(s)")
    if ev.get("borderline"):
        parts.append("borderline: the interval straddles the threshold")
    return "; ".join(parts) or "—"


def flags_table(
    flags: list[dict[str, Any]],
    st: dict[str, ParagraphStyle],
    *,
    evidence: bool = False,
    widths: list[float] | None = None,
) -> Table:
    """Severity (coloured), code, message (and, optionally, the evidence) of each flag."""
    head = ["Severity", "Code", "Message"] + (["Evidence"] if evidence else [])
    rows: list[list[Any]] = [head]
    style = grid_style()
    for i, f in enumerate(flags, start=1):
        sev = str(f.get("severity", ""))
        ink = "white" if sev in ("critical", "review") else "black"
        row = [
            Paragraph(f'<font color="{ink}"><b>{para_text(sev.upper())}</b></font>', st["cell"]),
            Paragraph(para_text(f.get("code")), st["cell"]),
            Paragraph(para_text(f.get("message")), st["cell"]),
        ]
        if evidence:
            row.append(Paragraph(para_text(format_evidence(f.get("evidence") or {})), st["cell"]))
        rows.append(row)
        style += [("BACKGROUND", (0, i), (0, i), colors.HexColor(SEVERITY_COLOURS.get(sev, "#E0E0E0")))]
    t = Table(rows, colWidths=widths or [22 * mm, 64 * mm, 94 * mm], repeatRows=1)
    t.setStyle(TableStyle(style))
    return t
