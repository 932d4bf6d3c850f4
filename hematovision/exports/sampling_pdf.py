"""The slide report's spread-sampling parts: the map of the fields read, the smear estimates (WBC and
platelets, with unit, method and interval) and the rare-event statement, for the PDF
(:mod:`hematovision.exports.slide_pdf`) and the review UI's map (``sampling_map_png``)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Image as RLImage
from reportlab.platypus import Paragraph, Table, TableStyle

from hematovision.exports.pdf_style import grid_style, para_text

FIELD_COLOUR = (0, 90, 200)
MAP_MAX_PX = 512


def sampling_map(thumbnail: np.ndarray, downsample: float, fields: list[list[int]]) -> Image.Image:
    """The thumbnail (at most ``MAP_MAX_PX`` a side) with every field read outlined, the first one
    filled, so a reader sees where the differential's cells came from."""
    img = Image.fromarray(thumbnail).convert("RGB")
    shrink = max(1.0, max(img.size) / MAP_MAX_PX)
    if shrink > 1.0:
        img = img.resize((max(1, round(img.width / shrink)), max(1, round(img.height / shrink))))
    scale = downsample * shrink  # level-0 px per map px
    draw = ImageDraw.Draw(img)
    for x, y, w, h in fields:
        box = (x / scale, y / scale, max(x / scale + 1, (x + w) / scale - 1), max(y / scale + 1, (y + h) / scale - 1))
        draw.rectangle(box, outline=FIELD_COLOUR, width=1)
    return img


def sampling_map_png(thumbnail: np.ndarray, downsample: float, fields: list[list[int]]) -> bytes:
    buf = io.BytesIO()
    sampling_map(thumbnail, downsample, fields).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def sampling_text(report: dict[str, Any]) -> str | None:
    """One sentence on what was read: method, fields, area read and monolayer area."""
    s = report.get("sampling") or {}
    if not s:
        return None
    mono = s.get("monolayer_area_mm2")
    return (
        f"Sampling: {s.get('method')}; {s.get('fields_read')} fields, {s.get('area_read_mm2')} mm² read"
        + (f" of {mono} mm² of evaluable monolayer" if mono is not None else "")
        + "."
    )


def _ci(e: dict[str, Any], key: str = "ci95") -> str:
    ci = e.get(key)
    return "—" if not ci else f"{ci[0]} – {ci[1]}"


def estimates_rows(report: dict[str, Any]) -> list[list[str]]:
    """Rows ``[what, value, 95 % CI, unit, method]`` of the smear estimates (none when not made)."""
    est = report.get("estimates") or {}
    rows: list[list[str]] = []
    w = est.get("wbc")
    if w and w.get("value") is not None:
        rows.append(
            [
                "WBC estimate",
                str(w["value"]),
                _ci(w),
                "×10^9/L",
                f"{w['cells']} white cells in {w['area_mm2']} mm² of monolayer ({w['per_mm2']}/mm²) "
                f"× {w['factor_10e9_per_l_per_cell_mm2']}",
            ]
        )
    p = est.get("platelets")
    if p and p.get("per_100_rbc") is not None:
        if p.get("unit") == "10^9/L":
            rows.append(["Platelet estimate", str(p["value"]), _ci(p), "×10^9/L", para_text(p["method"])])
        rows.append(
            [
                "Platelets per 100 RBC",
                str(p["per_100_rbc"]),
                _ci(p, "per_100_rbc_ci95"),
                "/100 RBC",
                f"{p['platelets']} platelets, {p['rbc']} red cells in {p['fields']} fields "
                f"({p['per_field']} per field)",
            ]
        )
    return rows


def estimates_flowables(report: dict[str, Any], st: dict[str, ParagraphStyle]) -> list[Any]:
    rows = estimates_rows(report)
    if not rows:
        return []
    cell = st["cell"]
    table = Table(
        [["Estimate", "Value", "95 % CI", "Unit", "From"]] + [[Paragraph(para_text(c), cell) for c in r] for r in rows],
        colWidths=[36 * mm, 16 * mm, 24 * mm, 16 * mm, 88 * mm],
        hAlign="LEFT",
    )
    table.setStyle(TableStyle(grid_style()))
    return [
        Paragraph("Smear estimates", st["h2"]),
        table,
        Paragraph(
            "Smear estimates check the analyser's count; they are not a count. The WBC factor assumes a "
            "monolayer about 1.8 µm of blood deep (see docs/validation.md); platelets per 100 red cells "
            "become ×10^9/L only with the CBC red-cell count.",
            st["small"],
        ),
    ]


def rare_event_flowables(report: dict[str, Any], st: dict[str, ParagraphStyle]) -> list[Any]:
    text = report.get("rare_event_statement")
    return [Paragraph(f"<b>Rare populations</b>: {para_text(text)}", st["body"])] if text else []


def map_flowables(
    report: dict[str, Any], thumbnail: np.ndarray | None, downsample: float, st: dict[str, ParagraphStyle]
) -> list[Any]:
    s = report.get("sampling") or {}
    if thumbnail is None or not s.get("fields"):
        return []
    img = sampling_map(thumbnail, downsample, s["fields"])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    buf.seek(0)
    side = 80 * mm
    scale = min(side / img.width, side / img.height)
    return [
        Paragraph("Fields read", st["h2"]),
        RLImage(buf, width=img.width * scale, height=img.height * scale),
        Paragraph(para_text(sampling_text(report) or ""), st["small"]),
    ]
