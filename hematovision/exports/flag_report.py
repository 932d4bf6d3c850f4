"""The overnight leukemia-flag report as CSV and PDF: flagged slides, most severe first.

The document is the triaged flag list (critical, then review, then the rest; slides with only
``info`` notes counted in ``info_only``, not listed; ``status`` pending/verified/all; ``since``, by
default the last sign-off session); the PDF states the criteria and the info-only count, the CSV
adds each slide's ``status`` and ``verified_at``.

Both render the document the API serves as JSON at ``GET /api/v1/flags``: ``{"batch", "since",
"count", "slides": [{"slide_id", "batch_id", "filename", "max_severity", "analysed_at", "counts",
"flags": [{"code", "severity", "message", "evidence"}], "rules_not_evaluated": [{"rule", "reason"}]}]}``.
Slides are re-sorted here by severity (stable, so the API's most-recent-first order within a severity
is kept), so a document assembled elsewhere prints in the same order. The PDF lists each slide's
rules not evaluated under its flags.

The CSV has one row per flag, with its evidence in columns (count, of, percent, exact 95 % interval,
threshold), for a spreadsheet or the LIS. Text cells that a spreadsheet would run as a formula
(starting with ``= + - @``, tab or carriage return; a filename is user-controlled) are prefixed with
``'`` (OWASP's CSV-injection advice).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from reportlab.lib.units import mm
from reportlab.platypus import KeepTogether, Paragraph, Spacer, Table, TableStyle

from hematovision.core.flags import SEVERITY_RANK, not_evaluated_lines
from hematovision.exports.pdf_style import (
    FONT_BOLD,
    build_pdf,
    flags_table,
    grid_style,
    page_decorator,
    para_text,
    styles,
)

CSV_COLUMNS = [
    "rank",
    "slide_max_severity",
    "slide_id",
    "batch_id",
    "filename",
    "analysed_at",
    "wbc_counted",
    "severity",
    "code",
    "message",
    "count",
    "of",
    "percent",
    "ci95_low",
    "ci95_high",
    "threshold_pct",
    "borderline",
    "status",
    "verified_at",
]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def ordered_slides(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's slides, most severe first, each with its flags most severe first."""
    slides = sorted(doc.get("slides", []), key=lambda s: -SEVERITY_RANK.get(s.get("max_severity") or "", -1))
    return [
        {**s, "flags": sorted(s.get("flags", []), key=lambda f: -SEVERITY_RANK.get(f.get("severity", ""), -1))}
        for s in slides
    ]


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def flag_report_csv(doc: dict[str, Any]) -> str:
    """The flag report as CSV: a header row, then one row per flag (a flagged slide with none: one row)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for rank, s in enumerate(ordered_slides(doc), start=1):
        head = [
            rank,
            s.get("max_severity"),
            s.get("slide_id"),
            s.get("batch_id"),
            s.get("filename"),
            s.get("analysed_at"),
            (s.get("counts") or {}).get("wbc"),
        ]
        for f in s["flags"] or [{}]:
            ev = f.get("evidence") or {}
            ci = ev.get("ci95") or [None, None]
            row = head + [
                f.get("severity"),
                f.get("code"),
                f.get("message"),
                ev.get("count"),
                ev.get("of"),
                ev.get("percent"),
                ci[0],
                ci[1],
                ev.get("threshold_pct"),
                bool(ev.get("borderline")) if f else None,
                s.get("status"),
                s.get("verified_at"),
            ]
            w.writerow([_cell(v) for v in row])
    return buf.getvalue()


def _criteria(doc: dict[str, Any]) -> str:
    parts = [f"batch {doc['batch']}" if doc.get("batch") else "all batches"]
    status = doc.get("status")
    if status in ("pending", "verified"):
        parts.append("not yet signed off" if status == "pending" else "signed off")
    if doc.get("since") and doc.get("since") != "all":
        since = f"analysed since {doc['since']}"
        parts.append(since + (" (the last sign-off session)" if doc.get("since_default") else ""))
    if doc.get("search"):
        parts.append(f"matching {doc['search']!r}")
    return ", ".join(parts)


def flag_report_pdf(doc: dict[str, Any], out: BinaryIO | str | Path, **doc_options: Any) -> None:
    """Render the flag report as a PDF: a summary, then one block per flagged slide, most severe first.

    Args:
        doc: the flag-report document (as served by ``GET /api/v1/flags``).
        out: a binary file object (e.g. ``io.BytesIO``) or a path.
        **doc_options: passed to reportlab's ``SimpleDocTemplate`` (e.g. ``invariant=1``).
    """
    st = styles()
    slides = ordered_slides(doc)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    story: list[Any] = [
        Paragraph("Leukemia-flag report", st["title"]),
        Paragraph(f"Flagged slides, most severe first — {para_text(_criteria(doc))}. Generated {now}.", st["body"]),
    ]
    by_sev = Counter(s.get("max_severity") or "none" for s in slides)
    summary = [["Most severe flag", "Slides"]] + [
        [sev.upper(), str(by_sev[sev])] for sev in sorted(by_sev, key=lambda k: -SEVERITY_RANK.get(k, -1))
    ]
    summary.append(["Total", str(len(slides))])
    if doc.get("info_only") is not None:
        summary.append(["Information notes only (not listed)", str(doc["info_only"])])
    total_row = summary.index(["Total", str(len(slides))])
    t = Table(summary, colWidths=[60 * mm, 20 * mm], hAlign="LEFT")
    t.setStyle(TableStyle(grid_style() + [("FONTNAME", (0, total_row), (-1, total_row), FONT_BOLD)]))
    story += [
        Spacer(1, 3 * mm),
        t,
        Spacer(1, 2 * mm),
        Paragraph(
            "Decision support only: each flagged slide must be reviewed by a qualified technologist. "
            "A slide absent from this list is not thereby normal (see each slide report's limits).",
            st["small"],
        ),
    ]
    if not slides:
        story.append(Paragraph("No flagged slides.", st["h2"]))
    for rank, s in enumerate(slides, start=1):
        wbc = (s.get("counts") or {}).get("wbc")
        head = Paragraph(
            f"{rank}. <b>{para_text((s.get('max_severity') or '').upper())}</b> — {para_text(s.get('filename'))}",
            st["h2"],
        )
        meta = Paragraph(
            f"slide {para_text(s.get('slide_id'))} · batch {para_text(s.get('batch_id'))} · analysed "
            f"{para_text(s.get('analysed_at'))} · {para_text(wbc)} white cells counted",
            st["small"],
        )
        table = flags_table(s["flags"], st, evidence=True, widths=[20 * mm, 62 * mm, 54 * mm, 44 * mm])
        block = [head, meta, Spacer(1, 1.5 * mm), table]
        block += [
            Paragraph("Not evaluated: " + para_text(line), st["small"])
            for line in not_evaluated_lines(s.get("rules_not_evaluated"))
        ]
        story.append(KeepTogether(block))
    deco = page_decorator("Leukemia-flag report", f"{_criteria(doc)} · generated {now} · decision support only")
    build_pdf(out, "Leukemia-flag report", story, deco, **doc_options)
