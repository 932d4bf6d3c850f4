"""Blast training/evaluation crops from the ALL field images (Aria/Ghaderzadeh 2021, ``aria_all``).

The ALL set holds 224×224 smear *fields* with an image-level label (Benign = hematogones; Early /
Pre / Pro = B-ALL lymphoblast subtypes), no cell boxes, no µm/px and a scale-bar mark in the
bottom-right corner. This module turns it into single-cell crops that look, in scale and colour,
like every other source the classifier sees:

1. **Mask the scale bar first** (:func:`mask_scale_bar`): the corner box is filled with the median
   colour of a band of pixels around it (local background), so neither the detector nor the
   network can see the mark (a per-class shortcut: its colour differs between classes).
2. **Scale.** µm/px is estimated per field from red-cell diameter
   (:func:`hemato_model.detection.estimate_mpp`, 7.5 µm red cells). The fields differ in zoom
   (Early-B fields about 0.27, Pro-B fields about 0.5 µm/px); an estimate that fails or falls
   outside ``PLAUSIBLE_MPP`` (pale red cells on yellow glass are missed and read as 3× too fine)
   is replaced by the median of the set's plausible estimates (a third of the 1,200 fields). Every
   estimate and the value used are recorded in ``split.json``.
3. **Colour** (:func:`reinhard_normalise`): Reinhard et al., "Color transfer between images",
   *IEEE CG&A* 21(5):34–41, 2001 — each field's per-channel mean and standard deviation in CIE
   L*a*b* are matched to those of PBC reference images, removing most of the per-class
   camera/stain difference that a network could otherwise learn instead of morphology.
4. **Cells.** White cells are found by :func:`hemato_model.detection.detect_cells`
   (``kinds=("wbc",)``) and cut at the model's ``crop_um`` around the box centre
   (:func:`hemato_model.preprocessing.crop_cell`), exactly as on a slide. Cells whose centre lies
   closer than ``EDGE_MARGIN_UM`` to the border are skipped (mostly cut off).
5. **Labels.** Every white cell of an Early/Pre/Pro field → ``blast``; of a Benign field →
   ``lymphocyte`` (hematogones are benign lymphoid precursors and look like lymphocytes or
   blasts: calling them ``lymphocyte`` teaches the network the hard negative it must not flag).
   Labels are per field, so a normal neutrophil in a leukaemic field would be mislabelled; an
   optional clean-up (``drop_by``) removes cells another model confidently calls a granulocyte
   or a platelet.
6. **Split by field group.** There are no patient IDs, and consecutive file numbers are often the
   same field shifted by a few pixels, so fields are grouped in blocks of ``GROUP_SIZE`` consecutive
   files of one class, and the blocks (not the cells, not single fields) are split
   train/val/test with a fixed seed. The split lists fields and crops (``split.json``).

Crops are written under the output folder (``var/``: derived data stay out of git) as
``<class>/<field stem>_c<k>.png`` at ``input_px`` pixels = ``crop_um`` µm, i.e. already at model
scale (``mpp = crop_um / input_px`` reads them back unchanged). The command is
``hematovision prepare-blast-data ALL_ROOT OUT_DIR --pbc PBC_DIR --split V1_SPLIT``.

The licence of the ALL set is unverified: research/evaluation only until it is checked.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from hemato_model.detection import detect_cells, estimate_mpp
from hemato_model.preprocessing import DEFAULT_CROP_UM, DEFAULT_INPUT_PX, crop_cell

if TYPE_CHECKING:
    from hemato_model.classifier import Classifier

log = logging.getLogger(__name__)

#: Image-level class of the ALL set -> model class of every white cell in it.
LABEL_MAP = {"Early": "blast", "Pre": "blast", "Pro": "blast", "Benign": "lymphocyte"}
#: The scale-bar mark: (width, height) of the masked box at the bottom-right, as a fraction of
#: the 224-px field (the mark spans about x 190-220, y 203-218).
SCALE_BAR_BOX = (40 / 224, 26 / 224)
#: µm/px estimates outside this range are replaced by the set's median (see module docstring).
PLAUSIBLE_MPP = (0.18, 0.8)
EDGE_MARGIN_UM = 3.0
GROUP_SIZE = 10
MAX_CELLS_PER_FIELD = 6


def mask_scale_bar(image: np.ndarray, box_frac: tuple[float, float] = SCALE_BAR_BOX, band_px: int = 6) -> np.ndarray:
    """Copy of ``image`` with the bottom-right scale-bar box filled with the local background.

    The fill is the per-channel median of the brighter half of a ``band_px`` band above and left
    of the box (glass, not the cells crossing the band): a flat patch, no edge, no text.
    """
    arr = np.array(image, dtype=np.uint8, copy=True)
    h, w = arr.shape[:2]
    bw, bh = int(round(box_frac[0] * w)), int(round(box_frac[1] * h))
    x0, y0 = w - bw, h - bh
    band = np.concatenate(
        [
            arr[max(0, y0 - band_px) : y0, max(0, x0 - band_px) :].reshape(-1, 3),
            arr[y0:, max(0, x0 - band_px) : x0].reshape(-1, 3),
        ]
    )
    bright = band.sum(1) >= np.median(band.sum(1))
    arr[y0:, x0:] = np.median(band[bright], axis=0).astype(np.uint8)
    return arr


def lab_stats(images: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Mean and standard deviation per CIE L*a*b* channel over a set of RGB images."""
    from skimage.color import rgb2lab

    labs = np.concatenate([rgb2lab(np.asarray(im)[..., :3]).reshape(-1, 3) for im in images])
    return {"mean": labs.mean(0).round(4).tolist(), "std": labs.std(0).round(4).tolist()}


