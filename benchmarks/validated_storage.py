"""The slide storage a white-cell classifier is validated on, from its scan-scale figures.

Reads ``classifier_scan_scale_val.py``'s JSON (PBC **validation** crops re-sampled as scans at each
``--scan-mpp`` and stored as JPEG at each ``--jpeg-quality``) and applies the rule set before the
figures were seen (docs/validation.md, *Slide storage in the gate*):

- a JPEG quality q is validated at scan scale s when the accuracy there is at least the same scale's
  uncompressed accuracy minus ``--tolerance`` (0.010, about 7 of 656 crops);
- the floor at s is the smallest measured q such that every measured q' >= q is validated (none: no
  JPEG is validated at s);
- the floor holds for slides up to ``--reach`` (1.1) times s, the finest scale first.

Prints the ``validated_storage`` record per model; ``--write`` puts it into each model's
``model.json`` (the gate reads it there: :mod:`hematovision.core.storage_rule`).

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


def storage_record(rows: list[dict[str, Any]], tolerance: float = 0.010, reach: float = 1.1) -> dict[str, Any]:
    """The ``validated_storage`` record from one model's rows (see the module docstring)."""
    table: list[dict[str, Any]] = []
    for s in sorted({r["scan_mpp"] for r in rows if r["scan_mpp"] is not None}):
        at = [r for r in rows if r["scan_mpp"] == s]
        clean = next(r["accuracy"] for r in at if r["jpeg_quality"] is None)
        floor: int | None = None
        for r in sorted((r for r in at if r["jpeg_quality"] is not None), key=lambda r: -r["jpeg_quality"]):
            if r["accuracy"] < clean - tolerance:
                break
            floor = int(r["jpeg_quality"])
        measured = {
            str(r["jpeg_quality"] or "uncompressed"): r["accuracy"]
            for r in sorted(at, key=lambda r: -(r["jpeg_quality"] or 101))
        }
        table.append({"up_to_mpp": round(s * reach, 4), "quality": floor, "scan_mpp": s, "accuracy": measured})
    return {"jpeg_quality_min": table, "rule": RULE.format(tol=tolerance, reach=reach)}


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
        record = storage_record(rows, args.tolerance, args.reach) | {
            "measured": f"{args.results.as_posix()} ({doc['split']} split, {doc['n']} crops)"
        }
        print(key, json.dumps(record, indent=2))
        if args.write:
            path = model_dir if model_dir.is_absolute() else ROOT / model_dir
            meta_path = path / "model.json"
            meta = json.loads(meta_path.read_text())
            meta["validated_storage"] = record
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
