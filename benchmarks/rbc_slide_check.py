"""What the red-cell model makes of the red cells of a make-slide slide with a red-cell mix
(``hematovision make-slide --rbc-mix``): cells cut at the detector's box centres, at their segments'
centroids, and at the manifest's true centres, per placed class; and what the sampler's whole-cell
rules (:mod:`hemato_model.rbc.morphology`: cut by the border or a white cell, split pieces) leave out
(docs/validation.md, "Red-cell morphology in the pipeline").

    python benchmarks/rbc_slide_check.py SLIDE.tiff [THRESHOLD] [MODEL_DIR]

Reads four 600 px fields, detects the red cells, matches each to the nearest placed cell, and
prints the distance (µm) and, per placed class, the labels given to crops at the three centres
(glass normalised as in the pipeline). THRESHOLD defaults to the model's (0 = top class always);
MODEL_DIR to the installed red-cell model.
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
from hemato_model.rbc.morphology import MAX_CONTACT
from hematovision.core.settings import RBC_MODEL_DIR
from hematovision.core.slides import open_slide

FIELDS = ((1200, 1200), (2000, 1500), (1500, 2300), (2500, 2500))


def main(path: str, threshold: float | None, model_dir: str | None) -> None:
    with open(path + ".manifest.json", encoding="utf-8") as fh:
        manifest = json.load(fh)
    placed = [c for c in manifest["cells"] if c["kind"] == "rbc"]
    xy = np.array([c["center"] for c in placed], float)
    tree = cKDTree(xy)
    clf = load_classifier(model_dir or RBC_MODEL_DIR)
    if threshold is not None:
        clf.threshold = threshold
    glass = np.array(clf.meta["preprocessing"]["glass_rgb"], np.float32)
    rows: list[dict[str, object]] = []
    with open_slide(path) as slide:
        for x0, y0 in FIELDS:
            region = slide.read_region((x0, y0), 0, (600, 600))
            gain = glass / np.percentile(region[::4, ::4].reshape(-1, 3), 95, axis=0)

            def cut(x: float, y: float, region: np.ndarray = region, gain: np.ndarray = gain) -> np.ndarray:
                crop = crop_cell(region, (x, y), slide.mpp, clf.crop_um, clf.input_px)
                return np.clip(crop * gain + 0.5, 0, 255).astype(np.uint8)

            field_rows, crops = [], []
            for d in detect_cells(region, slide.mpp, kinds=("rbc",)):
                cx, cy = d.center
                if not (30 < cx < 570 and 30 < cy < 570) or d.centroid is None or d.shape is None:
                    continue
                gx, gy = d.centroid
                dd, j = tree.query([x0 + gx, y0 + gy])
                keep = not d.shape.cut and not (d.shape.in_clump and d.shape.contact > MAX_CONTACT)
                field_rows.append({"placed": placed[j]["class"], "dist_um": dd * slide.mpp, "kept": keep})
                crops += [cut(cx, cy), cut(gx, gy), cut(xy[j][0] - x0, xy[j][1] - y0)]
            labels = [label for label, _ in clf.classify(np.stack(crops))]
            for k, r in enumerate(field_rows):
                r["box"], r["centroid"], r["true"] = labels[3 * k : 3 * k + 3]
            rows += field_rows
    d = np.array([r["dist_um"] for r in rows], float)
    kept = [r for r in rows if r["kept"]]
    print(
        f"model {clf.name} {clf.version}, threshold {clf.threshold:.3f}; n {len(rows)} detected, {len(kept)} kept "
        f"by the whole-cell rules; centroid to placed centre: median {np.median(d):.2f} µm, "
        f"p90 {np.percentile(d, 90):.2f} µm"
    )
    for name, key, subset in (
        ("box centre, every detection", "box", rows),
        ("centroid, every detection", "centroid", rows),
        ("centroid, kept cells", "centroid", kept),
        ("true centre, kept cells", "true", kept),
    ):
        counts = Counter((r["placed"], r[key]) for r in subset)
        for t in sorted({str(r["placed"]) for r in subset}):
            row = {label: k for (tt, label), k in counts.items() if tt == t}
            total = sum(row.values())
            print(f"{name}: placed {t} ({total}):", dict(sorted(row.items(), key=lambda kv: -kv[1])))
        named = [r for r in subset if r[key] != "unidentified"]
        pct = Counter(str(r[key]) for r in named)
        print(
            f"  -> reported % of named ({len(named)}):",
            {k: round(100 * v / max(1, len(named)), 1) for k, v in pct.most_common()},
        )


if __name__ == "__main__":
    main(
        sys.argv[1],
        float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None,
        sys.argv[3] if len(sys.argv) > 3 else None,
    )
