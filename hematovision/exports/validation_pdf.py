"""The model validation report (PDF) that a lab director signs before a model is promotable.

Built from the JSON of ``hematovision validate-model``: the two models (name, version, sha256,
parent, training data manifest hash); the verdict with the protected figures that dropped beyond the
margin, each with the test cells the candidate lost and gained and the McNemar p-value where the
figures carry their cells, and an override reason, if any; per data set the figures of both models
(accuracy, unidentified rate, blast sensitivity/specificity, per-class recall), the flag changes on the last
signed-off slides, and a signature block for the lab director. Styles and fonts:
:mod:`hematovision.exports.pdf_style`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from reportlab.lib import colors
from reportlab.lib.units import mm
from reportlab.platypus import KeepTogether, Paragraph, Spacer, Table, TableStyle

from hematovision.exports.pdf_style import FONT_BOLD, build_pdf, grid_style, page_decorator, para_text, styles

TITLE = "Model validation report"


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.1f} %"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in d.items()) or "none"


def _model_line(m: dict[str, Any]) -> str:
    parent = m.get("parent") or {}
    text = f"<b>{para_text(m.get('name'))} {para_text(m.get('version'))}</b> · sha256 {para_text(m.get('sha256'))}"
    if parent:
        text += f" · parent {para_text(parent.get('name'))} {para_text(parent.get('version'))}"
    if m.get("training_data_sha256"):
        text += f" · training data manifest sha256 {para_text(m['training_data_sha256'])}"
    return text


def _figures_table(name: str, cur: dict[str, Any], new: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    rows = [["", "Current", "Candidate", "Change"]]

    def add(label: str, a: Any, b: Any) -> None:
        change = "—" if a is None or b is None else f"{100 * (float(b) - float(a)):+.1f}"
        rows.append([label, _pct(a), _pct(b), change])

    add("Accuracy", cur["accuracy"], new["accuracy"])
    add("Unidentified rate", cur["unidentified_rate"], new["unidentified_rate"])
    if "blast_sensitivity" in cur or "blast_sensitivity" in new:
        add("Blast sensitivity", cur.get("blast_sensitivity"), new.get("blast_sensitivity"))
        add("Blast specificity", cur.get("blast_specificity"), new.get("blast_specificity"))
    for c, r in new["per_class_recall"].items():
        add(f"Recall: {c} (n={new['support'].get(c, 0)})", cur["per_class_recall"].get(c), r)
    t = Table(rows, colWidths=[62 * mm, 28 * mm, 28 * mm, 24 * mm], hAlign="LEFT")
    t.setStyle(TableStyle(grid_style()))
    return [Paragraph(f"{para_text(name)} ({cur['n']} cells)", st["h2"]), t]


def validation_report_pdf(doc: dict[str, Any], out: BinaryIO | str | Path, **doc_options: Any) -> None:
    """Render ``validate-model``'s JSON document as the signed validation report.

    Args:
        doc: the JSON of ``hematovision validate-model``.
        out: a path or binary file object.
        **doc_options: passed to reportlab's ``SimpleDocTemplate`` (e.g. ``invariant=1``).
    """
    st = styles()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = doc["verdict"]
    if not verdict["refused"]:
        text, colour = "PROMOTABLE: no protected figure dropped beyond the margin", "#2E7D32"
    elif verdict["overridden"]:
        text, colour = "PROMOTABLE BY OVERRIDE: protected figures dropped (reason below)", "#EF6C00"
    else:
        text, colour = "NOT PROMOTABLE: protected figures dropped beyond the margin", "#C62828"
    banner = Table([[text]], colWidths=[180 * mm])
    banner.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), FONT_BOLD),
                ("TEXTCOLOR", (0, 0), (-1, -1), colors.white),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(colour)),
            ]
        )
    )
    story: list[Any] = [
        Paragraph(TITLE, st["title"]),
        Paragraph(f"Generated {now}. Candidate: {_model_line(doc['candidate'])}", st["body"]),
        Paragraph(f"Current: {_model_line(doc['current'])}", st["body"]),
        Spacer(1, 3 * mm),
        banner,
        Spacer(1, 2 * mm),
        Paragraph(
            f"Protected figures: accuracy on every data set, recall of each class the current model has "
            f"(classes with at least {verdict['min_support']} cells) and blast sensitivity; margin "
            f"{100 * verdict['margin']:.1f} percentage points.",
            st["small"],
        ),
    ]
    if verdict["dropped"]:
        rows = [["Data", "Figure", "Current", "Candidate", "Drop", "Cells lost / gained", "p"]] + [
            [
                d["data"],
                d["figure"],
                _pct(d["current"]),
                _pct(d["candidate"]),
                f"{100 * d['drop']:.1f}",
                f"{d['lost']} / {d['gained']} of {d['n']}" if "lost" in d else "",
                f"{d['p_value']:.3f}" if "p_value" in d else "",
            ]
            for d in verdict["dropped"]
        ]
        t = Table(rows, colWidths=[28 * mm, 38 * mm, 20 * mm, 20 * mm, 14 * mm, 38 * mm, 16 * mm], hAlign="LEFT")
        t.setStyle(TableStyle(grid_style("#FFEBEE")))
        story += [
            Paragraph("Figures that dropped beyond the margin", st["h2"]),
            t,
            Paragraph(
                "Both models were scored on the same cells: lost = right with the current model and wrong "
                "with the candidate, gained = the reverse; p = exact one-sided McNemar test that the "
                "candidate is worse. p of 0.05 or more: a drop of this size is within what chance gives "
                "on this many cells (the margin still refuses it; an override reason may cite it).",
                st["small"],
            ),
        ]
    if verdict.get("override_reason"):
        story.append(Paragraph(f"<b>Override reason:</b> {para_text(verdict['override_reason'])}", st["body"]))
    for name, cur in doc["current_figures"].items():
        story += _figures_table(name, cur, doc["candidate_figures"][name], st)
    flags = doc.get("flag_changes")
    if flags:
        story += [
            Paragraph(f"Flags on the last {flags['slides']} signed-off slides", st["h2"]),
            Paragraph(
                f"{flags['slides_with_changed_flags']} slide(s) would get other flags with the candidate. "
                f"Added: {para_text(_counts(flags['flags_added']))}; removed: "
                f"{para_text(_counts(flags['flags_removed']))}. Slides whose flags match the signed-off "
                f"labels' flags: current {flags['slides_matching_signed_off_flags']['current']}, "
                f"candidate {flags['slides_matching_signed_off_flags']['candidate']}.",
                st["body"],
            ),
        ]
    story += [
        Spacer(1, 10 * mm),
        KeepTogether(
            [
                Paragraph("Lab director's approval", st["h2"]),
                Paragraph(
                    "I have reviewed this validation and approve / do not approve (strike one) the "
                    "candidate model for clinical decision support in this laboratory.",
                    st["body"],
                ),
                Spacer(1, 10 * mm),
                Paragraph("Name: ______________________________    Date: ______________", st["body"]),
                Spacer(1, 8 * mm),
                Paragraph("Signature: __________________________________________", st["body"]),
            ]
        ),
    ]
    deco = page_decorator(TITLE, f"generated {now} · decision support only")
    build_pdf(out, TITLE, story, deco, **doc_options)
