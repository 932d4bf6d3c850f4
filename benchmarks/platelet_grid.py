"""Platelet detection recall on CBC *Training* over a grid of the platelet rule's constants (issue 16).

Evidence for what the classical platelet rule (:mod:`hemato_model.detection.platelets`) can reach by
tuning its thresholds alone: for each (threshold fraction, blue-passing ratio, least core area) it
prints precision, recall and the number of detections against CBC Training's platelet boxes, matched
as ``hematovision evaluate-detection`` matches them. CBC Testing is never read here.

Usage::

    python benchmarks/platelet_grid.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    import hemato_model.detection.platelets as rule
    from hemato_model.detection import estimate_mpp
    from hemato_model.detection.detect import WORK_MPP, to_input
    from hemato_model.detection.stain import stain_field
    from hemato_model.detection.white_cells import find_white_cells
    from hemato_model.training.annotations import read_voc_dir
    from hemato_model.training.detection_eval import DetectionScores

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    items = read_voc_dir(args.data / "cbc" / "Training", args.data / "bccd" / "BCCD" / "JPEGImages")
    fields = []
    for it in items:
        rgb = np.asarray(Image.open(it.image_path).convert("RGB"))
        try:
            mpp = estimate_mpp(rgb)
        except ValueError:
            continue
        field = stain_field(rgb, mpp, WORK_MPP)
        wbc, _ = find_white_cells(field)
        fields.append((field, [b for b, _ in wbc], rgb.shape, [b.bbox for b in it.boxes if b.kind == "platelet"]))
    print(f"{len(fields)} CBC Training images, {sum(len(f[3]) for f in fields)} platelets annotated")
    print("threshold_fraction min_chroma min_area_um2 precision recall detections")
    for thr, chroma, area in itertools.product([0.7, 0.6, 0.5, 0.45], [0.75, 0.65, 0.55], [1.0, 0.6, 0.4]):
        rule.PLATELET_THRESHOLD_FRACTION, rule.PLATELET_MIN_CHROMA, rule.PLATELET_MIN_AREA_UM2 = thr, chroma, area
        scores = DetectionScores()
        for field, wbc_boxes, shape, true in fields:
            pred = [
                ("platelet", to_input(b, field.scale, shape[1], shape[0]))
                for b, _ in rule.find_platelets(field, wbc_boxes)
            ]
            scores.add_image(pred, [("platelet", t) for t in true])
        m = scores.tallies["platelet"].as_dict()
        print(f"{thr} {chroma} {area} {m['precision']:.3f} {m['recall']:.3f} {m['n_pred']}")


if __name__ == "__main__":
    main()
