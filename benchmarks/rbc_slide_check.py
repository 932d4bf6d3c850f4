"""What the red-cell model makes of the red cells of a make-slide slide with a red-cell mix
(``hematovision make-slide --rbc-mix``): cells cut at the detector's centres and at the manifest's
true centres, per placed class (docs/validation.md, "Red-cell morphology in the pipeline").

    python benchmarks/rbc_slide_check.py SLIDE.tiff [THRESHOLD]

Reads four 600 px fields, detects the red cells, matches each to the nearest placed cell, and
prints the distance (µm) and, per placed class, the labels given to crops at both centres (glass
normalised as in the pipeline). THRESHOLD defaults to the model's (0 = top class always).
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
from scipy.spatial import cKDTree

from hemato_model.classifier import load_classifier
from hemato_model.detection import detect_cells
from hemato_model.preprocessing import crop_cell
from hematovision.core.settings import RBC_MODEL_DIR
from hematovision.core.slides import open_slide

FIELDS = ((1200, 1200), (2000, 1500), (1500, 2300), (2500, 2500))


def main(path: str, threshold: float | None) -> None:
    with open(path + ".manifest.json", encoding="utf-8") as fh:
        manifest = json.load(fh)
    placed = [c for c in manifest["cells"] if c["kind"] == "rbc"]
    xy = np.array([c["center"] for c in placed], float)
    tree = cKDTree(xy)
    clf = load_classifier(RBC_MODEL_DIR)
    if threshold is not None:
        clf.threshold = threshold
    glass = np.array(clf.meta["preprocessing"]["glass_rgb"], np.float32)
    at_det: list[tuple[str, str, float]] = []
    at_true: list[tuple[str, str]] = []
    with open_slide(path) as slide:
        for x0, y0 in FIELDS:
            region = slide.read_region((x0, y0), 0, (600, 600))
            gain = glass / np.percentile(region[::4, ::4].reshape(-1, 3), 95, axis=0)

            def cut(x: float, y: float, region: np.ndarray = region, gain: np.ndarray = gain) -> np.ndarray:
                crop = crop_cell(region, (x, y), slide.mpp, clf.crop_um, clf.input_px)
                return np.clip(crop * gain + 0.5, 0, 255).astype(np.uint8)

            det, true, truth, dist = [], [], [], []
            for d in detect_cells(region, slide.mpp, kinds=("rbc",)):
                bx0, by0, bx1, by1 = d.bbox
                cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
                if not (30 < cx < 570 and 30 < cy < 570):
                    continue
                dd, j = tree.query([x0 + cx, y0 + cy])
                det.append(cut(cx, cy))
                true.append(cut(xy[j][0] - x0, xy[j][1] - y0))
                truth.append(placed[j]["class"])
                dist.append(dd * slide.mpp)
            for t, (label, _), dd in zip(truth, clf.classify(np.stack(det)), dist, strict=True):
                at_det.append((t, label, dd))
            at_true += [(t, label) for t, (label, _) in zip(truth, clf.classify(np.stack(true)), strict=True)]
    d = np.array([p[2] for p in at_det])
    print(
        f"n {len(d)}; detector centre to placed centre: median {np.median(d):.2f} µm, p90 {np.percentile(d, 90):.2f} µm"
    )
    for name, pairs in (("detector centre", [p[:2] for p in at_det]), ("true centre", at_true)):
        counts = Counter(pairs)
        for t in sorted({p[0] for p in pairs}):
            row = {label: k for (tt, label), k in counts.items() if tt == t}
            print(f"{name}: placed {t} ({sum(row.values())}):", dict(sorted(row.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None)
