"""Red-cell model on labelled Chula RBC-12 fields, with and without the pipeline's glass
normalisation, at several confidence thresholds (docs/validation.md, "Red-cell morphology in the
pipeline").

    python benchmarks/rbc_glass_check.py val test [MODEL_DIR]

Per split (fields of the model's split.json) and threshold: cells named, accuracy of the named,
the share of normal cells called schistocytes, schistocyte recall, and the true vs reported
percentage of four findings (reported = share of the named cells); at threshold 0 also the
per-class recall of the top class.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from hemato_model.classifier import load_classifier
from hemato_model.rbc.data import RBC_CLASSES, list_fields, load_crops, read_field_image
from hematovision.core.settings import RBC_MODEL_DIR, load_settings


def main(parts: list[str]) -> None:
    model_dir = Path(parts.pop()) if parts and Path(parts[-1]).is_dir() else RBC_MODEL_DIR
    clf = load_classifier(model_dir)
    split = json.loads((model_dir / "split.json").read_text())
    glass = np.array(clf.meta["preprocessing"]["glass_rgb"], np.float32)
    mpp = float(clf.meta["preprocessing"]["scale"]["mpp"])
    fields = {f.name: f for f in list_fields(load_settings().data_root / "data" / "chula_rbc")}
    for part in parts:
        crops = load_crops([fields[n] for n in split[part] if n in fields], clf.crop_um, clf.input_px, mpp=mpp)
        gains = np.stack(
            [
                glass / np.percentile(read_field_image(f.image_path)[::4, ::4].reshape(-1, 3), 95, axis=0)
                for f in crops.fields
            ]
        )
        normed = np.clip(crops.x * gains[crops.field_index][:, None, None, :] + 0.5, 0, 255).astype(np.uint8)
        y = crops.y
        for name, x in (("raw", crops.x), ("glassnorm", normed)):
            p = clf.predict_proba(x)
            top, conf = p.argmax(1), p.max(1)
            for thr in (0.0, 0.5, clf.threshold):
                keep = conf >= thr
                true_pct = np.bincount(y, minlength=13) / len(y) * 100
                rep_pct = np.bincount(top[keep], minlength=13) / keep.sum() * 100
                normal = y == 0
                n2s = 100 * ((top == 9) & keep & normal).sum() / max(1, (keep & normal).sum())
                s_rec = ((top == 9) & keep & (y == 9)).sum() / (y == 9).sum()
                pct = {RBC_CLASSES[k]: (round(true_pct[k], 1), round(rep_pct[k], 1)) for k in (0, 3, 4, 9)}
                print(
                    part,
                    name,
                    f"thr={thr:.3f} named={keep.sum()}/{len(y)} acc={(top[keep] == y[keep]).mean():.3f}",
                    f"normal->schistocyte={n2s:.2f}% schistocyte_recall={s_rec:.3f} true/reported%={pct}",
                )
                if thr == 0.0:
                    rec = {
                        RBC_CLASSES[k]: round(float(((top == k) & (y == k)).sum() / (y == k).sum()), 3)
                        for k in range(13)
                    }
                    print("   recall (top class, every cell):", rec)


if __name__ == "__main__":
    main(sys.argv[1:] or ["val"])
