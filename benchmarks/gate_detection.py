"""Out-of-domain slides through the whole pipeline with the real classifier: does anything say so?

``gate_calibration.py`` judges the gate's image measurements (stain, focus, scale) on out-of-domain
inputs without the classifier; the classifier's own out-of-distribution share (DOMAIN_UNVALIDATED)
and the rules on the differential (UNRECOGNIZED_POPULATION ...) were never part of it. Here each
input is a mosaic of another laboratory's fields, analysed as a slide by
:func:`hemato_model.pipeline.analyze_slide` with the default classifier and reported by
:func:`hematovision.service.slide_results.build_report` under the shipped rules, as a lab would get
it. None of these images was used to set the gate's ranges (in-domain make-slide slides only) or
to train the classifier (PBC only).

Kinds (mosaics of ``--grid`` × ``--grid`` fields, consecutive in sorted order, ``--per-kind`` each):

- ``bccd``: BCCD fields (640×480), stated at BCCD_MPP;
- ``raabin``, ``bcd``: the TXL-PBC fields of the Raabin-WBC (575²) and BCD (416²) sources
  (``source_map.csv``), stated at the scale their own fields' red cells give (:func:`own_scale`; so
  the scale check can hardly help: stain and the classifier's score must);
- ``all_blasts``, ``all_benign``: fields of the ALL set (224², research use only: licence not
  verified) of B-ALL lymphoblasts (Early, Pre, Pro; interleaved) and of hematogones, at their own
  measured scale — another lab's leukaemic slide must not pass silently.

Per input: the gate's flags, every critical flag, whether the differential is marked valid, white
cells seen, the out-of-distribution share and the rules not evaluated. An input is **silent** when it
has no critical flag and its differential is marked valid. Output: JSON (``--out``).

    python benchmarks/gate_detection.py [--per-kind 12] [--grid 4] [--out benchmarks/results/gate_detection.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_calibration import mosaic


def inputs(data_root: Path, per_kind: int, grid: int) -> dict[str, list[tuple[list[Path], float | None]]]:
    """Per kind: (the fields of each mosaic, its stated µm/px or None for its own measured scale)."""
    from hematovision.core.datasets import ARIA_ALL_DIR, BCCD_DIR, BCCD_MPP, TXL_DIR

    n = grid * grid

    def groups(files: list[Path], mpp: float | None) -> list[tuple[list[Path], float | None]]:
        return [(files[i * n : (i + 1) * n], mpp) for i in range(min(per_kind, len(files) // n))]

    txl_root = data_root / TXL_DIR
    by_source: dict[str, list[Path]] = {"raabin": [], "bcd": []}
    with open(txl_root.parent / "source_map.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            kind = (
                "raabin" if row["source"].startswith("Raabin") else "bcd" if row["source"].startswith("BCD") else None
            )
            if kind:
                by_source[kind].append(txl_root.parent / row["image"])
    aria = data_root / ARIA_ALL_DIR
    blasts = [sorted((aria / c).glob("*.jpg")) for c in ("Early", "Pre", "Pro")]
    interleaved = [f for trio in zip(*blasts, strict=False) for f in trio]
    return {
        "bccd": groups(sorted((data_root / BCCD_DIR / "BCCD" / "JPEGImages").glob("*.jpg")), BCCD_MPP),
        "raabin": groups(sorted(by_source["raabin"]), None),
        "bcd": groups(sorted(by_source["bcd"]), None),
        "all_blasts": groups(interleaved, None),
        "all_benign": groups(sorted((aria / "Benign").glob("*.jpg")), None),
    }


def own_scale(files: list[Path]) -> tuple[float, str]:
    """The mosaic's µm/px as its own fields measure it: the median over its fields of the red-cell
    estimate of each, as ``evaluate`` measures fields (:func:`~hemato_model.training.evaluation.estimate_scales`:
    no white-cell fallback, small fields enlarged as the gate measures them). 0.1 when no field can be
    measured (said in the source)."""
    from hemato_model.training.classifier_training import DataError
    from hemato_model.training.evaluation import estimate_scales

    try:
        scales, summary = estimate_scales([np.asarray(Image.open(f).convert("RGB")) for f in files], centred_cell=False)
    except DataError:
        return 0.1, "no field measurable: 0.1 assumed"
    return float(np.median(scales)), f"median of {summary['n_measured']} fields' red cells"


def analyse(path: Path, mpp: float, clf: Any, rules: dict[str, Any]) -> dict[str, Any]:
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.flags import GATE_CODES
    from hematovision.core.slides import open_slide
    from hematovision.service.slide_results import build_report

    with open_slide(path, mpp=mpp) as slide:
        report = build_report(analyze_slide(slide, clf, PipelineParams()), slide_id=path.stem, rules=rules)
    flags = report["flags"]
    ood = (report.get("quality") or {}).get("ood") or {}
    critical = sorted({f["code"] for f in flags if f["severity"] == "critical"})
    return {
        "gate_flags": sorted({f["code"] for f in flags if f["code"] in GATE_CODES}),
        "critical_flags": critical,
        "review_flags": sorted({f["code"] for f in flags if f["severity"] != "critical"}),
        "differential_valid": report.get("differential_valid"),
        "wbc_seen": report["counts"]["wbc_seen"],
        "unidentified_percent": report.get("unidentified_percent"),
        "ood_share": ood.get("share_above"),
        "ood_crops": ood.get("crops"),
        "rules_not_evaluated": sorted({e["rule"] for e in report.get("rules_not_evaluated") or []}),
        "silent": not critical and bool(report.get("differential_valid")),
    }


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import Classifier
    from hematovision.core.flags import load_rules
    from hematovision.core.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=12)
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--model", type=Path, default=None, help="Classifier directory (default: the settings').")
    ap.add_argument("--kinds", default=None, help="Comma-separated kinds to run (default: all).")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    settings = load_settings()
    clf = Classifier.load(a.model or settings.model_dir)
    rules = load_rules()
    result: dict[str, Any] = {
        "model": f"{clf.name} {clf.version}",
        "rules_version": rules.get("version"),
        "grid": a.grid,
        "inputs": {},
        "summary": {},
    }
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for kind, groups in inputs(settings.data_root, a.per_kind, a.grid).items():
            if a.kinds and kind not in a.kinds.split(","):
                continue
            rows = []
            for i, (files, stated) in enumerate(groups):
                img = mosaic(files, a.grid)
                path = Path(tmp) / f"{kind}{i}.png"
                Image.fromarray(img).save(path)
                mpp, source = (stated, "stated") if stated is not None else own_scale(files)
                row = {"input": f"{kind}{i}", "fields": [f.name for f in files], "mpp": round(mpp, 4)}
                rows.append(row | {"mpp_source": source})
                rows[-1] |= analyse(path, mpp, clf, rules)
            by_code: dict[str, int] = {}
            for r in rows:
                for c in r["critical_flags"]:
                    by_code[c] = by_code.get(c, 0) + 1
            result["inputs"][kind] = rows
            result["summary"][kind] = {
                "inputs": len(rows),
                "gate_tripped": sum(1 for r in rows if r["gate_flags"]),
                "any_critical": sum(1 for r in rows if r["critical_flags"]),
                "silent": sum(1 for r in rows if r["silent"]),
                "critical_by_code": dict(sorted(by_code.items())),
                "wbc_seen_median": float(np.median([r["wbc_seen"] for r in rows])) if rows else None,
                "ood_share_median": float(np.median([r["ood_share"] for r in rows if r["ood_share"] is not None]))
                if any(r["ood_share"] is not None for r in rows)
                else None,
            }
            print(kind, json.dumps(result["summary"][kind]), f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    result["wall_s"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