def reinhard_normalise(image: np.ndarray, reference: dict[str, list[float]]) -> np.ndarray:
    """Match the per-channel L*a*b* mean/std of ``image`` to ``reference`` (Reinhard 2001)."""
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(np.asarray(image)[..., :3])
    mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-6
    lab = (lab - mean) / std * np.asarray(reference["std"]) + np.asarray(reference["mean"])
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    rgb = lab2rgb(lab)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def pbc_reference(pbc_dir: str | Path, files: Sequence[str], n: int = 160, seed: int = 0) -> dict[str, list[float]]:
    """L*a*b* statistics of ``n`` PBC images drawn (seeded) from ``files`` (training files only)."""
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(files), size=min(n, len(files)), replace=False).tolist())
    images = []
    for i in pick:
        with Image.open(Path(pbc_dir) / files[i]) as im:
            images.append(np.asarray(im.convert("RGB").resize((120, 121))))
    return lab_stats(images)


def field_crops(
    masked: np.ndarray,
    mpp: float,
    reference: dict[str, list[float]],
    crop_um: float = DEFAULT_CROP_UM,
    input_px: int = DEFAULT_INPUT_PX,
) -> list[np.ndarray]:
    """White-cell crops of one field whose scale bar is already masked (:func:`mask_scale_bar`).

    Cells are detected on the field as it is and cut from its colour-normalised copy, strongest
    detections first, at most ``MAX_CELLS_PER_FIELD``, none closer than ``EDGE_MARGIN_UM`` to the
    border.
    """
    norm = reinhard_normalise(masked, reference)
    h, w = masked.shape[:2]
    margin = EDGE_MARGIN_UM / mpp
    dets = [
        d
        for d in detect_cells(masked, mpp, kinds=("wbc",))
        if margin <= d.center[0] <= w - margin and margin <= d.center[1] <= h - margin
    ]
    dets = sorted(dets, key=lambda d: -d.score)[:MAX_CELLS_PER_FIELD]
    return [crop_cell(norm, d.center, mpp, crop_um, input_px) for d in dets]


@dataclass
class Field:
    """One ALL field: file, image-level class, model label and split group."""

    path: Path
    rel: str
    source_class: str
    label: str
    group: str


def list_fields(all_root: str | Path) -> list[Field]:
    """The fields of ``manifest.csv`` (or the class folders), grouped in consecutive-file blocks."""
    root = Path(all_root)
    rows: list[tuple[str, str]] = []
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as fh:
            rows = [(r["path"], r["class"]) for r in csv.DictReader(fh)]
    else:
        for sub in sorted((root / "images").iterdir()):
            rows += [(f"images/{sub.name}/{f.name}", sub.name) for f in sorted(sub.glob("*.jpg"))]
    fields: list[Field] = []
    by_class: dict[str, list[str]] = {}
    for rel, cls in rows:
        if cls in LABEL_MAP:
            by_class.setdefault(cls, []).append(rel)
    for cls, rels in sorted(by_class.items()):
        for k, rel in enumerate(sorted(rels)):
            fields.append(Field(root / rel, rel, cls, LABEL_MAP[cls], f"{cls}-{k // GROUP_SIZE:03d}"))
    return fields


