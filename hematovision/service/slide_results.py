"""A slide's results, in one home: labels summarised into a report, and the report written to its rows.

The worker's report stage, the technologist's reclassification (:mod:`hematovision.service.review`)
and ``hematovision process`` all summarise a slide here, with the same functions
(:func:`summarise_cells` for the differential, intervals, counts and flags), and the worker and the
review both store results through :func:`replace_result_rows`, so a reviewed slide and a freshly
analysed one can never disagree on how a report is computed or written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from hematovision.core.flags import NON_WBC_CLASSES, evaluate_flags, load_rules, max_severity
from hematovision.core.results import PLATELET, RBC, UNIDENTIFIED, WBC, SlideAnalysis
from hematovision.core.stats import percent_interval
from hematovision.store.models import Cell, DifferentialEntry, FlagRecord, Slide, utcnow

LIMITS = (
    "Decision support only: every differential must be reviewed by a qualified technologist. "
    "The classifier was trained on normal cells of healthy donors (PBC, one lab, one stain); "
    "cells it is unsure of are reported as 'unidentified'. See MODEL_CARD.md for known limits."
)
CI_METHOD = "exact binomial (Clopper-Pearson) 95%"


def differential(labels: list[str], classes: list[str]) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Count white-cell labels into a differential.

    Returns ``(differential, n_wbc, erythroblasts)``. Erythroblasts and platelets are not white
    cells: they are kept out of the denominator (erythroblasts are reported per 100 WBC).
    """
    counts = Counter(labels)
    wbc_classes = [c for c in classes if c not in NON_WBC_CLASSES] + [UNIDENTIFIED]
    n_wbc = sum(v for k, v in counts.items() if k not in NON_WBC_CLASSES)
    diff: dict[str, dict[str, Any]] = {}
    for cls in wbc_classes + sorted(set(counts) - set(wbc_classes) - NON_WBC_CLASSES):
        k = counts.get(cls, 0)
        lo, hi = percent_interval(k, n_wbc)
        diff[cls] = {"count": k, "percent": round(100.0 * k / n_wbc, 1) if n_wbc else 0.0, "ci95": [lo, hi]}
    return diff, n_wbc, counts.get("erythroblast", 0)


def summarise_cells(
    cells: Iterable[tuple[str, str | None]],
    classes: list[str],
    *,
    wbc_per_l: float | None,
    rules: dict[str, Any],
) -> dict[str, Any]:
    """The report fields that follow from a slide's cells: counts, differential, flags.

    Args:
        cells: ``(kind, label)`` of every cell found on the slide (white cells' labels may be None:
            unidentified).
        classes: the classes the differential lists (also when none was seen).
        wbc_per_l: the white-cell count given with the slide, for absolute counts.
        rules: the effective flag rules.
    """
    kinds_labels = list(cells)
    labels = [label or UNIDENTIFIED for kind, label in kinds_labels if kind == WBC]
    diff, n_wbc, erythroblasts = differential(labels, classes)
    flags = evaluate_flags(
        {k: v["count"] for k, v in diff.items()}, n_wbc, erythroblasts=erythroblasts, wbc_per_l=wbc_per_l, rules=rules
    )
    platelets = sum(1 for kind, _ in kinds_labels if kind == PLATELET) + labels.count("platelet")
    return {
        "counts": {
            "wbc": n_wbc,
            "rbc": sum(1 for kind, _ in kinds_labels if kind == RBC),
            "platelets": platelets,
            "erythroblasts": erythroblasts,
        },
        "differential": diff,
        "differential_sufficient": n_wbc >= int(rules["insufficient"]["min_wbc"]),
        "nrbc_per_100_wbc": round(100.0 * erythroblasts / n_wbc, 1) if n_wbc else None,
        "unidentified": diff.get(UNIDENTIFIED, {}).get("count", 0),
        "flags": [f.to_dict() for f in flags],
        "max_severity": max_severity(flags),
        "rules_version": rules.get("version"),
    }


