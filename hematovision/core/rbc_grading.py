"""Red-cell morphology of a slide: per-finding percentages, the ICSH 2015 grade, size figures, and
the red-cell flags (SCHISTOCYTES, RBC_MORPHOLOGY).

Method (thresholds and their sources: ``[rbc]`` of ``flag_rules.toml``; docs/clinical_rules.md):

- **Denominator.** The red cells the red-cell model *named* (top probability at or above its
  threshold); cells it would not name are ``unidentified`` and reported beside it, as for white
  cells. Red cells that were detected but not sampled for classification carry no label and are not
  counted here.
- **Percentages** with exact (Clopper-Pearson) 95 % intervals (:mod:`hematovision.core.stats`).
- **Grades** (Palmer et al., Int J Lab Hematol 2015;37:287-303): 1+/2+/3+ by percentage band per
  finding; schistocytes are reported as a percentage (ICSH, Zini et al. 2012) and raise SCHISTOCYTES
  (critical) at >= 1 %, or as SCHISTOCYTES_BORDERLINE (critical) when the interval's upper bound
  reaches 1 % (the CI rule of the white-cell flags, :func:`hematovision.core.flags._high_percent`).
- **Size**: median diameter (µm), the coefficient of variation of the diameter (an anisocytosis
  index, %; not an ICSH grade) and a histogram, from each named cell's equivalent diameter.
- **When it cannot be judged** the section's ``status`` says so and ``reason`` why: ``not_evaluated``
  (no red-cell model), ``empty`` (no red cells named: none in the fields, or every field thick),
  ``uncertain`` (the scale is assumed or contradicted by the red cells: findings shown, no grades,
  no flags) and ``insufficient`` (fewer than ``min_cells`` named: positive findings kept, no negative
  statement). Every red-cell rule that did not run is listed in ``rules_not_evaluated``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hematovision.core.flags import Flag, _high_percent
from hematovision.core.stats import percent_interval

UNIDENTIFIED = "unidentified"
RBC_RULES = ("SCHISTOCYTES", "RBC_MORPHOLOGY")
GRADES = ("1+", "2+", "3+")
#: Size histogram: bin edges in µm (0.5 µm bins from 2 to 14 µm; cells outside go to the end bins).
HISTOGRAM_EDGES_UM = tuple(round(2.0 + 0.5 * i, 1) for i in range(25))
STATUSES = ("ok", "insufficient", "uncertain", "empty", "not_evaluated")


def grade(percent: float, bands: Sequence[float]) -> str | None:
    """The ICSH grade of a finding's percentage (``bands``: where 1+, 2+ and 3+ start), or None."""
    out = None
    for g, start in zip(GRADES, bands, strict=True):
        if percent >= float(start):
            out = g
    return out


def size_figures(diameters_um: Sequence[float]) -> dict[str, Any] | None:
    """Median diameter, CV of the diameter (%) and a histogram; None without cells."""
    d = np.asarray([x for x in diameters_um if x and x > 0], dtype=np.float64)
    if d.size == 0:
        return None
    edges = np.asarray(HISTOGRAM_EDGES_UM)
    counts, _ = np.histogram(np.clip(d, edges[0], edges[-1] - 1e-9), bins=edges)
    mean = float(d.mean())
    return {
        "n": int(d.size),
        "median_diameter_um": round(float(np.median(d)), 2),
        "mean_diameter_um": round(mean, 2),
        "cv_diameter_pct": round(100.0 * float(d.std(ddof=1)) / mean, 1) if d.size > 1 and mean > 0 else None,
        "histogram": {"edges_um": list(HISTOGRAM_EDGES_UM), "counts": [int(c) for c in counts]},
        "method": "equivalent diameter of each named red cell's detected outline (box), µm",
    }


def _not_run(reason: str) -> list[dict[str, str]]:
    return [{"rule": r, "reason": reason} for r in RBC_RULES]


