"""Spread sampling and the smear estimates on make-slide slides of known density (issue 16).

For each slide given (``make-slide`` output with its manifest beside it) the one-process pipeline reads
a 200-cell differential with the shipped model, and this prints, per slide:

- the share of counted (classified) white cells in each third of the smear, along x and across (y),
  the thirds cut so that each holds a third of the *placed* white cells;
- the WBC estimate's white cells per mm² of monolayer against the density make-slide placed (its
  white cells are uniform inside 0.88 of the smear ellipse's radii), with the error;
- platelets per 100 red cells found in the counted fields against the placed ratio over the slide
  (make-slide places platelets in proportion to the local red-cell density), with the error.

Usage::

    python benchmarks/smear_estimates.py SLIDE.tiff [SLIDE.tiff ...] [--target-wbc 200] [--out out.json]
        [--platelet-method classical|learned]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

PLACED_WITHIN = 0.88


def measure(path: Path, classifier: Any, target_wbc: int, platelet_method: str = "classical") -> dict[str, Any]:
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.results import WBC, is_classified_wbc
    from hematovision.core.slides import open_slide
    from hematovision.service.slide_results import build_report

    doc = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    placed = np.array([c["center"] for c in doc["cells"] if c["kind"] == "wbc"], float)
    ax, ay = doc["smear_area"]["semi_axes"]
    mpp = float(doc["mpp"])
    counts = doc["counts"]
    del doc
    with open_slide(path) as slide:
        analysis = analyze_slide(
            slide, classifier, PipelineParams(target_wbc=target_wbc, platelet_method=platelet_method)
        )
    rep = build_report(analysis, slide_id=path.stem)
    counted = np.array([c.center for c in analysis.cells if c.kind == WBC and is_classified_wbc(c.label)])
    thirds = {}
    for axis, name in ((0, "x"), (1, "y")):
        t1, t2 = np.quantile(placed[:, axis], [1 / 3, 2 / 3])
        v = counted[:, axis]
        thirds[name] = [round(float(s), 3) for s in (np.mean(v < t1), np.mean((v >= t1) & (v < t2)), np.mean(v >= t2))]
    truth_wbc = len(placed) / (math.pi * ax * ay * PLACED_WITHIN**2 * (mpp / 1000) ** 2)
    wbc = rep["estimates"]["wbc"]
    plt = rep["estimates"]["platelets"]
    truth_plt = 100.0 * counts["platelets"] / counts["rbc"]
    return {
        "slide": path.name,
        "size_px": [analysis.width, analysis.height],
        "wbc_placed": len(placed),
        "classified": rep["counts"]["wbc"],
        "fields_read": rep["sampling"]["fields_read"],
        "area_read_mm2": rep["sampling"]["area_read_mm2"],
        "monolayer_area_mm2": rep["sampling"]["monolayer_area_mm2"],
        "thirds": thirds,
        "wbc_per_mm2_placed": round(truth_wbc, 2),
        "wbc_per_mm2_estimate": wbc["per_mm2"],
        "wbc_per_mm2_ci95": wbc["per_mm2_ci95"],
        "wbc_error_pct": round(100 * (wbc["per_mm2"] - truth_wbc) / truth_wbc, 1),
        "wbc_10e9_per_l": wbc["value"],
        "platelets_per_100_rbc_placed": round(truth_plt, 2),
        "platelets_per_100_rbc_estimate": plt["per_100_rbc"],
        "platelets_per_100_rbc_ci95": plt["per_100_rbc_ci95"],
        "platelet_error_pct": round(100 * (plt["per_100_rbc"] - truth_plt) / truth_plt, 1)
        if plt["per_100_rbc"] is not None
        else None,
        "rbc_found_in_fields": plt["rbc"],
        "platelets_found_in_fields": plt["platelets"],
        "platelet_clumps_in_fields": plt["clumps"],
        "platelet_method": platelet_method,
        "rare_event_detection_limit_pct": rep["rare_event_detection_limit_pct"],
        "seconds": round(analysis.timings_s.get("total", 0.0), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--target-wbc", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--platelet-method", choices=("classical", "learned"), default="classical")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import load_classifier
    from hematovision.core.settings import load_settings

    classifier = load_classifier(load_settings().model_dir)
    rows = [measure(p, classifier, args.target_wbc, args.platelet_method) for p in args.slides]
    text = json.dumps(rows, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    print(
        "\n| slide | thirds x / y (% counted) | WBC/mm² placed | estimate [95 % CI] | error "
        "| PLT/100 RBC placed | estimate [95 % CI] | error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tx = "/".join(f"{100 * v:.0f}" for v in r["thirds"]["x"])
        ty = "/".join(f"{100 * v:.0f}" for v in r["thirds"]["y"])
        print(
            f"| {r['slide']} ({r['size_px'][0]}², {r['wbc_placed']} WBC) | {tx} · {ty} | {r['wbc_per_mm2_placed']} | "
            f"{r['wbc_per_mm2_estimate']} {r['wbc_per_mm2_ci95']} | {r['wbc_error_pct']:+.1f} % | "
            f"{r['platelets_per_100_rbc_placed']} | "
            f"{r['platelets_per_100_rbc_estimate']} {r['platelets_per_100_rbc_ci95']} | "
            f"{r['platelet_error_pct']:+.1f} % |"
        )


if __name__ == "__main__":
    main()