def split_groups(fields: Sequence[Field], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """group -> "train"/"val"/"test", stratified by source class, with a fixed seed."""
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for cls in sorted({f.source_class for f in fields}):
        groups = sorted({f.group for f in fields if f.source_class == cls})
        groups = [groups[i] for i in rng.permutation(len(groups))]
        n_test = max(1, int(round(len(groups) * test_fraction)))
        n_val = max(1, int(round(len(groups) * val_fraction)))
        for i, g in enumerate(groups):
            out[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def build_blast_crops(
    all_root: str | Path,
    out_dir: str | Path,
    reference: dict[str, list[float]],
    crop_um: float = DEFAULT_CROP_UM,
    input_px: int = DEFAULT_INPUT_PX,
    seed: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    drop_by: Callable[[np.ndarray], list[bool]] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Write the crops and ``split.json`` under ``out_dir``; return the split document.

    Args:
        all_root: the ``aria_all`` folder (``manifest.csv`` + ``images/<class>/``).
        out_dir: output folder (under ``var/``).
        reference: L*a*b* statistics the fields are normalised to (:func:`pbc_reference`).
        drop_by: optional filter: crops -> True for crops to leave out (label clean-up).
        limit: at most this many fields per source class (quick runs, tests).
    """
    out = Path(out_dir)
    fields = list_fields(all_root)
    if limit:
        kept: list[Field] = []
        for cls in sorted({f.source_class for f in fields}):
            kept += [f for f in fields if f.source_class == cls][:limit]
        fields = kept
    group_part = split_groups(fields, seed, val_fraction, test_fraction)
    images: list[np.ndarray] = []
    estimates: list[float | None] = []
    for f in fields:
        with Image.open(f.path) as im:
            arr = mask_scale_bar(np.asarray(im.convert("RGB")))
        images.append(arr)
        try:
            estimates.append(float(estimate_mpp(arr)))
        except ValueError:
            estimates.append(None)
    plausible = [m for m in estimates if m is not None and PLAUSIBLE_MPP[0] <= m <= PLAUSIBLE_MPP[1]]
    median_mpp = float(np.median(plausible)) if plausible else 0.3
    doc: dict[str, Any] = {
        "source": str(all_root),
        "seed": seed,
        "group_size": GROUP_SIZE,
        "fractions": {"val": val_fraction, "test": test_fraction},
        "crop_um": crop_um,
        "input_px": input_px,
        "label_map": LABEL_MAP,
        "scale_bar_box_frac": list(SCALE_BAR_BOX),
        "plausible_mpp": list(PLAUSIBLE_MPP),
        "median_mpp": round(median_mpp, 4),
        "colour_reference_lab": reference,
        "fields": [],
        "train": [],
        "val": [],
        "test": [],
        "dropped": [],
    }
    for f, arr, est in zip(fields, images, estimates, strict=True):
        fallback = est is None or not PLAUSIBLE_MPP[0] <= est <= PLAUSIBLE_MPP[1]
        mpp = median_mpp if est is None or fallback else est
        crops = field_crops(arr, mpp, reference, crop_um, input_px)
        drop = drop_by(np.stack(crops)) if (drop_by and crops) else [False] * len(crops)
        part = group_part[f.group]
        names = []
        for k, (crop, gone) in enumerate(zip(crops, drop, strict=True)):
            name = f"{f.label}/{f.path.stem}_c{k}.png"
            if gone:
                doc["dropped"].append(name)
                continue
            (out / f.label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(out / name)
            doc[part].append(name)
            names.append(name)
        doc["fields"].append(
            {
                "field": f.rel,
                "class": f.source_class,
                "label": f.label,
                "group": f.group,
                "part": part,
                "mpp_estimate": None if est is None else round(est, 4),
                "mpp_used": round(mpp, 4),
                "mpp_fallback": fallback,
                "crops": names,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps(doc, indent=1) + "\n")
    log.info(
        "%d fields -> %d crops (%d dropped), median %.3f µm/px",
        len(fields),
        sum(len(doc[p]) for p in ("train", "val", "test")),
        len(doc["dropped"]),
        median_mpp,
    )
    return doc


#: Classes that no blast or hematogone should be called: cells a model calls one of them with
#: probability >= ``CLEAN_MIN_PROBABILITY`` are mislabelled by the per-field labels (clean-up).
CLEAN_CLASSES = ("neutrophil", "eosinophil", "basophil", "platelet")
CLEAN_MIN_PROBABILITY = 0.9


def drop_by_classifier(
    clf: Classifier, min_probability: float = CLEAN_MIN_PROBABILITY
) -> Callable[[np.ndarray], list[bool]]:
    """A ``drop_by`` for :func:`build_blast_crops`: True for crops ``clf`` calls a granulocyte or a
    platelet (``CLEAN_CLASSES``) with probability at least ``min_probability``."""
    drop_idx = [clf.classes.index(c) for c in CLEAN_CLASSES if c in clf.classes]

    def drop_by(crops: np.ndarray) -> list[bool]:
        if not drop_idx:
            return [False] * len(crops)
        proba = clf.predict_proba(crops)
        return [bool(proba[i, drop_idx].max() >= min_probability) for i in range(len(crops))]

    return drop_by


def rebuild_field_crops(
    doc: dict[str, Any], all_root: str | Path, part: str = "test", source_classes: Sequence[str] | None = None
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Recut the crops of one part of a blast ``split.json`` from the ALL images themselves.

    Uses the recorded µm/px, colour reference and kept crop names, so the crops are those of
    :func:`build_blast_crops` (within 1-2 grey levels: the recorded µm/px is rounded to 4 digits)
    without needing its output folder (e.g. in tests and benchmarks).
    Returns (field record, crops (K, input_px, input_px, 3)) for every field with kept crops.
    """
    out = []
    for f in doc["fields"]:
        if f["part"] != part or not f["crops"] or (source_classes and f["class"] not in source_classes):
            continue
        with Image.open(Path(all_root) / f["field"]) as im:
            arr = mask_scale_bar(np.asarray(im.convert("RGB")))
        crops = field_crops(
            arr, float(f["mpp_used"]), doc["colour_reference_lab"], float(doc["crop_um"]), int(doc["input_px"])
        )
        stem = Path(f["field"]).stem
        keep = [k for k in range(len(crops)) if f"{f['label']}/{stem}_c{k}.png" in set(f["crops"])]
        out.append((f, np.stack([crops[k] for k in keep])))
    return out
