"""The slide storage a white-cell classifier is validated on, from its scan-scale figures.

Reads ``classifier_scan_scale_val.py``'s JSON (PBC **validation** crops re-sampled as scans at each
``--scan-mpp`` and stored as JPEG at each ``--jpeg-quality`` or as JPEG 2000 at each
``--jpeg2000-bpp``) and applies the rule set before the figures were seen (docs/validation.md,
*Slide storage in the gate*; the same rule for JPEG 2000's rate as for JPEG's quality):

- a JPEG quality q (a JPEG 2000 rate b) is validated at scan scale s when the accuracy there is at
  least the same scale's uncompressed accuracy minus ``--tolerance`` (0.010, about 7 of 656 crops);
- the floor at s is the smallest measured q (b) such that every measured q' >= q (b' >= b) is
  validated (none: nothing of that kind is validated at s);
- the floor holds for slides up to ``--reach`` (1.1) times s, the finest scale first.

Prints the ``validated_storage`` record per model, for the kinds the JSON measured; ``--write`` puts
it into each model's ``model.json``, replacing only those kinds (the gate reads it there:
:mod:`hematovision.core.storage_rule`).

    python benchmarks/validated_storage.py benchmarks/results/classifier_scan_jpeg_grid_val.json [--write]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RULE = (
    "JPEG quality q validated at scan scale s when PBC validation accuracy is at least s's uncompressed "
    "accuracy minus {tol}; floor = the smallest q with every measured q' >= q validated; it holds up to "
    "{reach} x s (benchmarks/validated_storage.py)"
)
#: Per storage kind: the result rows' field, the record's table, the row's floor field, its rule text.
KINDS = {
    "jpeg": ("jpeg_quality", "jpeg_quality_min", "quality", RULE, "rule", "measured"),
    "jpeg2000": (
        "jpeg2000_bpp",
        "jpeg2000_bpp_min",
        "bpp",
        "JPEG 2000 at b bits per pixel validated at scan scale s when PBC validation accuracy is at least s's "
        "uncompressed accuracy minus {tol}; floor = the smallest b with every measured b' >= b validated; it "
        "holds up to {reach} x s (benchmarks/validated_storage.py)",
        "jpeg2000_rule",
        "jpeg2000_measured",
    ),
}


def storage_record(
    rows: list[dict[str, Any]], tolerance: float = 0.010, reach: float = 1.1, kind: str = "jpeg"
) -> dict[str, Any]:
    """The ``validated_storage`` entries of one storage ``kind`` (``"jpeg"`` or ``"jpeg2000"``) from
    one model's rows (see the module docstring); empty when the rows measured none of that kind."""
    field, table_key, floor_key, rule, rule_key, _ = KINDS[kind]
    stored = [r for r in rows if r.get(field) is not None]
    if not stored:
        return {}
    table: list[dict[str, Any]] = []
    for s in sorted({r["scan_mpp"] for r in stored}):
        at = [r for r in rows if r["scan_mpp"] == s]
        clean = next(r["accuracy"] for r in at if r.get("jpeg_quality") is None and r.get("jpeg2000_bpp") is None)
        floor: float | None = None
        kept = sorted((r for r in at if r.get(field) is not None), key=lambda r: -r[field])
        for r in kept:
            if r["accuracy"] < clean - tolerance:
                break
            floor = r[field]
        measured = {"uncompressed": clean} | {f"{r[field]:g}": r["accuracy"] for r in kept}
        value = None if floor is None else (int(floor) if kind == "jpeg" else floor)
        table.append({"up_to_mpp": round(s * reach, 4), floor_key: value, "scan_mpp": s, "accuracy": measured})
    return {table_key: table, rule_key: rule.format(tol=tolerance, reach=reach)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="classifier_scan_scale_val.py --out JSON")
    ap.add_argument("--tolerance", type=float, default=0.010)
    ap.add_argument("--reach", type=float, default=1.1)
    ap.add_argument("--write", action="store_true", help="write the record into each model's model.json")
    args = ap.parse_args(argv)
    doc = json.loads(args.results.read_text())
    for key, rows in doc["models"].items():
        model_dir = Path(re.sub(r".*\((.*)\)$", r"\1", key))
        record: dict[str, Any] = {}
        for kind, (*_, measured_key) in KINDS.items():
            part = storage_record(rows, args.tolerance, args.reach, kind)
            if part:
                record |= part | {measured_key: f"{args.results.as_posix()} ({doc['split']} split, {doc['n']} crops)"}
        print(key, json.dumps(record, indent=2))
        if args.write and record:
            path = model_dir if model_dir.is_absolute() else ROOT / model_dir
            meta_path = path / "model.json"
            meta = json.loads(meta_path.read_text())
            meta["validated_storage"] = (meta.get("validated_storage") or {}) | record
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
