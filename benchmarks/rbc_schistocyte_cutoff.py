"""Schistocyte calls on a make-slide slide with a red-cell mix, as the pipeline would make them:
the detector's red cells in 16 fields of 600 px, the sampler's whole-cell rules (cut by the border
or beside a white cell, split pieces), crops at the centroid relit to the model's glass, and the
number of placed normal / other cells whose schistocyte probability reaches each cut-off
(docs/validation.md, "Red-cell morphology in the pipeline"; the model card of rbc-effnetlite0 1.1.0).

    python benchmarks/rbc_schistocyte_cutoff.py SLIDE.tiff [MODEL_DIR]

Choose a cut-off on slides of **validation** cells (``make-slide --rbc-split val``), never on the
test-cell slides it is then measured on.
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
from hemato_model.rbc.morphology import MAX_CONTACT, MAX_DIAMETER_UM
from hematovision.core.settings import RBC_MODEL_DIR
from hematovision.core.slides import open_slide

CUT_OFFS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)


def main(path: str, model_dir: str | None) -> None:
    with open(path + ".manifest.json", encoding="utf-8") as fh:
        placed = [c for c in json.load(fh)["cells"] if c["kind"] == "rbc"]
    tree = cKDTree(np.array([c["center"] for c in placed], float))
    clf = load_classifier(model_dir or RBC_MODEL_DIR)
    glass = np.array(clf.meta["preprocessing"]["glass_rgb"], np.float32)
    schisto = clf.classes.index("schistocyte")
    truth: list[str] = []
    probs: list[np.ndarray] = []
    with open_slide(path) as slide:
        for x0 in range(800, 3300, 700):
            for y0 in range(800, 3300, 700):
                region = slide.read_region((x0, y0), 0, (600, 600))
                gain = glass / np.percentile(region[::4, ::4].reshape(-1, 3), 95, axis=0)
                dets = [
                    d
                    for d in detect_cells(region, slide.mpp, kinds=("rbc",))
                    if d.shape is not None
                    and d.centroid is not None
                    and not d.shape.cut
                    and not (d.shape.in_clump and d.shape.contact > MAX_CONTACT)
                    and 0.5 * (d.bbox[2] - d.bbox[0] + d.bbox[3] - d.bbox[1]) * slide.mpp <= MAX_DIAMETER_UM
                ]
                if not dets:
                    continue
                crops = np.stack(
                    [
                        np.clip(
                            crop_cell(region, d.centroid, slide.mpp, clf.crop_um, clf.input_px) * gain + 0.5, 0, 255
                        ).astype(np.uint8)
                        for d in dets
                    ]
                )
                probs.append(clf.predict_proba(crops))
                for d in dets:
                    _, j = tree.query([x0 + d.centroid[0], y0 + d.centroid[1]])
                    truth.append(placed[j]["class"])
    p = np.concatenate(probs)
    normal = np.array([t == "normal" for t in truth])
    named = p.max(axis=1) >= clf.threshold
    top = p.argmax(axis=1)
    print(
        f"model {clf.name} {clf.version}: {len(truth)} whole cells kept, "
        f"{int(named.sum())} named at {clf.threshold:.3f}"
    )
    print("  named, top class:", Counter(clf.classes[k] for k in top[named]).most_common())
    for t in CUT_OFFS:
        hit = p[:, schisto] >= t
        print(
            f"  p(schistocyte) >= {t}: placed normal {int((hit & normal).sum())}, "
            f"placed other {int((hit & ~normal).sum())}"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
