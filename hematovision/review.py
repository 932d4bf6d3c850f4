"""Technologist review: reclassify white cells and sign a slide off.

A reclassification changes one cell's label, records who changed it, when, from what and to what
(``cell_reviews``), and recomputes the slide's differential, exact intervals and flags from the
current labels of all its white cells with the same functions the worker used
(:func:`hematovision.reports.differential`, :func:`hematovision.flags.evaluate_flags`). The report
JSON, the slide's summary columns and the ``differential`` and ``flags`` rows are replaced in the
caller's one transaction, so a reader never sees a differential that disagrees with its flags.

A sign-off (``verified_by``, ``verified_at``) makes the slide read-only; it is refused while any
white cell is still ``unidentified``. Plain functions on a SQLAlchemy session: no Flask here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hematovision.datasets import PBC_CLASSES
from hematovision.flags import NON_WBC_CLASSES, evaluate_flags, load_rules, max_severity
from hematovision.models import Cell, CellReview, DifferentialEntry, FlagRecord, Slide, utcnow
from hematovision.reports import differential
from hematovision.results import PLATELET, UNIDENTIFIED, WBC


class ReviewError(ValueError):
    """A review request that cannot be carried out; ``kind`` is ``not_found``, ``invalid`` or
    ``conflict`` (the API answers 404, 400 and 409)."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message


def slide_classes(report: dict[str, Any]) -> list[str]:
    """The classes a technologist may assign on this slide, in a stable order (keys 1-9).

    The model's classes are not stored with the report; they are the differential's classes (the
    white-cell classes, ``unidentified`` excepted) plus the non-white-cell classes the model may
    emit (erythroblast, platelet), ordered as the PBC data set orders them.
    """
    names = {k for k in report.get("differential", {}) if k != UNIDENTIFIED} | set(NON_WBC_CLASSES)
    order = {c: i for i, c in enumerate(PBC_CLASSES)}
    return sorted(names, key=lambda c: (order.get(c, len(order)), c))


def _locked_slide(session: Session, slide_id: str) -> Slide:
    slide = session.execute(select(Slide).where(Slide.id == slide_id).with_for_update()).scalar_one_or_none()
    if slide is None:
        raise ReviewError("not_found", "not_found", f"no slide {slide_id}")
    return slide


def _check_editable(slide: Slide) -> dict[str, Any]:
    if slide.report is None:
        raise ReviewError("conflict", "not_ready", f"slide {slide.id} has no results yet; nothing to review")
    if slide.verified_at is not None:
        raise ReviewError("conflict", "signed_off",
                          f"slide {slide.id} was signed off by {slide.verified_by} at "
                          f"{slide.verified_at.isoformat(timespec='seconds')}Z and is read-only")
    return slide.report


