"""The per-slide PDF report a technologist reviews: results first, then the slide and its cells.

Page 1 holds what is signed off: identification, review status, the flags, the white-cell
differential with exact 95 % intervals, the counts, the model and rules versions, the limits of the
method and a review line. Then the slide overview (a thumbnail with every counted white cell
outlined in its class colour, with a legend) and the cell gallery (up to ``per_class`` crops per
class, the classifier's most confident first), which is the technologist's first look at the cells.

Rendered with reportlab's platypus, entirely in memory (no network, no fonts fetched): text is set
in Bitstream Vera, which reportlab ships, so ``≥``, ``–`` and ``µ`` print; characters it lacks
(superscript digits) are spelled out, and names in other scripts (``血液.svs``) are set in the
installed Unicode font (see ``pdf_style``). Pictures are embedded as JPEG. When the slide file is gone the
report is still rendered, without pictures, and says so.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageDraw
from reportlab.lib import colors
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Image as RLImage
from reportlab.platypus import KeepTogether, PageBreak, Paragraph, Spacer, Table, TableStyle

from hematovision.core.flags import load_rules, not_evaluated_lines
from hematovision.exports.pdf_style import (
    FONT_BOLD,
    build_pdf,
    class_colour,
    flags_table,
    grid_style,
    label_text,
    page_decorator,
    para_text,
    styles,
    swatch,
)
from hematovision.exports.rbc_pdf import EXAMPLES_PER_FINDING, red_cell_section
from hematovision.exports.sampling_pdf import estimates_flowables, map_flowables, rare_event_flowables

log = logging.getLogger(__name__)


def _jpeg(img: Image.Image | np.ndarray, quality: int = 88) -> io.BytesIO:
    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    pil.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return buf


# --------------------------------------------------------------------------------------------------
# pictures from the slide file


@dataclass
class SlidePictures:
    """What the report shows of the slide itself; ``note`` says why something is missing."""

    thumbnail: np.ndarray | None = None
    thumb_downsample: float = 1.0
    gallery: dict[str, list[np.ndarray]] = field(default_factory=dict)
    gallery_probabilities: dict[str, list[float | None]] = field(default_factory=dict)
    #: A few red cells per red-cell finding (the model's most confident first).
    rbc_examples: dict[str, list[np.ndarray]] = field(default_factory=dict)
    note: str | None = None


def slide_pictures(
    path: str | Path,
    mpp: float | None,
    cells: list[dict[str, Any]],
    *,
    thumb_px: int = 1024,
    crop_um: float = 24.0,
    per_class: int = 12,
    crop_px: int = 128,
) -> SlidePictures:
    """Thumbnail and gallery crops of one slide, read with ``hematovision.core.slides``.

    Args:
        path: the slide file (server-side; never taken from a request).
        mpp: µm per level-0 pixel as stored for the slide (the file's own scale when ``None``).
        cells: stored cells: ``bbox`` (level-0 px), ``kind``, ``label``, ``probability``.
        thumb_px: longer side of the thumbnail.
        crop_um: side of a gallery crop in µm (enlarged for cells larger than it).
        per_class: crops per class, highest classifier probability first.
        crop_px: side of a crop in the PDF, in pixels.

    Returns:
        The pictures; on any problem with the file an empty ``SlidePictures`` whose ``note`` says so
        for the reader (the slide's path is not disclosed).
    """
    from hematovision.core.slides import open_slide

    try:
        with open_slide(path, mpp=mpp) as slide:
            thumb = slide.thumbnail(thumb_px)
            pics = SlidePictures(thumbnail=thumb, thumb_downsample=slide.dimensions[0] / thumb.shape[1])
            for label, group in _gallery_cells(cells, per_class).items():
                for c in group:
                    x0, y0, x1, y1 = c["bbox"]
                    side = min(max(round(crop_um / slide.mpp), int(1.15 * max(x1 - x0, y1 - y0)), 8), 2048)
                    region = slide.read_region(((x0 + x1 - side) // 2, (y0 + y1 - side) // 2), 0, (side, side))
                    crop = Image.fromarray(region).resize((crop_px, crop_px), Image.Resampling.LANCZOS)
                    pics.gallery.setdefault(label, []).append(np.asarray(crop))
                    pics.gallery_probabilities.setdefault(label, []).append(c.get("probability"))
            for label, group in _gallery_cells(cells, EXAMPLES_PER_FINDING, kind="rbc").items():
                for c in group:
                    x0, y0, x1, y1 = c["bbox"]
                    side = min(max(round(12.0 / slide.mpp), 8), 512)
                    region = slide.read_region(((x0 + x1 - side) // 2, (y0 + y1 - side) // 2), 0, (side, side))
                    crop = Image.fromarray(region).resize((64, 64), Image.Resampling.LANCZOS)
                    pics.rbc_examples.setdefault(label, []).append(np.asarray(crop))
            return pics
    except Exception as e:  # noqa: BLE001 - a missing or damaged slide file must not stop the report (it says so)
        log.warning("slide pictures unavailable (%s: %s)", e.__class__.__name__, e)
        return SlidePictures(
            note="The slide file could not be read (no longer on the server, or damaged): the "
            "overview and the cell gallery are omitted. The results above come from the "
            "stored analysis."
        )


def _gallery_cells(cells: list[dict[str, Any]], per_class: int, kind: str = "wbc") -> dict[str, list[dict[str, Any]]]:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        if c.get("kind") == kind and (kind == "wbc" or c.get("label") not in (None, "unidentified")):
            by_label.setdefault(c.get("label") or "unidentified", []).append(c)
    return {k: sorted(v, key=lambda c: -(c.get("probability") or 0.0))[:per_class] for k, v in by_label.items()}


def marked_thumbnail(
    thumbnail: np.ndarray, downsample: float, cells: list[dict[str, Any]], order: list[str]
) -> Image.Image:
    """The thumbnail with every white cell outlined (at least a 5-px ring, so small ones stay visible)."""
    img = Image.fromarray(thumbnail).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 500))
    for c in cells:
        if c.get("kind") != "wbc":
            continue
        x0, y0, x1, y1 = (v / downsample for v in c["bbox"])
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        r = max(5.0, (x1 - x0) / 2 + 2, (y1 - y0) / 2 + 2)
        draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r), outline=class_colour(c.get("label") or "unidentified", order), width=width
        )
    return img


# --------------------------------------------------------------------------------------------------
# the report


def _fmt_time(value: Any) -> str:
    if not value:
        return "—"
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _status_banner(report: dict[str, Any], st: dict[str, ParagraphStyle]) -> Table:
    amendment = report.get("amendment") or {}
    if report.get("verified_by"):
        sig = report.get("signature") or {}
        ident = sig.get("username") or report.get("verified_by_id")
        who = para_text(report["verified_by"]) + (f" (ID {para_text(ident)})" if ident else "")
        meaning = f" — {para_text(sig['meaning'])}" if sig.get("meaning") else ""
        text, bg = f"VERIFIED by {who} on {_fmt_time(report.get('verified_at'))}{meaning}", "#C8E6C9"
        if report.get("result_status") == "amended":
            text = f"AMENDED (version {para_text(amendment.get('version'))}) — {text}"
    elif report.get("result_status") == "awaiting_pathologist":
        text, bg = "PRELIMINARY — reviewed, AWAITING A PATHOLOGIST'S SIGNATURE", "#FFE0B2"
    else:
        text, bg = "PRELIMINARY — not yet verified by a technologist", "#FFE0B2"
    if amendment:
        text += (
            f"<br/>Amended by {para_text(amendment.get('amended_by'))} on {_fmt_time(amendment.get('amended_at'))}: "
            f"{para_text(amendment.get('reason'))} (replaces the report verified by "
            f"{para_text(amendment.get('previous_verified_by'))} on {_fmt_time(amendment.get('previous_verified_at'))})"
        )
    t = Table([[Paragraph(text, st["banner"])]], colWidths=[180 * mm])
    t.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(bg)),
                ("BOX", (0, 0), (-1, -1), 0.6, colors.HexColor("#757575")),
            ]
        )
    )
    return t


def _identification(report: dict[str, Any], st: dict[str, ParagraphStyle]) -> Table:
    model = report.get("model") or {}
    mpp = report.get("mpp")
    order = report.get("order") or {}
    patient = order.get("patient_id")
    if patient and order.get("assigning_authority"):
        patient = f"{patient} ({order['assigning_authority']})"
    age = (report.get("patient") or {}).get("age_years")
    born = order.get("birth_date") or (f"age {age:.1f} y" if isinstance(age, int | float) else None)
    pairs = [
        ("Accession", order.get("accession")),
        ("Patient ID", patient),
        ("Born / sex", " / ".join(str(v) for v in (born, order.get("sex")) if v) or None),
        ("Collected", _fmt_time(order.get("collected_at")) if order.get("collected_at") else None),
        ("WBC (analyser)", f"{order['wbc_10e9_per_l']:g} ×10^9/L" if order.get("wbc_10e9_per_l") else None),
        ("Status", str(report.get("result_status") or ("final" if report.get("verified_by") else "preliminary"))),
        ("Slide", report.get("slide_id")),
        ("Batch", report.get("batch_id")),
        ("File", report.get("filename") or report.get("source")),
        ("Analysed", _fmt_time(report.get("analysed_at") or report.get("generated_at"))),
        ("Model", f"{model.get('name', '?')} {model.get('version', '?')}"),
        ("Flag rules", _rules_text(report)),
        ("Scale", f"{mpp:.3f} µm/px" if isinstance(mpp, int | float) else "—"),
        ("Generated", _fmt_time(report.get("generated_at"))),
        ("Verified", _fmt_time(report.get("verified_at")) if report.get("verified_at") else "not yet (preliminary)"),
    ]
    rows = []
    for i in range(0, len(pairs), 2):
        row: list[Any] = []
        for k, v in pairs[i : i + 2]:
            row += [Paragraph(f"<b>{k}</b>", st["cell"]), Paragraph(para_text(v if v is not None else "—"), st["cell"])]
        rows.append(row)
    t = Table(rows, colWidths=[20 * mm, 68 * mm, 32 * mm, 60 * mm])
    t.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
                ("LINEBELOW", (0, -1), (-1, -1), 0.4, colors.HexColor("#9E9E9E")),
            ]
        )
    )
    return t


def _workflow_story(report: dict[str, Any], st: dict[str, ParagraphStyle]) -> list[Any]:
    """Signatures (with the reason for an insufficient differential), flag acknowledgements and the
    slide's comments (cell comments are in the JSON report)."""
    out: list[Any] = []
    sigs = report.get("signatures") or []
    if sigs:
        out.append(Paragraph("Signatures", st["h2"]))
        for sig in sigs:
            line = (
                f"<b>{para_text(sig.get('name'))}</b> ({para_text(sig.get('role'))}, "
                f"ID {para_text(sig.get('username'))}) on {_fmt_time(sig.get('signed_at'))}: "
                f"{para_text(sig.get('meaning'))}"
            )
            if sig.get("reason"):
                line += f". Reason for releasing an insufficient differential: {para_text(sig['reason'])}"
            out.append(Paragraph(line, st["body"]))
    acks = [a for a in report.get("flag_acknowledgements") or [] if a.get("standing", True)]
    if acks:
        out.append(Paragraph("Flag acknowledgements", st["h2"]))
        out += [
            Paragraph(
                f"<b>{para_text(a.get('code'))}</b> — {para_text(a.get('by'))}, {_fmt_time(a.get('at'))}: "
                f"{para_text(a.get('comment'))}",
                st["body"],
            )
            for a in acks
        ]
    notes = [c for c in report.get("comments") or [] if c.get("cell_id") is None]
    if notes:
        out.append(Paragraph("Comments", st["h2"]))
        out += [
            Paragraph(f"{para_text(c.get('by'))}, {_fmt_time(c.get('at'))}: {para_text(c.get('text'))}", st["body"])
            for c in notes
        ]
    return out


def _rules_text(report: dict[str, Any]) -> str:
    digest = report.get("rules_sha256")
    return f"{report.get('rules_version')}" + (f" (SHA-256 {digest[:16]}…)" if digest else "")


def _not_evaluated(report: dict[str, Any], st: dict[str, ParagraphStyle]) -> list[Any]:
    """The rules that could not run, and why (so that no flag is never read as a negative result)."""
    lines = not_evaluated_lines(report.get("rules_not_evaluated"))
    if not lines:
        return []
    return [
        Spacer(1, 1.5 * mm),
        Paragraph("<b>Rules not evaluated</b> (no flag from them is not a negative result):", st["small"]),
        *[Paragraph("• " + para_text(line), st["small"]) for line in lines],
    ]


def _reference(report: dict[str, Any], rules: dict[str, Any], cls: str, *, absolute: bool = False) -> str:
    """The lab's interval for a class (the flag rules' limits for the age partition), as in HL7 OBX-7."""
    from hematovision.exports.hl7 import range_text, reference_interval

    partition = str(report.get("age_partition") or rules["age_partitions"]["default"])
    return range_text(reference_interval(rules, cls, partition, absolute=absolute)) or "—"


def _absolute_table(report: dict[str, Any], rules: dict[str, Any]) -> Table | None:
    absolute = report.get("absolute_10e9_per_l")
    if not absolute:
        return None
    wbc = (report.get("patient") or {}).get("wbc_10e9_per_l")
    rows: list[list[Any]] = [["Class", "×10^9/L", "95% CI", "Ref. (×10^9/L)"]]
    rows += [
        [
            label_text(c),
            f"{a['value']:.2f}",
            f"{a['ci95'][0]:.2f} – {a['ci95'][1]:.2f}",
            _reference(report, rules, c, absolute=True),
        ]
        for c, a in absolute.items()
    ]
    if wbc is not None:
        rows.append(["WBC given", f"{wbc:.2f}", ""])
    t = Table(rows, colWidths=[45 * mm, 22 * mm, 30 * mm, 30 * mm], hAlign="LEFT")
    t.setStyle(TableStyle(grid_style() + [("ALIGN", (1, 0), (-1, -1), "RIGHT")]))
    return t


def _differential_table(
    report: dict[str, Any], order: list[str], st: dict[str, ParagraphStyle], rules: dict[str, Any]
) -> Table:
    rows: list[list[Any]] = [["", "Class", "Count", "%", "95% CI (%)", "Ref. (%)"]]
    style = grid_style() + [("ALIGN", (2, 0), (-1, -1), "RIGHT")]
    for i, (cls, d) in enumerate(report.get("differential", {}).items(), start=1):
        lo, hi = d["ci95"]
        rows.append(
            [
                "",
                label_text(cls),
                d["count"],
                f"{d['percent']:.1f}",
                f"{lo:.1f} – {hi:.1f}",
                _reference(report, rules, cls),
            ]
        )
        style.append(("BACKGROUND", (0, i), (0, i), colors.HexColor(class_colour(cls, order))))
    n_wbc = report.get("counts", {}).get("wbc", 0)
    rows.append(["", "Classified white cells", n_wbc, "100.0" if n_wbc else "—", "", ""])
    style += [("FONTNAME", (0, -1), (-1, -1), FONT_BOLD), ("BACKGROUND", (0, -1), (-1, -1), colors.HexColor("#F5F5F5"))]
    if report.get("unidentified_percent") is not None:  # beside the differential, not in its denominator
        lo, hi = report.get("unidentified_ci95") or [0.0, 0.0]
        rows.append(
            [
                "",
                f"Unidentified (of {report['counts'].get('wbc_seen', '?')} seen)",
                report.get("unidentified", 0),
                f"{report['unidentified_percent']:.1f}",
                f"{lo:.1f} – {hi:.1f}",
                "",
            ]
        )
        style.append(("BACKGROUND", (0, -1), (0, -1), colors.HexColor(class_colour("unidentified", order))))
    t = Table(rows, colWidths=[5 * mm, 38 * mm, 15 * mm, 14 * mm, 24 * mm, 16 * mm], repeatRows=1)
    t.setStyle(TableStyle(style))
    return t


def _counts_table(report: dict[str, Any]) -> Table:
    c = report.get("counts", {})
    nrbc = report.get("nrbc_per_100_wbc")
    rows = [
        ["Count", "Value"],
        ["White cells (WBC)", c.get("wbc", 0)],
        ["Erythroblasts (NRBC)", c.get("erythroblasts", 0)],
        ["NRBC per 100 WBC", "—" if nrbc is None else f"{nrbc:.1f}"],
        ["Unidentified white cells", report.get("unidentified", 0)],
    ]
    if "wbc_seen" in c:
        smudge = report.get("smudge_per_100_wbc")
        rows += [
            ["White cells seen", c["wbc_seen"]],
            ["Platelet clumps (candidates)", c.get("platelet_candidates", 0)],
            ["Smudge cells per 100 WBC", "—" if smudge is None else f"{smudge:.1f}"],
        ]
    t = Table(rows, colWidths=[40 * mm, 25 * mm])
    t.setStyle(TableStyle(grid_style() + [("ALIGN", (1, 0), (1, -1), "RIGHT")]))
    return t


def _overview(thumb: Image.Image, order: list[str], present: set[str], st: dict[str, ParagraphStyle]) -> list[Any]:
    max_w, max_h = 180 * mm, 190 * mm
    scale = min(max_w / thumb.width, max_h / thumb.height)
    keys = [
        Paragraph(f"{swatch(class_colour(c, order))} {para_text(label_text(c))}", st["cell"])
        for c in order
        if c in present
    ]
    out: list[Any] = [RLImage(_jpeg(thumb), width=thumb.width * scale, height=thumb.height * scale)]
    if keys:
        rows = [keys[i : i + 4] for i in range(0, len(keys), 4)]
        rows[-1] += [""] * (4 - len(rows[-1]))
        out += [Spacer(1, 2 * mm), Table(rows, colWidths=[45 * mm] * 4, hAlign="LEFT")]
    return out


def _gallery(
    gallery: dict[str, list[np.ndarray]],
    probs: dict[str, list[float | None]],
    report: dict[str, Any],
    order: list[str],
    st: dict[str, ParagraphStyle],
    crop_um: float,
) -> list[Any]:
    out: list[Any] = [
        Paragraph("Cell gallery", st["h2"]),
        Paragraph(
            f"Per class, the cells the classifier was most confident of first; each tile is "
            f"about {crop_um:g} µm wide (larger for large cells). p = classifier probability.",
            st["small"],
        ),
    ]
    per_row, tile = 6, 28 * mm
    for cls in [c for c in order if gallery.get(c)]:
        crops = gallery[cls]
        n_cls = report.get("differential", {}).get(cls, {}).get("count", len(crops))
        cells: list[Any] = []
        for j, crop in enumerate(crops):
            p = (probs.get(cls) or [None] * len(crops))[j]
            cells.append(
                [
                    RLImage(_jpeg(crop), width=tile - 2 * mm, height=tile - 2 * mm),
                    Paragraph("" if p is None else f"p = {p:.2f}", st["small"]),
                ]
            )
        rows = [cells[i : i + per_row] for i in range(0, len(cells), per_row)]
        rows[-1] += [""] * (per_row - len(rows[-1]))
        grid = Table(rows, colWidths=[tile + 1 * mm] * per_row, hAlign="LEFT")
        grid.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LEFTPADDING", (0, 0), (-1, -1), 1),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 1),
                ]
            )
        )
        head = Paragraph(
            f"{swatch(class_colour(cls, order))} <b>{para_text(label_text(cls))}</b> — {len(crops)} of {n_cls} shown",
            st["body"],
        )
        out.append(KeepTogether([Spacer(1, 2 * mm), head, Spacer(1, 1 * mm), grid]))
    return out


