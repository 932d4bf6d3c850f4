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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from hematovision.core.estimates import smear_estimates
from hematovision.core.flags import (
    SEVERITY_RANK,
    Flag,
    evaluate_gate,
    evaluate_rules,
    gate_not_evaluated,
    load_rules,
    max_severity,
    rules_sha256,
)
from hematovision.core.patient import PatientContext
from hematovision.core.rbc_grading import summarise_red_cells
from hematovision.core.results import (
    PLATELET,
    RBC,
    UNIDENTIFIED,
    WBC,
    SlideAnalysis,
    is_classified_wbc,
)
from hematovision.core.stats import percent_interval, rare_event_detection_limit
from hematovision.core.vocabulary import OUTSIDE_CATEGORIES, Vocabulary
from hematovision.store.models import Cell, DifferentialEntry, FlagRecord, Slide, utcnow

DECISION_SUPPORT = "Decision support only: every differential must be reviewed by a qualified technologist."
LIMITS = (
    f"{DECISION_SUPPORT} "
    "The classifier was trained on normal cells of healthy donors (PBC, one lab, one stain); "
    "cells it is unsure of are reported as 'unidentified'. See MODEL_CARD.md for known limits."
)


def model_card_limits(model_dir: Path | None) -> str:
    """The report's limits statement: the decision-support sentence and the model card's "Known
    limits" (or "Limits") section, or ``model.json``'s ``limits``, so the report states the limits of
    the model that produced it; :data:`LIMITS` when the model directory states none."""
    import json
    import re

    if model_dir is None:
        return LIMITS
    card = model_dir / "MODEL_CARD.md"
    try:
        text = card.read_text(encoding="utf-8")
        m = re.search(r"^## +(?:Known +)?limits\b.*?$(.*?)(?=^## |\Z)", text, flags=re.M | re.S | re.I)
        if m and m.group(1).strip():
            body = " ".join(line.strip() for line in m.group(1).strip().splitlines())
            body = re.sub(r"\*\*|`", "", body).replace(" - ", " • ").lstrip("- ")
            return f"{DECISION_SUPPORT} Model limits ({model_dir.name}): {body}"
    except OSError:
        pass
    try:
        meta = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
        if isinstance(meta.get("limits"), str) and meta["limits"].strip():
            return f"{DECISION_SUPPORT} Model limits ({model_dir.name}): {meta['limits'].strip()}"
    except (OSError, ValueError):
        pass
    return LIMITS


CI_METHOD = "exact binomial (Clopper-Pearson) 95%"
DIFFERENTIAL_BASIS = (
    "percent of classified white cells; unidentified cells, erythroblasts, platelets and smudge cells are "
    "not in the denominator"
)


@dataclass
class Differential:
    """White-cell labels counted the way the report and the rules read them.

    Attributes:
        table: class -> ``{"count", "percent", "ci95"}``, percent of ``n_classified``; the model's
            white-cell classes (zeros included) and any other label a reviewer gave.
        n_classified: named white cells: the denominator (``unidentified`` is not in it).
        unidentified: white cells the model would not name.
        erythroblasts, platelet_candidates: white-cell candidates called erythroblast / platelet.
        smudge: smudge cells (reported per 100 classified white cells, not in the differential).
        excluded: artefacts (``artefact``, ``not_classed``): in no count.
        platelets: white-cell candidates a reviewer called a (single, e.g. giant) platelet.
        terms: each label counted as something other than itself (a vocabulary term: ``band`` ->
            ``neutrophil``, ``platelet_clump`` -> ``platelet_clump``, …): ``{"count", "counts_as"}``.
    """

    table: dict[str, dict[str, Any]]
    n_classified: int
    unidentified: int = 0
    erythroblasts: int = 0
    platelet_candidates: int = 0
    smudge: int = 0
    excluded: int = 0
    platelets: int = 0
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_seen(self) -> int:
        """White cells seen: classified and unidentified (the unidentified rate's denominator)."""
        return self.n_classified + self.unidentified

    def counts(self) -> dict[str, int]:
        return {k: v["count"] for k, v in self.table.items()}


def differential(labels: list[str], classes: list[str], vocabulary: Vocabulary | None = None) -> Differential:
    """Count white-cell candidates' labels into a differential: each label counts as the review
    vocabulary says (:mod:`hematovision.core.vocabulary`; a model class or unknown label as itself)."""
    vocab = vocabulary or Vocabulary(())
    counts = Counter(labels)
    by_category: Counter[str] = Counter()
    terms: dict[str, dict[str, Any]] = {}
    for label, k in counts.items():
        cat = vocab.category(label)
        by_category[cat] += k
        if cat != label:
            terms[label] = {"count": k, "counts_as": cat}
    classified = {k: v for k, v in by_category.items() if is_classified_wbc(k) and k not in OUTSIDE_CATEGORIES}
    n = sum(classified.values())
    wbc_classes = [c for c in classes if is_classified_wbc(c)]
    table: dict[str, dict[str, Any]] = {}
    for cls in wbc_classes + sorted(set(classified) - set(wbc_classes)):
        k = classified.get(cls, 0)
        lo, hi = percent_interval(k, n)
        table[cls] = {"count": k, "percent": round(100.0 * k / n, 1) if n else 0.0, "ci95": [lo, hi]}
    return Differential(
        table,
        n,
        unidentified=by_category.get(UNIDENTIFIED, 0),
        erythroblasts=by_category.get("erythroblast", 0),
        platelet_candidates=by_category.get("platelet_clump", 0),
        platelets=by_category.get("platelet", 0),
        smudge=by_category.get("smudge", 0),
        excluded=by_category.get("excluded", 0),
        terms=terms,
    )


