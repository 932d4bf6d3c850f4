"""The slide report as CSV: one row per differential class, then one per flag, then the rules not evaluated."""

from __future__ import annotations

import csv
import io
from typing import Any


def _cell(value: Any) -> str:
    """Text for a spreadsheet cell: a leading ``= + - @`` (a formula to Excel) gets a ``'`` first."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(report: dict[str, Any]) -> str:
    """The report as CSV: identification, who verified it (name, ID, time, meaning), counts, one row
    per differential class (percent of classified cells), unidentified cells beside it, absolute
    counts (with a WBC count), one row per flag, and one per rule not evaluated (so that no flag is
    never read as a negative result)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["slide_id", report["slide_id"]])
    status = report.get("result_status") or ("final" if report.get("verified_by") else "preliminary")
    w.writerow(["result_status", status])
    for k, v in (report.get("order") or {}).items():
        if v is not None:
            w.writerow([k, _cell(v)])
    w.writerow(["model", f"{report['model']['name']} {report['model']['version']}"])
    w.writerow(["mpp", report.get("mpp")])
    w.writerow(["rules_version", report.get("rules_version")])
    if report.get("rules_sha256"):
        w.writerow(["rules_sha256", report["rules_sha256"]])
    sig = report.get("signature") or {}
    if report.get("verified_by"):
        w.writerow(["verified_by", _cell(report["verified_by"])])
        w.writerow(["verified_by_id", _cell(sig.get("username") or report.get("verified_by_id") or "")])
        w.writerow(["verified_at", report.get("verified_at")])
        w.writerow(["signature_meaning", _cell(sig.get("meaning") or "")])
    else:
        w.writerow(["verified_by", "not yet verified (preliminary)"])
    for sig in report.get("signatures") or []:
        w.writerow(
            [
                "signature",
                _cell(sig.get("name") or ""),
                _cell(sig.get("username") or ""),
                sig.get("role"),
                sig.get("signed_at"),
                _cell(sig.get("meaning") or ""),
                _cell(sig.get("reason") or ""),
            ]
        )
    if report.get("signoff_reason"):
        w.writerow(["signoff_reason", _cell(report["signoff_reason"])])
    amendment = report.get("amendment") or {}
    if amendment:
        w.writerow(
            [
                "amendment",
                amendment.get("version"),
                _cell(amendment.get("reason") or ""),
                _cell(amendment.get("amended_by") or ""),
                amendment.get("amended_at"),
            ]
        )
    if "differential_valid" in report:  # the domain and quality gate
        w.writerow(
            ["differential_valid", report["differential_valid"], report.get("differential_invalid_reason") or ""]
        )
    for k, v in report["counts"].items():
        w.writerow([f"count_{k}", v])
    w.writerow([])
    w.writerow(["class", "count", "percent", "ci95_low", "ci95_high"])
    for cls, d in report["differential"].items():
        w.writerow([cls, d["count"], d["percent"], d["ci95"][0], d["ci95"][1]])
    if report.get("unidentified_percent") is not None:  # beside the differential, not in its denominator
        lo, hi = report.get("unidentified_ci95") or ["", ""]
        w.writerow([])
        w.writerow(["unidentified", "count", "percent_of_seen", "ci95_low", "ci95_high", "seen"])
        w.writerow(
            [
                "unidentified",
                report.get("unidentified", 0),
                report["unidentified_percent"],
                lo,
                hi,
                report["counts"].get("wbc_seen"),
            ]
        )
    if report.get("absolute_10e9_per_l"):
        w.writerow([])
        w.writerow(["class", "absolute_10e9_per_l", "ci95_low", "ci95_high"])
        for cls, a in report["absolute_10e9_per_l"].items():
            w.writerow([cls, a["value"], a["ci95"][0], a["ci95"][1]])
    _red_cell_rows(w, report.get("rbc_morphology"))
    w.writerow([])
    w.writerow(["flag_code", "severity", "message"])
    for f in report["flags"]:
        w.writerow([f["code"], f["severity"], f["message"]])
    if not report["flags"]:
        w.writerow(["", "", "No flags raised by the rules."])
    if report.get("flag_acknowledgements"):
        w.writerow([])
        w.writerow(["acknowledged_flag", "by", "at", "comment"])
        for a in report["flag_acknowledgements"]:
            w.writerow([a.get("code"), _cell(a.get("by") or ""), a.get("at"), _cell(a.get("comment") or "")])
    if report.get("comments"):
        w.writerow([])
        w.writerow(["comment_cell_id", "by", "at", "comment"])
        for c in report["comments"]:
            w.writerow([c.get("cell_id") or "", _cell(c.get("by") or ""), c.get("at"), _cell(c.get("text") or "")])
    w.writerow([])
    w.writerow(["rule_not_evaluated", "reason"])
    for e in report.get("rules_not_evaluated") or []:
        w.writerow([e.get("rule"), e.get("reason")])
    w.writerow([])
    w.writerow(["limits", _cell(report.get("limits") or "")])
    return buf.getvalue()


def _red_cell_rows(w: Any, section: dict[str, Any] | None) -> None:
    """The red-cell section: its status and reason, one row per finding (percent of named red cells,
    interval, ICSH grade) and the size figures (issue 17)."""
    if not section:
        return
    w.writerow([])
    w.writerow(["rbc_morphology_status", section.get("status"), _cell(section.get("reason") or "")])
    if section.get("n_classified") is None:
        return
    w.writerow(["rbc_named", section["n_classified"], "rbc_unidentified", section.get("unidentified", 0)])
    w.writerow(["rbc_finding", "count", "percent", "ci95_low", "ci95_high", "grade"])
    for cls, f in (section.get("findings") or {}).items():
        w.writerow([cls, f["count"], f["percent"], f["ci95"][0], f["ci95"][1], f.get("grade") or ""])
    size = section.get("size") or {}
    if size:
        w.writerow(["rbc_median_diameter_um", size.get("median_diameter_um")])
        w.writerow(["rbc_cv_diameter_pct", size.get("cv_diameter_pct")])
        hist = size.get("histogram") or {}
        edges = hist.get("edges_um") or []
        w.writerow(["rbc_diameter_histogram_um", *[f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)]])
        w.writerow(["rbc_diameter_histogram_count", *(hist.get("counts") or [])])
