"""A simulated lab whose stain and scanner differ from PBC, for the lab fine-tuning test and evidence.

PBC cells the shipped model never trained on (its ``split.json`` test split, optionally plus its
validation split) get a strong, fixed stain shift in optical-density space (Ruifrok & Johnston's
HED deconvolution: more haematoxylin, less eosin, a blue-violet cast, beyond the training
augmentation's ±15 % jitter) and are re-sampled to another scanner's scale (0.1 µm/px instead of
0.08), then written like ``hematovision dataset export`` writes reviewed cells: one folder per
class, ``manifest.csv`` with a slide hash per group of cells.

The test split is divided **by image** into three parts: ``lab_train`` and ``lab_held_out`` (the
lab's cells, shifted) and ``pbc_test`` (left unshifted and untouched: the PBC figure of
``validate-model`` is measured on these only, so the new model never saw a shifted copy of a cell it
is tested on; ``pbc_excluded.txt`` lists the test files the lab used). Demo/test tool only.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hemato_model.training.lab_finetune import cap_per_class

LAB_MPP = 0.10
CROP_UM = 24.0
PBC_MPP = 0.08

_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def stain_shift(rgb: np.ndarray, h_gain: float = 2.0, e_gain: float = 0.35, cast: float = 0.18) -> np.ndarray:
    """The lab's stain: haematoxylin × ``h_gain``, eosin × ``e_gain`` and a blue-violet optical
    density cast on the background, in HED optical-density space."""
    x = rgb.astype(np.float64)
    od = -np.log((x + 1.0) / 256.0)
    hed = od @ _HED_FROM_RGB
    hed[..., 0] *= h_gain
    hed[..., 1] *= e_gain
    od2 = hed @ _RGB_FROM_HED + np.array([cast, cast * 0.6, 0.0])
    return np.clip(256.0 * np.exp(-od2) - 1.0, 0, 255).astype(np.uint8)


def lab_crop(path: Path) -> np.ndarray:
    """A PBC image as the lab's scanner would cut it: 24 µm around the centre at 0.1 µm/px, stain-shifted."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    h, w = arr.shape[:2]
    side = CROP_UM / PBC_MPP
    box = (w / 2 - side / 2, h / 2 - side / 2, w / 2 + side / 2, h / 2 + side / 2)
    out_px = int(round(CROP_UM / LAB_MPP))
    img = Image.fromarray(arr).resize((out_px, out_px), Image.Resampling.BILINEAR, box=box)
    return stain_shift(np.asarray(img))


def _write(out: Path, files: list[str], pbc_root: Path, cells_per_slide: int, tag: str) -> int:
    out.mkdir(parents=True)
    rows = []
    for i, f in enumerate(files):
        cls = f.split("/")[0]
        slide = hashlib.sha256(f"{tag}:{i // cells_per_slide}".encode()).hexdigest()[:16]
        rel = f"{cls}/{slide}_{i:05d}.png"
        (out / cls).mkdir(exist_ok=True)
        Image.fromarray(lab_crop(pbc_root / f)).save(out / rel)
        rows.append({"file": rel, "class": cls, "slide": slide, "mpp": LAB_MPP, "crop_um": CROP_UM, "source": f})
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def build_stain_lab(
    pbc_root: Path,
    split_json: Path,
    out: Path,
    *,
    seed: int = 7,
    per_class: int | None = None,
    fractions: tuple[float, float] = (0.3, 0.2),
    use_val: bool = False,
    cells_per_slide: int = 12,
) -> dict[str, Any]:
    """Write ``out/lab_train``, ``out/lab_held_out`` and ``out/pbc_excluded.txt``.

    Args:
        pbc_root: the PBC image folder.
        split_json: the shipped model's split.json (its test files are the only PBC cells used,
            plus its validation files in ``lab_train`` when ``use_val``).
        per_class: at most this many test files per class are considered.
        fractions: (lab_train, lab_held_out) shares of each class's test files; the rest stays as
            the unshifted PBC test.
    """
    split = json.loads(split_json.read_text())
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for f in split["test"]:
        by_class.setdefault(f.split("/")[0], []).append(f)
    train, held = [], []
    for _cls, files in sorted(by_class.items()):
        files = [files[i] for i in rng.permutation(len(files))]
        n = len(files)
        n_tr, n_ho = int(round(n * fractions[0])), int(round(n * fractions[1]))
        train += files[:n_tr]
        held += files[n_tr : n_tr + n_ho]
    if per_class:
        train = cap_per_class(train, per_class)
        held = cap_per_class(held, per_class)
    if use_val:
        train += split["val"]
    shuffled = [train[i] for i in rng.permutation(len(train))]
    excluded = sorted(f for f in train + held if f in set(split["test"]))
    (out).mkdir(parents=True, exist_ok=True)
    n_train = _write(out / "lab_train", shuffled, pbc_root, cells_per_slide, "train")
    n_held = _write(out / "lab_held_out", held, pbc_root, cells_per_slide, "held")
    (out / "pbc_excluded.txt").write_text("\n".join(excluded) + "\n")
    return {"lab_train": n_train, "lab_held_out": n_held, "pbc_test_excluded": len(excluded)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pbc", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--use-val", action="store_true")
    ap.add_argument("--train-fraction", type=float, default=0.3)
    ap.add_argument("--held-fraction", type=float, default=0.2)
    args = ap.parse_args()
    print(
        json.dumps(
            build_stain_lab(
                args.pbc,
                args.split,
                args.out,
                per_class=args.per_class,
                fractions=(args.train_fraction, args.held_fraction),
                use_val=args.use_val,
            )
        )
    )


if __name__ == "__main__":
    main()
