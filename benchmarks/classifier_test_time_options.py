"""Test-time options of the white-cell classifier, measured on the PBC *validation* split only.

Issue 14 item 3 allows test-time stain normalisation and test-time augmentation "only if measured
to help". This script measures three candidate options on the validation crops (clean and under the
fixed synthetic shifts of ``stain_shift_eval.py``), so that the choice is made without the test split
or BCCD:

- ``soup``: weight-space interpolation θ(α) = (1 − α)·v1 + α·v1.1 (v1.1 is v1 continued with the
  domain augmentation, so both share one basin), each α with 1, 2, 4 and 8 dihedral views averaged
  (test-time augmentation; views cost one forward pass each);
- ``reinhard``: Reinhard colour normalisation before cropping, as the blast data are normalised
  (:func:`hemato_model.training.blast_data.reinhard_normalise` to the L*a*b* statistics of 160 PBC
  *training* images, :func:`~hemato_model.training.blast_data.pbc_reference`);
- ``padding``: the crop's out-of-image part filled by reflection (as shipped) or with the image's glass
  colour, on crops cut at 0.75× and 0.6× the true µm/px (a 24 µm crop then needs more than the image).

    python benchmarks/classifier_test_time_options.py [--out benchmarks/results/classifier_test_time_options.json]

Prints one JSON object: accuracy (top class) and unidentified rate per option, set and model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stain_shift_eval import blur_jpeg, od_mix, pale_blue

SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda a: a,
    "od_mix": od_mix,
    "pale_blue": pale_blue,
    "blur_jpeg": blur_jpeg,
}
ALPHAS = (0.0, 0.3, 0.5, 0.7, 1.0)


def dihedral(x: np.ndarray, k: int) -> list[np.ndarray]:
    """The first ``k`` of the 8 flips/rotations of a (N, H, W, 3) batch (identity first)."""
    t = x.transpose(0, 2, 1, 3)
    views = [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1], t, t[:, :, ::-1], t[:, ::-1], t[:, ::-1, ::-1]]
    return [np.ascontiguousarray(v) for v in views[:k]]


def glass_padded_crop(img: np.ndarray, mpp: float, crop_um: float, out_px: int) -> np.ndarray:
    """The centred crop with the part beyond the image filled by the image's glass colour (median of
    its brightest fifth) instead of reflection."""
    from hemato_model.preprocessing import crop_cell

    grey = img.mean(-1)
    glass = np.median(img[grey >= np.percentile(grey, 80)], axis=0)
    side = int(np.ceil(crop_um / mpp)) + 4
    h, w = img.shape[:2]
    canvas = np.empty((max(h, side), max(w, side), 3), np.uint8)
    canvas[:] = glass.astype(np.uint8)
    y0, x0 = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = img
    return crop_cell(canvas, (x0 + w / 2.0, y0 + h / 2.0), mpp, crop_um, out_px)


def _score(clf: Any, truth: list[str], proba: np.ndarray) -> dict[str, float]:
    from hemato_model.training.evaluation import scored

    s = scored(truth, proba, clf.classes, clf.threshold, clf.classes)
    return {"accuracy": s["accuracy"], "unidentified_rate": s["unidentified_rate"]}


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import Classifier
    from hemato_model.preprocessing import crop_cell
    from hemato_model.training.blast_data import pbc_reference, reinhard_normalise
    from hemato_model.training.weight_interpolation import interpolate
    from hematovision.core.datasets import PBC_MPP, pbc_root
    from hematovision.core.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    models = Path(__file__).resolve().parents[1] / "hemato_model" / "models"
    ap.add_argument("--v1", type=Path, default=models / "wbc-effnetlite0-v1")
    ap.add_argument("--v11", type=Path, default=models / "wbc-effnetlite0-v1.1")
    ap.add_argument("--data", type=Path, default=pbc_root(load_settings().data_root))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    c0, c1 = Classifier.load(args.v1), Classifier.load(args.v11)
    split = json.loads((c1.model_dir / "split.json").read_text())
    files = split["val"]
    truth = [f.split("/")[0] for f in files]
    images = [np.asarray(Image.open(args.data / f).convert("RGB")) for f in files]

    def crops(imgs: list[np.ndarray], mpp: float = PBC_MPP) -> np.ndarray:
        return np.stack([crop_cell(im, (im.shape[1] / 2.0, im.shape[0] / 2.0), mpp, 24.0, c1.input_px) for im in imgs])

    shifted = {name: [fn(im) for im in images] for name, fn in SHIFTS.items()}
    result: dict[str, Any] = {"split": "val", "n": len(files), "soup": {}, "reinhard": {}, "padding": {}}

    w0, w1 = c0._model.get_weights(), c1._model.get_weights()
    for alpha in ALPHAS:
        c1._model.set_weights(interpolate(w0, w1, alpha))
        row: dict[str, Any] = {}
        for name, imgs in shifted.items():
            probs = [c1.predict_proba(v) for v in dihedral(crops(imgs), 8 if name == "clean" else 2)]
            counts = (1, 2, 4, 8) if name == "clean" else (1, 2)
            row[name] = {f"views_{k}": _score(c1, truth, np.mean(probs[:k], axis=0)) for k in counts}
        result["soup"][f"alpha_{alpha}"] = row
        print(f"soup alpha {alpha}: clean {row['clean']['views_1']['accuracy']}", file=sys.stderr, flush=True)
    c1._model.set_weights(w1)

    reference = pbc_reference(args.data, split["train"])
    for clf in (c0, c1):
        key = f"{clf.name} {clf.version}"
        result["reinhard"][key] = {
            name: {
                "raw": _score(clf, truth, clf.predict_proba(crops(imgs))),
                "reinhard": _score(
                    clf, truth, clf.predict_proba(crops([reinhard_normalise(im, reference) for im in imgs]))
                ),
            }
            for name, imgs in shifted.items()
        }
        result["padding"][key] = {
            f"mpp_x{f}": {
                "reflect": _score(clf, truth, clf.predict_proba(crops(images, PBC_MPP * f))),
                "glass": _score(
                    clf,
                    truth,
                    clf.predict_proba(
                        np.stack([glass_padded_crop(im, PBC_MPP * f, 24.0, clf.input_px) for im in images])
                    ),
                ),
            }
            for f in (0.75, 0.6)
        }
        print(f"reinhard/padding done for {key}", file=sys.stderr, flush=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
