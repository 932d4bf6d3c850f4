"""The slide report as CSV: one row per differential class, then one per flag."""

from __future__ import annotations

import csv
import io
from typing import Any


def _cell(value: Any) -> str:
    """Text for a spreadsheet cell: a leading ``= + - @`` (a formula to Excel) gets a ``'`` first."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(report: dict[str, Any]) -> str:
    """The report as CSV: who verified it (name, ID, time, meaning), one row per differential class,
    then one per flag."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["slide_id", report["slide_id"]])
    w.writerow(["model", f"{report['model']['name']} {report['model']['version']}"])
    w.writerow(["mpp", report.get("mpp")])
    sig = report.get("signature") or {}
    if report.get("verified_by"):
        w.writerow(["verified_by", _cell(report["verified_by"])])
        w.writerow(["verified_by_id", _cell(sig.get("username") or report.get("verified_by_id") or "")])
        w.writerow(["verified_at", report.get("verified_at")])
        w.writerow(["signature_meaning", _cell(sig.get("meaning") or "")])
    else:
        w.writerow(["verified_by", "not yet verified (preliminary)"])
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
