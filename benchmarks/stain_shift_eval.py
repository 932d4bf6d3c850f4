"""White-cell classifier under fixed, synthetic domain shifts of the held-out PBC test split.

A check of stain/optics/scale robustness that needs no other laboratory's labels (BCCD stays the
final out-of-domain test and is never used here). Every crop of the model's ``split.json`` test part
is scored clean and under each fixed shift (deterministic; defined here independently of the
training augmentation):

- ``od_mix``: optical density mixed across channels, glass tinted yellow (nuclei brown, red cells
  orange-red: the "other lab" look; the same transform as ``benchmarks/gate_calibration.py``);
- ``pale_blue``: optical density ×0.6 in red and green and ×1.0 in blue with a grey-blue glass
  tint (a pale, bluish Giemsa-type stain);
- ``blur_jpeg``: Gaussian blur σ = 1.5 px of the 128-px crop, then JPEG quality 40;
- ``scale_small`` / ``scale_large``: the crop cut at a µm/px 25 % above / below the true one
  (the scale estimate off by that much: cells look smaller / larger).

    python benchmarks/stain_shift_eval.py --model DIR [--model DIR2 ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def od_mix(rgb: np.ndarray) -> np.ndarray:
    od = -np.log10(np.clip((rgb.astype(np.float32) + 1) / 256.0, 1e-3, 1))
    mix = np.array([[0.1, 0.9, 0.9], [0.9, 0.6, 0.1], [0.2, 0.2, 0.6]], np.float32)
    tint = np.array([1.0, 0.95, 0.75], np.float32)
    return np.clip(255.0 * tint * 10.0 ** (-(od @ mix)), 0, 255).astype(np.uint8)


def pale_blue(rgb: np.ndarray) -> np.ndarray:
    od = -np.log10(np.clip((rgb.astype(np.float32) + 1) / 256.0, 1e-3, 1))
    od = od * np.array([0.6, 0.6, 1.0], np.float32)
    tint = np.array([0.88, 0.92, 1.0], np.float32)
    return np.clip(255.0 * tint * 10.0 ** (-od), 0, 255).astype(np.uint8)


def blur_jpeg(rgb: np.ndarray) -> np.ndarray:
    im = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(1.5))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=40)
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"))


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import Classifier
    from hemato_model.training.classifier_training import load_crops
    from hemato_model.training.evaluation import classifier_scored
    from hematovision.core.datasets import PBC_MPP, pbc_root
    from hematovision.core.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--data", type=Path, default=pbc_root(load_settings().data_root))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    results: dict[str, dict[str, object]] = {}
    for model_dir in args.model:
        clf = Classifier.load(model_dir)
        files = json.loads((clf.model_dir / "split.json").read_text())["test"]
        paths = [args.data / f for f in files]
        truth = [f.split("/")[0] for f in files]
        clean = load_crops(paths, PBC_MPP, clf.crop_um, clf.input_px)
        sets = {
            "clean": clean,
            "od_mix": np.stack([od_mix(c) for c in clean]),
            "pale_blue": np.stack([pale_blue(c) for c in clean]),
            "blur_jpeg": np.stack([blur_jpeg(c) for c in clean]),
            "scale_small": load_crops(paths, PBC_MPP * 1.25, clf.crop_um, clf.input_px),
            "scale_large": load_crops(paths, PBC_MPP * 0.75, clf.crop_um, clf.input_px),
        }
        out: dict[str, object] = {}
        for name, crops in sets.items():
            s = classifier_scored(clf, truth, *clf.predict_scored(crops), clf.classes)
            out[name] = {
                k: s[k] for k in ("n", "accuracy", "macro_recall", "unidentified_rate", "unidentified_rate_per_class")
            }
            print(
                f"{clf.name} {clf.version} {name:12s} acc {s['accuracy']:.4f} unidentified {s['unidentified_rate']:.4f}"
            )
        results[f"{clf.name} {clf.version}"] = out
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