def slide_report_pdf(
    report: dict[str, Any],
    out: BinaryIO | str | Path,
    *,
    thumbnail: np.ndarray | None,
    thumb_downsample: float = 1.0,
    cells: list[dict[str, Any]] | None = None,
    gallery: dict[str, list[np.ndarray]] | None = None,
    gallery_probabilities: dict[str, list[float | None]] | None = None,
    pictures_note: str | None = None,
    crop_um: float = 24.0,
    rules: dict[str, Any] | None = None,
    rbc_examples: dict[str, list[np.ndarray]] | None = None,
    **doc_options: Any,
) -> None:
    """Render one slide's report as a PDF.

    Args:
        report: the report dictionary (``hematovision.service.slide_results.build_report``), optionally with
            ``batch_id``, ``filename``, ``analysed_at``, ``verified_by`` and ``verified_at``.
        out: a binary file object (e.g. ``io.BytesIO``) or a path.
        thumbnail: the whole slide, (h, w, 3) uint8 RGB; ``None`` when the file is unavailable.
        thumb_downsample: level-0 pixels per thumbnail pixel.
        cells: stored cells (``bbox`` in level-0 px, ``kind``, ``label``, ``probability``), outlined
            on the thumbnail.
        gallery: crops per class, (h, w, 3) uint8, most confident first.
        gallery_probabilities: the classifier probability of each crop, for its caption.
        pictures_note: why pictures are missing, printed in their place.
        crop_um: the nominal crop width, for the gallery's caption.
        rules: the lab's flag rules (reference intervals for the age partition); shipped by default.
        rbc_examples: a few red-cell crops per red-cell finding, for the red-cell section.
        **doc_options: passed to reportlab's ``SimpleDocTemplate`` (e.g. ``invariant=1``).
    """
    st = styles()
    rules = rules or load_rules()
    cells, gallery = cells or [], gallery or {}
    order = list(report.get("differential", {}))
    order += sorted({c.get("label") or "unidentified" for c in cells if c.get("kind") == "wbc"} - set(order))
    lab = report.get("lab") or {}
    story: list[Any] = [
        *(
            [Paragraph(f"<b>{para_text(lab.get('name'))}</b> · {para_text(lab.get('address') or '')}", st["small"])]
            if lab.get("name")
            else []
        ),
        Paragraph("Peripheral blood smear — white-cell differential", st["title"]),
        _status_banner(report, st),
        Spacer(1, 3 * mm),
        _identification(report, st),
    ]

    story.append(Paragraph("Flags", st["h2"]))
    flags = report.get("flags") or []

    story.append(
        flags_table(flags, st)
        if flags
        else Paragraph(f"No flags raised by rules {para_text(report.get('rules_version'))}.", st["body"])
    )
    story += _not_evaluated(report, st)
    story += rare_event_flowables(report, st)  # beside the blast rules: what a count of n cells can miss
    n_wbc = report.get("counts", {}).get("wbc", 0)
    suff = (
        "<b>Differential sufficient</b>: yes"
        if report.get("differential_sufficient")
        else "<b>Differential INSUFFICIENT</b>: too few white cells for a reliable differential; "
        "no negative statement is made"
    )
    story += [Spacer(1, 2 * mm), Paragraph(f"{suff} ({n_wbc} classified white cells counted).", st["body"])]
    if report.get("differential_valid") is False:  # the domain and quality gate
        story.append(
            Paragraph(
                "<b>Differential NOT VALID for release until reviewed</b>: "
                + para_text(report.get("differential_invalid_reason") or "outside the validated domain"),
                st["body"],
            )
        )

    story.append(Paragraph("Differential and counts", st["h2"]))
    side = Table(
        [[_differential_table(report, order, st, rules), _counts_table(report)]],
        colWidths=[114 * mm, 66 * mm],
        hAlign="LEFT",
    )
    side.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    story += [
        side,
        Paragraph(
            f"Intervals: {para_text(report.get('ci_method', 'exact binomial 95%'))}. Percent of "
            "classified white cells; unidentified cells, erythroblasts and platelets are not in the denominator.",
            st["small"],
        ),
    ]
    story += estimates_flowables(report, st)
    absolute = _absolute_table(report, rules)
    if absolute is not None:
        story += [
            Paragraph("Absolute counts", st["h2"]),
            absolute,
            Paragraph(
                "WBC given × proportion of classified white cells; interval: WBC × the proportion's exact interval. "
                f"Limits of the {para_text(report.get('age_partition') or 'adult')} age partition.",
                st["small"],
            ),
        ]

    story += red_cell_section(report, st, rbc_examples)
    story += _workflow_story(report, st)

    story.append(Paragraph("Limits", st["h2"]))
    story.append(Paragraph(para_text(report.get("limits") or "Decision support only."), st["body"]))
    if not report.get("verified_by"):
        story += [
            Spacer(1, 6 * mm),
            Paragraph(
                "Reviewed by (technologist): ______________________________    "
                "Date: ______________    Signature: ______________________",
                st["body"],
            ),
        ]

    story += [PageBreak() if thumbnail is not None else Spacer(1, 4 * mm), Paragraph("Slide overview", st["h2"])]
    if thumbnail is not None:
        present = {c.get("label") or "unidentified" for c in cells if c.get("kind") == "wbc"}
        story.append(
            Paragraph(
                f"{sum(1 for c in cells if c.get('kind') == 'wbc')} counted white cells outlined "
                "in their class colour.",
                st["small"],
            )
        )
        story += _overview(marked_thumbnail(thumbnail, thumb_downsample, cells, order), order, present, st)
    else:
        story.append(Paragraph(para_text(pictures_note or "No slide picture available."), st["body"]))
    story += map_flowables(report, thumbnail, thumb_downsample, st)
    if gallery:
        story += _gallery(gallery, gallery_probabilities or {}, report, order, st, crop_um)
    elif thumbnail is not None:
        story.append(Paragraph("No white cells to show in a gallery.", st["body"]))

    title = f"Slide report {report.get('slide_id', '')}"
    footer = (
        f"Slide {report.get('slide_id')} · {report.get('filename') or ''} · decision support only: every "
        "result must be reviewed by a qualified technologist"
    )
    build_pdf(out, title, story, page_decorator("Digital morphology report", footer), **doc_options)