def build_report(
    analysis: SlideAnalysis,
    *,
    slide_id: str,
    status: str = "succeeded",
    source: str | None = None,
    wbc_per_l: float | None = None,
    rules: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dictionary (the JSON report's content) for one analysed slide."""
    rules = rules or load_rules()
    summary = summarise_cells(
        ((c.kind, c.label) for c in analysis.cells), analysis.classes, wbc_per_l=wbc_per_l, rules=rules
    )
    return {
        "slide_id": slide_id,
        "status": status,
        "source": source,
        "mpp": analysis.mpp,
        "dimensions": [analysis.width, analysis.height],
        "model": {"name": analysis.model_name, "version": analysis.model_version},
        **summary,
        "analysis": {
            "fields_analysed": analysis.fields_analysed,
            "area_mm2": round(analysis.area_mm2, 4),
            "stopped_early": analysis.stopped_early,
            "timings_s": {k: round(v, 3) for k, v in analysis.timings_s.items()},
        },
        "ci_method": CI_METHOD,
        "limits": LIMITS,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def resummarise(session: Session, slide: Slide, classes: list[str], rules: dict[str, Any]) -> dict[str, Any]:
    """The slide's report with its counts, differential and flags summarised again from the cells'
    current labels in the database (after a reclassification); other report fields are kept."""
    rows = session.execute(select(Cell.kind, Cell.label).where(Cell.slide_id == slide.id)).all()
    summary = summarise_cells(((r.kind, r.label) for r in rows), classes, wbc_per_l=slide.wbc_per_l, rules=rules)
    counts = {**(slide.report or {}).get("counts", {}), **summary["counts"]}
    return {**(slide.report or {}), **summary, "counts": counts}


def replace_result_rows(
    session: Session,
    slide: Slide,
    report: dict[str, Any],
    *,
    cells: Sequence[Any] | None = None,
    model_version_id: int | None = None,
    keep_flag_times: bool = False,
) -> None:
    """Write ``report`` as the slide's result: its differential and flag rows, summary columns and
    JSON, replacing whatever was stored (never adding to it). Call inside one transaction.

    Args:
        cells: when given (a fresh analysis: :class:`~hematovision.core.results.CellResult`), the
            slide's cell rows are replaced too; a reclassification keeps the rows it edited.
        model_version_id: the model that labelled ``cells``.
        keep_flag_times: a flag that stands after a reclassification keeps the time it was first
            raised (the overnight flag list selects by it); only flags the change raises are new.
    """
    first_raised: dict[str, datetime] = {}
    if keep_flag_times:
        first_raised = dict(
            session.execute(select(FlagRecord.code, FlagRecord.created_at).where(FlagRecord.slide_id == slide.id)).all()
        )
    tables: tuple[Any, ...] = (DifferentialEntry, FlagRecord)
    for table in tables if cells is None else (Cell, *tables):
        session.execute(delete(table).where(table.slide_id == slide.id))
    if cells is not None:
        session.add_all(
            Cell(
                slide_id=slide.id,
                kind=c.kind,
                x0=int(c.bbox[0]),
                y0=int(c.bbox[1]),
                x1=int(c.bbox[2]),
                y1=int(c.bbox[3]),
                score=float(c.score),
                label=c.label,
                probability=None if c.probability is None else float(c.probability),
                model_version_id=model_version_id if c.label else None,
            )
            for c in cells
        )
    for cls, d in report["differential"].items():
        session.add(
            DifferentialEntry(
                slide_id=slide.id,
                class_name=cls,
                count=d["count"],
                percent=d["percent"],
                ci_low=d["ci95"][0],
                ci_high=d["ci95"][1],
            )
        )
    now = utcnow()
    for f in report["flags"]:
        session.add(
            FlagRecord(
                slide_id=slide.id,
                code=f["code"],
                severity=f["severity"],
                message=f["message"],
                evidence=f["evidence"],
                rules_version=str(report.get("rules_version")),
                created_at=first_raised.get(f["code"], now),
            )
        )
    counts = report["counts"]
    slide.n_wbc = counts["wbc"]
    slide.n_rbc = counts.get("rbc", slide.n_rbc)
    slide.n_platelets = counts["platelets"]
    slide.max_severity = report.get("max_severity")
    if cells is not None:
        slide.model_version_id = model_version_id
        slide.analysed_at = now
    slide.report = report  # a new dict: JSON columns track assignment, not mutation