@dataclass
class RedCells:
    """What the red-cell section is summarised from: every red cell's label (None: not classified),
    the equivalent diameter (µm) of each named one, and the pipeline's record (``SlideAnalysis.rbc``)."""

    labels: list[str | None]
    diameters_um: list[float]
    context: dict[str, Any]

    @classmethod
    def from_boxes(
        cls, rows: Iterable[tuple[str | None, Sequence[float]]], mpp: float, context: dict[str, Any]
    ) -> RedCells:
        """From ``(label, (x0, y0, x1, y1))`` of every red cell and the slide's µm/px."""
        labels: list[str | None] = []
        diameters: list[float] = []
        for label, (x0, y0, x1, y1) in rows:
            labels.append(label)
            if label is not None and label != UNIDENTIFIED:
                diameters.append(0.5 * ((x1 - x0) + (y1 - y0)) * mpp)
        return cls(labels, diameters, context)


def summarise_cells(
    cells: Iterable[tuple[str, str | None]],
    classes: list[str],
    *,
    patient: PatientContext | None,
    rules: dict[str, Any],
    quality: dict[str, Any] | None = None,
    red_cells: RedCells | None = None,
) -> dict[str, Any]:
    """The report fields that follow from a slide's cells: counts, differential, flags, and whether
    the differential may be released (the domain and quality gate).

    Args:
        cells: ``(kind, label)`` of every cell found on the slide (white cells' labels may be None:
            unidentified).
        classes: the classes the differential lists (also when none was seen).
        patient: age, sex and WBC count, as far as known (from the slide's order: ``OrderInfo.context()``).
        rules: the effective flag rules.
        quality: the slide's gate measurements (``SlideAnalysis.quality``); a flag of the gate makes
            ``differential_valid`` false, with the reason, until a technologist reviews the slide.
        red_cells: the red cells, for the ``rbc_morphology`` section and the red-cell flags
            (:mod:`hematovision.core.rbc_grading`); None leaves both out (a report made before them).
    """
    kinds_labels = list(cells)
    labels = [label or UNIDENTIFIED for kind, label in kinds_labels if kind == WBC]
    d = differential(labels, classes, Vocabulary.from_rules(rules))
    patient = patient or PatientContext()
    outcome = evaluate_rules(
        d.counts(),
        d.n_classified,
        unidentified=d.unidentified,
        erythroblasts=d.erythroblasts,
        platelet_candidates=d.platelet_candidates,
        patient=patient,
        rules=rules,
    )
    gate = evaluate_gate(quality, rules)
    rbc_section: dict[str, Any] | None = None
    rbc_flags: list[Flag] = []
    rbc_not_run: list[dict[str, str]] = []
    if red_cells is not None:
        ctx = dict(red_cells.context)
        if any(f.code == "SCALE_MISMATCH" for f in gate) and ctx.get("scale_known", True):
            ctx["scale_known"] = False
            ctx["scale_reason"] = "the red cells contradict the slide's stated scale (SCALE_MISMATCH)"
        rbc_section, rbc_flags, rbc_not_run = summarise_red_cells(
            red_cells.labels,
            red_cells.diameters_um,
            classes=list((ctx.get("model") or {}).get("classes") or []),
            rules=rules,
            context=ctx,
        )
        rbc_section["context"] = red_cells.context
    flags = sorted([*gate, *outcome.flags, *rbc_flags], key=lambda f: -SEVERITY_RANK.get(f.severity, 0))
    n = d.n_classified
    u_lo, u_hi = percent_interval(d.unidentified, d.n_seen)
    platelets = sum(1 for kind, _ in kinds_labels if kind == PLATELET) + d.platelet_candidates + d.platelets
    return {
        "counts": {
            "wbc": n,
            "wbc_seen": d.n_seen,
            "unidentified": d.unidentified,
            "rbc": sum(1 for kind, _ in kinds_labels if kind == RBC),
            "platelets": platelets,
            "platelet_candidates": d.platelet_candidates,
            "platelets_from_wbc_candidates": d.platelets,
            "erythroblasts": d.erythroblasts,
            "smudge": d.smudge,
            "excluded": d.excluded,
        },
        "differential": d.table,
        "differential_basis": DIFFERENTIAL_BASIS,
        "review_terms": d.terms,
        "differential_sufficient": n >= int(rules["insufficient"]["min_wbc"]),
        "nrbc_per_100_wbc": round(100.0 * d.erythroblasts / n, 1) if n else None,
        "smudge_per_100_wbc": round(100.0 * d.smudge / n, 1) if n else None,
        "unidentified": d.unidentified,
        "unidentified_percent": round(100.0 * d.unidentified / d.n_seen, 1) if d.n_seen else None,
        "unidentified_ci95": [u_lo, u_hi],
        "rare_event_detection_limit_pct": _rare_event_pct(n),
        "rare_event_statement": RARE_EVENT_STATEMENT.format(n=n, pct=_rare_event_pct(n)) if n else None,
        "patient": patient.to_dict(),
        "age_partition": outcome.age_partition,
        "absolute_10e9_per_l": outcome.absolute,
        "differential_valid": not gate,
        "differential_invalid_reason": (
            "not valid for release until reviewed: " + ", ".join(f.code for f in gate) if gate else None
        ),
        "flags": [f.to_dict() for f in flags],
        "max_severity": max_severity(flags),
        "rules_not_evaluated": [*gate_not_evaluated(quality, rules), *outcome.not_evaluated, *rbc_not_run],
        "rules_version": rules.get("version"),
        "rules_sha256": rules_sha256(rules),
    } | ({"rbc_morphology": rbc_section} if rbc_section is not None else {})


