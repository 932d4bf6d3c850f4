"""The domain and quality gate's false-alarm rate on in-domain slides it was NOT calibrated on, with
the classifier attached.

``gate_calibration.py`` set the stain, focus and scale ranges on 27 in-domain slides and judged the
same 27, without the classifier (no out-of-distribution score, no storage record): an in-sample
figure. This run makes a fresh set of ``make-slide`` slides (seeds from ``--seed`` on, none used by
the calibration; white-cell mixes cycled as there), analyses each as ``hematovision process`` does
(the settings' classifier, rules and pipeline parameters) and counts the slides whose report carries
a gate flag (any of :data:`hematovision.core.flags.GATE_CODES`), per scan scale, with the exact 95 %
upper bound of the rate. The other flags each report raised are counted beside them.

    python benchmarks/gate_false_alarms.py --slides 60 --mpp 0.25 [--mpp 0.5] [--size 2048] \\
        [--out benchmarks/results/gate_false_alarms.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gate_calibration import MIXES  # noqa: E402  (the calibration's mixes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=60, help="slides per scan scale")
    ap.add_argument("--mpp", type=float, action="append", default=None, help="scan scale(s) [0.25]")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--n-wbc", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7000, help="first seed (the calibration used 100-102, 1000-1023)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import load_classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.flags import GATE_CODES, effective_rules
    from hematovision.core.settings import load_settings
    from hematovision.core.slides import open_slide
    from hematovision.core.stats import clopper_pearson
    from hematovision.devtools.synthetic import make_slide
    from hematovision.service.slide_results import build_report

    settings = load_settings()
    classifier = load_classifier(settings.model_dir)
    rules = effective_rules(settings)
    params = PipelineParams(
        target_wbc=settings.target_wbc, full_count=settings.full_count, platelet_method=settings.platelet_detector
    )
    names = list(MIXES)
    out: dict[str, Any] = {
        "model": f"{classifier.name} {classifier.version}",
        "rules_version": rules.get("version"),
        "size_px": a.size,
        "n_wbc": a.n_wbc,
        "scales": {},
    }
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        path = Path(tmp_name) / "in.tiff"
        for mpp in a.mpp or [0.25]:
            slides = []
            for k in range(a.slides):
                mix, seed = names[k % len(names)], a.seed + k
                make_slide(
                    path, settings.data_root, a.size, a.size, mpp=mpp, n_wbc=a.n_wbc, seed=seed, wbc_mix=MIXES[mix]
                )
                with open_slide(path) as slide:
                    analysis = analyze_slide(slide, classifier, params)
                rep = build_report(analysis, slide_id=f"{mix}-{seed}", rules=rules)
                codes = [f["code"] for f in rep["flags"]]
                q = rep.get("quality") or {}
                slides.append(
                    {
                        "slide": f"make-slide:{mix}:seed{seed}:mpp{mpp}",
                        "wbc": rep["counts"]["wbc"],
                        "gate_flags": [c for c in codes if c in GATE_CODES],
                        "other_flags": [c for c in codes if c not in GATE_CODES],
                        "ood_share_above": (q.get("ood") or {}).get("share_above"),
                        "jpeg_quality": (q.get("storage") or {}).get("jpeg_quality"),
                        "scale_ratio": (q.get("scale") or {}).get("ratio"),
                        "fields_isolated_cells": (q.get("scale") or {}).get("fields_isolated_cells"),
                    }
                )
                print(json.dumps(slides[-1]), flush=True)
            tripped = sum(1 for s in slides if s["gate_flags"])
            lo, hi = clopper_pearson(tripped, len(slides))
            out["scales"][str(mpp)] = {
                "slides": len(slides),
                "tripped": tripped,
                "rate": round(tripped / len(slides), 4),
                "rate_ci95": [round(lo, 4), round(hi, 4)],
                "tripped_besides_storage": sum(1 for s in slides if set(s["gate_flags"]) - {"STORAGE_UNVALIDATED"}),
                "by_code": dict(Counter(c for s in slides for c in s["gate_flags"])),
                "other_flags": dict(Counter(c for s in slides for c in s["other_flags"])),
                "ood_share_max": max((s["ood_share_above"] or 0.0) for s in slides),
                "scale_ratio_range": [
                    min((s["scale_ratio"] for s in slides if s["scale_ratio"] is not None), default=None),
                    max((s["scale_ratio"] for s in slides if s["scale_ratio"] is not None), default=None),
                ],
                "per_slide": slides,
            }
    out["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(out, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "scales"}))
    for mpp, r in out["scales"].items():
        print(mpp, json.dumps({k: v for k, v in r.items() if k != "per_slide"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