def recompute(session: Session, slide: Slide, rules: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the slide's differential, counts and flags from its cells' current labels.

    Updates ``slide.report`` (a new dictionary: JSON columns track assignment, not mutation), the
    summary columns and the ``differential``/``flags`` rows. Returns the new report.
    """
    report = dict(slide.report or {})
    classes = slide_classes(report)
    rows = session.execute(select(Cell.kind, Cell.label).where(Cell.slide_id == slide.id)).all()
    labels = [r.label or UNIDENTIFIED for r in rows if r.kind == WBC]
    diff, n_wbc, erythroblasts = differential(labels, classes)
    flags = evaluate_flags({k: v["count"] for k, v in diff.items()}, n_wbc, erythroblasts=erythroblasts,
                           wbc_per_l=slide.wbc_per_l, rules=rules)
    platelets = sum(1 for r in rows if r.kind == PLATELET) + labels.count("platelet")
    counts = dict(report.get("counts", {}))
    counts.update({"wbc": n_wbc, "platelets": platelets, "erythroblasts": erythroblasts})
    flag_dicts = [f.to_dict() for f in flags]
    n_reviews = session.execute(select(func.count()).select_from(CellReview)
                                .where(CellReview.slide_id == slide.id)).scalar_one()
    report.update({
        "counts": counts,
        "differential": diff,
        "differential_sufficient": n_wbc >= int(rules["insufficient"]["min_wbc"]),
        "nrbc_per_100_wbc": round(100.0 * erythroblasts / n_wbc, 1) if n_wbc else None,
        "unidentified": diff.get(UNIDENTIFIED, {}).get("count", 0),
        "flags": flag_dicts,
        "max_severity": max_severity(flags),
        "rules_version": rules.get("version"),
        "reviewed_cells": n_reviews,
    })
    # A flag that stands after the change keeps the time it was first raised (the overnight flag list
    # selects by it); only flags the change raises are new.
    first_raised = dict(session.execute(select(FlagRecord.code, FlagRecord.created_at)
                                        .where(FlagRecord.slide_id == slide.id)).all())
    session.execute(delete(DifferentialEntry).where(DifferentialEntry.slide_id == slide.id))
    session.execute(delete(FlagRecord).where(FlagRecord.slide_id == slide.id))
    for cls, d in diff.items():
        session.add(DifferentialEntry(slide_id=slide.id, class_name=cls, count=d["count"], percent=d["percent"],
                                      ci_low=d["ci95"][0], ci_high=d["ci95"][1]))
    now = utcnow()
    for f in flag_dicts:
        session.add(FlagRecord(slide_id=slide.id, code=f["code"], severity=f["severity"], message=f["message"],
                               evidence=f["evidence"], rules_version=str(rules.get("version")),
                               created_at=first_raised.get(f["code"], now)))
    slide.n_wbc = n_wbc
    slide.n_platelets = platelets
    slide.max_severity = report["max_severity"]
    slide.report = report
    return report


def reclassify(
    session: Session,
    cell_id: int,
    label: str,
    actor: str,
    *,
    rules: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> tuple[Cell, dict[str, Any]]:
    """Give a white cell a new label, record it, and recompute the slide. Returns (cell, report).

    ``label`` is one of :func:`slide_classes` or ``unidentified``. Setting the label a cell
    already has changes nothing and records nothing. Call inside a transaction.
    """
    cell = session.get(Cell, cell_id)
    if cell is None:
        raise ReviewError("not_found", "not_found", f"no cell {cell_id}")
    if cell.kind != WBC:
        raise ReviewError("invalid", "not_a_white_cell",
                          f"cell {cell_id} is a {cell.kind} detection; only white cells are classified")
    slide = _locked_slide(session, cell.slide_id)
    report = _check_editable(slide)
    allowed = [*slide_classes(report), UNIDENTIFIED]
    if label not in allowed:
        raise ReviewError("invalid", "invalid_label", f"label must be one of {', '.join(allowed)}; got {label!r}")
    current = cell.label or UNIDENTIFIED
    if current == label:
        return cell, report
    session.add(CellReview(cell_id=cell.id, slide_id=slide.id, from_label=cell.label, to_label=label,
                           actor=actor, at=at or utcnow()))
    cell.label = label
    session.flush()
    return cell, recompute(session, slide, rules or load_rules())


def sign_off(session: Session, slide_id: str, actor: str, *, at: datetime | None = None) -> Slide:
    """Mark the slide verified by ``actor``; refused (conflict) while white cells are unidentified."""
    slide = _locked_slide(session, slide_id)
    report = _check_editable(slide)
    open_cells = session.execute(
        select(func.count()).select_from(Cell).where(
            Cell.slide_id == slide.id, Cell.kind == WBC,
            (Cell.label.is_(None)) | (Cell.label == UNIDENTIFIED))
    ).scalar_one()
    if open_cells:
        raise ReviewError("conflict", "unidentified_cells",
                          f"{open_cells} white cell{'s are' if open_cells != 1 else ' is'} still unidentified: "
                          "classify each one (keys 1-9) before signing off")
    when = at or utcnow()
    slide.verified_by = actor
    slide.verified_at = when
    slide.report = {**report, "verified_by": actor, "verified_at": when.isoformat(timespec="seconds") + "Z"}
    return slide


def review_history(session: Session, slide_id: str) -> Sequence[CellReview]:
    """The slide's reclassifications, oldest first."""
    return session.execute(select(CellReview).where(CellReview.slide_id == slide_id)
                           .order_by(CellReview.at, CellReview.id)).scalars().all()
