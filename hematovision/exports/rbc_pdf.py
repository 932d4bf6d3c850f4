"""The red-cell section of the slide PDF: findings with % and 95 % CI and the ICSH grade, the size
histogram (equivalent diameter, µm) and a few example cells per finding (issue 17)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Image as RLImage
from reportlab.platypus import KeepTogether, Paragraph, Spacer, Table, TableStyle

from hematovision.exports.pdf_style import grid_style, para_text

#: Example cells per finding in the PDF.
EXAMPLES_PER_FINDING = 6


def _png(img: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return buf


def histogram_image(size: dict[str, Any], width_px: int = 720, height_px: int = 240) -> Image.Image:
    """A bar chart of the diameter histogram, with µm ticks every 2 µm and the median marked."""
    hist = size.get("histogram") or {}
    edges, counts = list(hist.get("edges_um") or []), list(hist.get("counts") or [])
    img = Image.new("RGB", (width_px, height_px), "white")
    d = ImageDraw.Draw(img)
    if not counts:
        return img
    left, right, top, bottom = 40, width_px - 10, 10, height_px - 30
    top_count = max(max(counts), 1)
    bw = (right - left) / len(counts)
    for i, c in enumerate(counts):
        h = (bottom - top) * c / top_count
        d.rectangle([left + i * bw + 1, bottom - h, left + (i + 1) * bw - 1, bottom], fill=(190, 60, 70))
    d.line([left, bottom, right, bottom], fill="black")
    d.line([left, top, left, bottom], fill="black")
    for i, e in enumerate(edges):
        if float(e) % 2 == 0:
            x = left + i * bw
            d.line([x, bottom, x, bottom + 4], fill="black")
            d.text((x - 6, bottom + 8), f"{float(e):g}", fill="black")
    d.text((right - 30, bottom + 8), "µm", fill="black")
    d.text((2, top), str(top_count), fill="black")
    med = size.get("median_diameter_um")
    if med is not None and edges:
        x = left + (float(med) - float(edges[0])) / (float(edges[-1]) - float(edges[0])) * (right - left)
        d.line([x, top, x, bottom], fill=(30, 30, 160), width=2)
    return img


def red_cell_section(
    report: dict[str, Any], st: dict[str, ParagraphStyle], examples: dict[str, list[np.ndarray]] | None = None
) -> list[Any]:
    """Flowables of the red-cell section (nothing for a report made before it existed)."""
    section = report.get("rbc_morphology")
    if not section:
        return []
    out: list[Any] = [Paragraph("Red-cell morphology", st["h2"])]
    status, reason = section.get("status"), section.get("reason")
    out.append(
        Paragraph(
            f"<b>Status: {para_text(str(status))}</b>" + (f" — {para_text(str(reason))}" if reason else ""),
            st["body"],
        )
    )
    findings = section.get("findings") or {}
    if not findings or not section.get("n_classified"):
        return out
    rows: list[list[Any]] = [["Finding", "Count", "%", "95% CI (%)", "ICSH grade"]]
    for cls, f in findings.items():
        g = f.get("grade") or ("not graded" if f.get("not_graded") else "")
        rows.append([cls, f["count"], f"{f['percent']:.1f}", f"{f['ci95'][0]:.1f} – {f['ci95'][1]:.1f}", g])
    t = Table(rows, colWidths=[34 * mm, 16 * mm, 14 * mm, 26 * mm, 22 * mm], repeatRows=1, hAlign="LEFT")
    t.setStyle(TableStyle(grid_style() + [("ALIGN", (1, 0), (-1, -1), "RIGHT")]))
    out += [
        t,
        Paragraph(
            f"Percent of {section['n_classified']} red cells the red-cell model named "
            f"({section.get('unidentified', 0)} unidentified, not in the denominator); grades: "
            f"{para_text(section.get('grading_source') or 'ICSH 2015')}.",
            st["small"],
        ),
    ]
    size = section.get("size")
    if size:
        out += [
            Spacer(1, 2 * mm),
            Paragraph(
                f"Size: median diameter {size['median_diameter_um']} µm; CV of the diameter (anisocytosis index) "
                f"{size.get('cv_diameter_pct')} %; {size['n']} cells (blue line: median).",
                st["body"],
            ),
            RLImage(_png(histogram_image(size)), width=120 * mm, height=40 * mm, hAlign="LEFT"),
        ]
    for cls, crops in (examples or {}).items():
        if not crops:
            continue
        tile = 18 * mm
        grid = Table(
            [[RLImage(_png(Image.fromarray(c)), width=tile - 1 * mm, height=tile - 1 * mm) for c in crops]],
            colWidths=[tile] * len(crops),
            hAlign="LEFT",
        )
        grid.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 1), ("RIGHTPADDING", (0, 0), (-1, -1), 1)]))
        out.append(KeepTogether([Paragraph(f"<b>{para_text(cls)}</b> — examples", st["small"]), grid]))
    return out