RARE_EVENT_STATEMENT = (
    "With {n} white cells classified, a population of {pct} % or more is seen at least once with 95 % "
    "probability (binomial); a smaller one (e.g. a few blasts) may be missed by chance."
)


def _rare_event_pct(n: int) -> float | None:
    """The rare-event detection limit of a count of ``n`` cells, percent (2 significant digits)."""
    p = rare_event_detection_limit(n)
    return None if p is None else float(f"{100.0 * p:.2g}")


def build_report(
    analysis: SlideAnalysis,
    *,
    slide_id: str,
    status: str = "succeeded",
    source: str | None = None,
    patient: PatientContext | None = None,
    rules: dict[str, Any] | None = None,
    limits: str | None = None,
    rbc_10e12_per_l: float | None = None,
) -> dict[str, Any]:
    """The report dictionary (the JSON report's content) for one analysed slide; ``limits`` is the
    statement of the model's limits (:func:`model_card_limits`); ``rbc_10e12_per_l`` the CBC red-cell
    count, when known (turns the platelet estimate into ×10⁹/L)."""
    rules = rules or load_rules()
    summary = summarise_cells(
        ((c.kind, c.label) for c in analysis.cells),
        analysis.classes,
        patient=patient,
        rules=rules,
        quality=analysis.quality,
        red_cells=RedCells.from_boxes(
            ((c.label, c.bbox) for c in analysis.cells if c.kind == RBC), analysis.mpp, analysis.rbc
        ),
    )
    return {
        "slide_id": slide_id,
        "status": status,
        "source": source,
        "mpp": analysis.mpp,
        "dimensions": [analysis.width, analysis.height],
        "model": {"name": analysis.model_name, "version": analysis.model_version},
        **summary,
        "quality": analysis.quality,
        "sampling": {k: v for k, v in analysis.sampling.items() if k != "field_monolayer_mm2"} or None,
        "estimates": smear_estimates(analysis.cells, analysis.sampling, rbc_10e12_per_l) if analysis.sampling else None,
        "analysis": {
            "fields_analysed": analysis.fields_analysed,
            "area_mm2": round(analysis.area_mm2, 4),
            "stopped_early": analysis.stopped_early,
            "timings_s": {k: round(v, 3) for k, v in analysis.timings_s.items()},
        },
        "ci_method": CI_METHOD,
        "limits": limits or LIMITS,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def resummarise(session: Session, slide: Slide, classes: list[str], rules: dict[str, Any]) -> dict[str, Any]:
    """The slide's report with its counts, differential and flags summarised again from the cells'
    current labels in the database (after a reclassification); other report fields are kept."""
    rows = session.execute(
        select(Cell.kind, Cell.label, Cell.x0, Cell.y0, Cell.x1, Cell.y1).where(Cell.slide_id == slide.id)
    ).all()
    from hematovision.service.submission import order_of

    patient = order_of(slide).context()
    previous = (slide.report or {}).get("rbc_morphology")
    red_cells = None
    if previous is not None:  # a report with a red-cell section: summarised again from the labels
        red_cells = RedCells.from_boxes(
            ((r.label, (r.x0, r.y0, r.x1, r.y1)) for r in rows if r.kind == RBC),
            float((slide.report or {}).get("mpp") or 0.0),
            dict(previous.get("context") or {}),
        )
    summary = summarise_cells(
        ((r.kind, r.label) for r in rows),
        classes,
        patient=patient,
        rules=rules,
        quality=(slide.report or {}).get("quality"),
        red_cells=red_cells,
    )
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
                model_version_id=model_version_id if c.label and c.kind != RBC else None,
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
        slide.machine_report = report  # a fresh analysis: the machine's report, kept beside reviews
    slide.report = report  # a new dict: JSON columns track assignment, not mutation
