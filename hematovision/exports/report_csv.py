"""The slide report as CSV: one row per differential class, then one per flag."""

from __future__ import annotations

import csv
import io
from typing import Any


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
