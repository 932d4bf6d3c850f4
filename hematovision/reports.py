"""Slide reports: the differential with exact intervals, counts, flags and the model that made them.

One function builds the report dictionary from an analysis; JSON and CSV renderings follow from it.
The same report is produced by ``hematovision process`` (no server) and by the workers.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from hematovision.flags import NON_WBC_CLASSES, evaluate_flags, load_rules, max_severity
from hematovision.results import PLATELET, UNIDENTIFIED, WBC, SlideAnalysis
from hematovision.stats import percent_interval

LIMITS = (
    "Decision support only: every differential must be reviewed by a qualified technologist. "
    "The classifier was trained on normal cells of healthy donors (PBC, one lab, one stain); "
    "cells it is unsure of are reported as 'unidentified'. See MODEL_CARD.md for known limits."
)


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
    labels = analysis.wbc_labels()
    diff, n_wbc, erythroblasts = differential(labels, analysis.classes)
    diff_counts = {k: v["count"] for k, v in diff.items()}
    flags = evaluate_flags(diff_counts, n_wbc, erythroblasts=erythroblasts, wbc_per_l=wbc_per_l, rules=rules)
    platelets_detected = sum(1 for c in analysis.cells if c.kind == PLATELET)
    platelets_classified = sum(1 for c in analysis.cells if c.kind == WBC and c.label == "platelet")
    n_rbc = sum(1 for c in analysis.cells if c.kind == "rbc")
    min_wbc = int(rules["insufficient"]["min_wbc"])
    return {
        "slide_id": slide_id,
        "status": status,
        "source": source,
        "mpp": analysis.mpp,
        "dimensions": [analysis.width, analysis.height],
        "model": {"name": analysis.model_name, "version": analysis.model_version},
        "counts": {
            "wbc": n_wbc,
            "rbc": n_rbc,
            "platelets": platelets_detected + platelets_classified,
            "erythroblasts": erythroblasts,
        },
        "differential": diff,
        "differential_sufficient": n_wbc >= min_wbc,
        "nrbc_per_100_wbc": round(100.0 * erythroblasts / n_wbc, 1) if n_wbc else None,
        "unidentified": diff.get(UNIDENTIFIED, {}).get("count", 0),
        "flags": [f.to_dict() for f in flags],
        "max_severity": max_severity(flags),
        "rules_version": rules.get("version"),
        "analysis": {
            "fields_analysed": analysis.fields_analysed,
            "area_mm2": round(analysis.area_mm2, 4),
            "stopped_early": analysis.stopped_early,
            "timings_s": {k: round(v, 3) for k, v in analysis.timings_s.items()},
        },
        "ci_method": "exact binomial (Clopper-Pearson) 95%",
        "limits": LIMITS,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def report_csv(report: dict[str, Any]) -> str:
    """The report as CSV: one row per differential class, then one per flag."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["slide_id", report["slide_id"]])
    w.writerow(["model", f"{report['model']['name']} {report['model']['version']}"])
    w.writerow(["mpp", report.get("mpp")])
    for k, v in report["counts"].items():
        w.writerow([f"count_{k}", v])
    w.writerow([])
    w.writerow(["class", "count", "percent", "ci95_low", "ci95_high"])
    for cls, d in report["differential"].items():
        w.writerow([cls, d["count"], d["percent"], d["ci95"][0], d["ci95"][1]])
    w.writerow([])
    w.writerow(["flag_code", "severity", "message"])
    for f in report["flags"]:
        w.writerow([f["code"], f["severity"], f["message"]])
    return buf.getvalue()
