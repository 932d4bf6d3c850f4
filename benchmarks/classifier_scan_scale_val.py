"""White-cell classifiers on the PBC VALIDATION split, at PBC's scale and as coarser scans see it.

For choosing between models (never the test split): every crop of the first model's ``split.json``
``val`` part, cut at PBC's 0.08 µm/px, is scored as it is and re-sampled as a scan at each
``--scan-mpp`` would give it (:func:`hemato_model.preprocessing.rescan`), and with ``--jpeg-quality Q``
also as that scan stored as JPEG at quality Q with 4:2:0 chroma, as slides store their tiles, and with
``--jpeg2000-bpp B`` as lossy JPEG 2000 at B bits per pixel in 240 px tiles packed with crops
(:func:`hemato_model.preprocessing.jpeg2000_stored`; Aperio's other storage). Per
model, scale and storage: top-class
accuracy, and per true class the recall of the top class and the share left ``unidentified`` under the
model's own rule (:meth:`~hemato_model.classifier.Classifier.identified`, with its energy cut-offs for
that scale where it has them, else its threshold alone).

    python benchmarks/classifier_scan_scale_val.py --model DIR [--model DIR2 ...] [--scan-mpp 0.5]
        [--jpeg-quality 85] [--jpeg2000-bpp 1.0] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def scale_figures(
    clf: Any,
    crops: np.ndarray,
    truth: list[str],
    mpp: float | None,
    jpeg_quality: int | None = None,
    jpeg2000_bpp: float | None = None,
) -> dict[str, Any]:
    """Accuracy, unidentified rate and per-class (recall, unidentified) of ``clf`` on ``crops`` as a
    scan at ``mpp`` (None: unchanged) gives them, stored as JPEG at ``jpeg_quality`` or as JPEG 2000
    at ``jpeg2000_bpp`` where given, by the evaluation's own scoring
    (:func:`hemato_model.training.evaluation.classifier_scored`)."""
    from hemato_model.preprocessing import rescan
    from hemato_model.training.evaluation import classifier_scored

    scans = rescan(crops, clf.crop_um, mpp, jpeg_quality, jpeg2000_bpp) if mpp else crops
    proba, energy = clf.predict_scored(scans)
    s = classifier_scored(clf, truth, proba, energy, sorted(set(truth)), mpp)
    return {
        "scan_mpp": mpp,
        "jpeg_quality": jpeg_quality if mpp else None,
        "jpeg2000_bpp": jpeg2000_bpp if mpp else None,
        "accuracy": s["accuracy"],
        "unidentified_rate": s["unidentified_rate"],
        "per_class": {
            c: {"recall": s["per_class"][c]["recall"], "unidentified": u}
            for c, u in s["unidentified_rate_per_class"].items()
        },
        "energy_cutoffs": clf.class_energy_cutoffs(mpp) is not None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, type=Path, help="model directory (repeatable)")
    ap.add_argument("--scan-mpp", action="append", type=float, default=None, help="coarser scan µm/px [0.5]")
    ap.add_argument(
        "--jpeg-quality", action="append", type=int, default=None, help="also each scan stored as JPEG (repeatable)"
    )
    ap.add_argument(
        "--jpeg2000-bpp",
        action="append",
        type=float,
        default=None,
        help="also each scan stored as lossy JPEG 2000 at this many bits per pixel (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import Classifier
    from hemato_model.training.classifier_training import load_crops
    from hematovision.core.datasets import PBC_MPP, pbc_root
    from hematovision.core.settings import load_settings

    root = pbc_root(load_settings().data_root)
    files = json.loads((args.model[0] / "split.json").read_text())["val"]
    truth = [f.split("/")[0] for f in files]
    t0 = time.time()
    out: dict[str, Any] = {"data": str(root), "split": "val", "n": len(files), "models": {}}
    for d in args.model:
        clf = Classifier.load(d)
        crops = load_crops([root / f for f in files], PBC_MPP, clf.crop_um, clf.input_px)
        stored: list[tuple[int | None, float | None]] = [(None, None)]
        stored += [(q, None) for q in args.jpeg_quality or []] + [(None, b) for b in args.jpeg2000_bpp or []]
        scans = [(m, q, b) for m in args.scan_mpp or [0.5] for q, b in stored]
        rows = [scale_figures(clf, crops, truth, None)]
        rows += [scale_figures(clf, crops, truth, m, q, b) for m, q, b in scans]
        out["models"][f"{clf.name} {clf.version} ({d})"] = rows
        for r in rows:
            print(
                d,
                r["scan_mpp"],
                r["jpeg_quality"],
                r["jpeg2000_bpp"],
                "accuracy",
                r["accuracy"],
                "unidentified",
                r["unidentified_rate"],
                flush=True,
            )
    out["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