def summarise_red_cells(
    labels: Iterable[str | None],
    diameters_um: Sequence[float],
    *,
    classes: Sequence[str],
    rules: dict[str, Any],
    context: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[Flag], list[dict[str, str]]]:
    """The report's ``rbc_morphology`` section, its flags and the red-cell rules that did not run.

    Args:
        labels: the label of every red cell the model was given (None: detected, not classified).
        diameters_um: equivalent diameter of each *named* red cell, µm (any order).
        classes: the red-cell model's classes (every one is listed, zeros included).
        rules: the effective rules (``[rbc]``).
        context: what the pipeline recorded (``SlideAnalysis.rbc``: ``status``/``reason`` when it
            could not classify, ``model``, ``mpp_source``, ``scale_known``, fields read and skipped).
    """
    r = rules.get("rbc")
    ctx = dict(context or {})
    base: dict[str, Any] = {
        "status": "not_evaluated",
        "reason": None,
        "model": ctx.get("model"),
        "fields": ctx.get("fields"),
        "grading_source": (r or {}).get("source"),
    }
    if r is None:
        base["reason"] = "these flag rules have no red-cell section"
        return base, [], _not_run(base["reason"])
    if not ctx or ctx.get("status") == "not_evaluated":
        base["reason"] = ctx.get("reason") or "red-cell morphology was not run on this slide (no red-cell model)"
        return base, [], _not_run(base["reason"])
    seen = Counter(label for label in labels if label is not None)
    unidentified = seen.pop(UNIDENTIFIED, 0)
    n = sum(seen.values())
    min_cells = int(r["min_cells"])
    findings: dict[str, dict[str, Any]] = {}
    for cls in [*classes, *sorted(set(seen) - set(classes))]:
        if cls == UNIDENTIFIED:
            continue
        k = seen.get(cls, 0)
        lo, hi = percent_interval(k, n)
        findings[cls] = {"count": k, "percent": round(100.0 * k / n, 1) if n else 0.0, "ci95": [lo, hi], "grade": None}
    u_lo, u_hi = percent_interval(unidentified, n + unidentified)
    section = base | {
        "n_classified": n,
        "unidentified": unidentified,
        "unidentified_percent": round(100.0 * unidentified / (n + unidentified), 1) if n + unidentified else None,
        "unidentified_ci95": [u_lo, u_hi],
        "min_cells": min_cells,
        "findings": findings,
        "basis": "percent of the red cells the red-cell model named (unidentified cells are not in the denominator)",
        "size": None,
    }
    if n == 0:
        section["status"] = "empty"
        section["reason"] = ctx.get("reason") or "no red cells could be classified in the fields read"
        return section, [], _not_run(section["reason"])
    scale_known = bool(ctx.get("scale_known", True))
    if scale_known:
        section["size"] = size_figures(diameters_um)
    if not scale_known:
        section["status"] = "uncertain"
        section["reason"] = ctx.get("scale_reason") or "the slide's scale is not known"
        section["reason"] += (
            ": red cells were cut at an assumed size, so size findings (macrocytes, microcytes) and sizes in "
            "µm are unreliable; findings are shown ungraded and the red-cell rules were not applied"
        )
        return section, [], _not_run(section["reason"])
    flags: list[Flag] = []
    graded: list[str] = []
    not_run: list[dict[str, str]] = []
    not_graded = dict(r.get("not_graded") or {})
    for cls, why in not_graded.items():
        if cls in findings:
            findings[cls]["not_graded"] = why
            not_run.append({"rule": f"RBC_MORPHOLOGY ({cls})", "reason": str(why)})
    for cls, spec in (r.get("grades") or {}).items():
        if cls not in findings or cls in not_graded:
            continue
        f = findings[cls]
        g = grade(100.0 * f["count"] / n, spec["grade_pct"])
        f["grade"] = g
        if g:
            graded.append(f"{spec['what']} {g} ({f['percent']}%)")
    s = r["schistocytes"]
    if s["class"] in findings:
        k = findings[s["class"]]["count"]
        findings[s["class"]]["grade"] = f"{findings[s['class']]['percent']}%"
        alert = _high_percent("SCHISTOCYTES", "critical", str(s["what"]), k, n, float(s["critical_pct"]))
        if alert:
            alert.message += " of named red cells: possible thrombotic microangiopathy; review the film today"
            flags.append(alert)
    else:
        not_run.append({"rule": "SCHISTOCYTES", "reason": f"the red-cell model has no {s['class']} class"})
    if graded:
        flags.append(
            Flag(
                "RBC_MORPHOLOGY",
                "review",
                "Red-cell morphology (ICSH 2015 grades): " + "; ".join(graded),
                {
                    "findings": {c: v for c, v in findings.items() if v["grade"] and c != s["class"]},
                    "of": n,
                },
            )
        )
    if n < min_cells:
        section["status"] = "insufficient"
        section["reason"] = (
            f"only {n} red cells named (ICSH: at least {min_cells}); positive findings are kept, "
            "no negative statement is made"
        )
    else:
        section["status"] = "ok"
        section["reason"] = ctx.get("reason")
    return section, flags, not_run
