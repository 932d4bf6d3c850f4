"""Real red cells for synthetic slides: cut from the labelled Chula RBC-12 fields (MIT), by class.

``make-slide --rbc-mix schistocyte=5,target=10`` places red cells of chosen morphologies: every red
cell of such a slide is a real, labelled cell of the shared set (``normal`` for the rest of the
mix), so the pipeline's red-cell percentages can be checked against the manifest. Only fields of
the red-cell model's **test split** are used (``split.json`` beside the model, listing fields), so an
end-to-end test never measures the model on cells it was trained or tuned on.

A cell is cut as a *transmittance* sprite, as the slide renderer composes cells (Beer-Lambert:
overlapping cells multiply): the field divided by its glass colour (the brightest decile of the
field per channel), kept inside the cell's own outline (the connected stained region at the
labelled centre, cut to the ellipse of the box the red-cell detector finds around that centre, so
a touching neighbour is not carried along; softened by one pixel) and 1 (clear) outside, then
resampled from the set's scale to the slide's.
The set's scale is the one the red-cell model was trained at (its ``model.json``:
``preprocessing.scale.mpp``, 0.167 µm/px estimated from red-cell diameters), so a placed cell has
the physical size the model expects.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Classes of the set that a mix may name (the model's 13 classes).
MAX_RADIUS_UM = 5.5
#: Cells per class kept in the sprite bank (each is used many times on a large slide).
PER_CLASS_MAX = 60


@dataclass
class RbcBank:
    """Sprites by class, their sources, and where they came from."""

    sprites: dict[str, list[np.ndarray]]
    sources: dict[str, list[str]]
    set_mpp: float
    split: str
    data_dir: Path


def chula_root(data_root: Path) -> Path:
    """The Chula RBC-12 folder below the shared data root (``data/chula_rbc``, or ``chula_rbc``)."""
    for cand in (data_root / "data" / "chula_rbc", data_root / "chula_rbc"):
        if (cand / "images").is_dir():
            return cand
    return data_root / "data" / "chula_rbc"


def parse_rbc_mix(text: str, classes: tuple[str, ...]) -> dict[str, float]:
    """``schistocyte=5,target=10`` -> percentages; the rest is ``normal``.

    Raises:
        ValueError: an unknown class, a bad number, or percentages over 100.
    """
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in classes:
            raise ValueError(f"{part!r}: expected CLASS=PERCENT with CLASS one of {', '.join(classes)}")
        try:
            pct = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: {value!r} is not a number") from None
        if not (0 <= pct <= 100 and math.isfinite(pct)):
            raise ValueError(f"{part!r}: a percentage must lie in 0..100")
        mix[name] = mix.get(name, 0.0) + pct
    total = sum(mix.values())
    if total > 100 + 1e-9:
        raise ValueError(f"the red-cell mix adds up to {total:g} %, more than 100 %")
    if "normal" not in mix or total < 100:
        mix["normal"] = mix.get("normal", 0.0) + 100.0 - total
    return {k: v for k, v in mix.items() if v > 0}


def _cell_sprite(
    field: np.ndarray, glass: np.ndarray, x: float, y: float, set_mpp: float, boxes: np.ndarray
) -> np.ndarray | None:
    """Transmittance sprite (odd side, centred) of the cell at (x, y) of a field, at ``set_mpp``;
    ``boxes``: the red cells the detector finds in the field (the watershed splits touching cells),
    whose box around (x, y) bounds the cell, so no piece of a neighbour is carried along."""
    from scipy import ndimage as ndi

    inside = (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3]) if len(boxes) else []
    if not np.any(inside):
        return None
    cand = boxes[np.asarray(inside)]
    bx0, by0, bx1, by1 = cand[np.argmin(np.hypot((cand[:, 0] + cand[:, 2]) / 2 - x, (cand[:, 1] + cand[:, 3]) / 2 - y))]

    r = int(math.ceil(MAX_RADIUS_UM / set_mpp))
    h, w = field.shape[:2]
    xi, yi = int(round(x)), int(round(y))
    if xi - r < 0 or yi - r < 0 or xi + r + 1 > w or yi + r + 1 > h:
        return None  # cut by the field's border
    win = field[yi - r : yi + r + 1, xi - r : xi + r + 1].astype(np.float32)
    t = np.clip(win / glass[None, None, :], 1e-3, 1.0)
    od = -np.log10(t[..., 1])
    # a low threshold and a 2-px rim: the pale outer edge of a normal cell is part of its look
    stained = od > max(0.03, 0.15 * float(np.percentile(od, 90)))
    stained = ndi.binary_dilation(ndi.binary_fill_holes(ndi.binary_closing(stained, iterations=1)), iterations=2)
    lab, _ = ndi.label(stained)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = xx * xx + yy * yy <= r * r
    # the detected cell's box as an ellipse (1 px margin), in window coordinates
    ex, ey = (bx0 + bx1) / 2 - xi, (by0 + by1) / 2 - yi
    ax, ay = max(1.0, (bx1 - bx0) / 2 + 3), max(1.0, (by1 - by0) / 2 + 3)
    disc &= ((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 <= 1.0
    # the component at (or nearest to) the centre
    ids = lab[max(0, r - 3) : r + 4, max(0, r - 3) : r + 4]
    ids = ids[ids > 0]
    if ids.size == 0:
        return None
    mask = (lab == int(np.bincount(ids).argmax())) & disc
    soft = ndi.gaussian_filter(mask.astype(np.float32), 0.7)
    return (1.0 + soft[..., None] * (t - 1.0)).astype(np.float32)


def _resample(sprite: np.ndarray, factor: float) -> np.ndarray:
    """Resample a transmittance sprite by ``factor`` (set µm/px / slide µm/px) to an odd side."""
    side = max(3, int(round(sprite.shape[0] * factor)) | 1)
    chans = [
        np.asarray(Image.fromarray(sprite[..., c]).resize((side, side), Image.Resampling.BILINEAR)) for c in range(3)
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def load_rbc_bank(
    data_root: Path,
    classes: list[str],
    slide_mpp: float,
    *,
    model_dir: Path,
    seed: int = 0,
    per_class: int = PER_CLASS_MAX,
    split: str = "test",
) -> RbcBank:
    """Sprites of up to ``per_class`` labelled cells of each class, from the model's test fields
    (``split="val"``: its validation fields, for tuning without touching the test cells).

    Raises:
        ValueError: the set or the split is missing, or a class has no cell in the test fields.
    """
    from hemato_model.detection import detect_cells
    from hemato_model.rbc.data import RBC_CLASSES, mask_overlay, read_field_image, read_labels

    root = chula_root(Path(data_root))
    if not (root / "images").is_dir():
        raise ValueError(f"no Chula RBC-12 images under {root} (needed for --rbc-mix)")
    split_path, meta_path = model_dir / "split.json", model_dir / "model.json"
    if not split_path.is_file():
        raise ValueError(f"{model_dir}: no split.json to choose held-out fields from")
    if split not in ("test", "val"):
        raise ValueError(f"red cells come from the model's test or val fields, not {split!r}")
    fields = [str(f) for f in json.loads(split_path.read_text())[split]]
    set_mpp = float(json.loads(meta_path.read_text())["preprocessing"]["scale"]["mpp"])
    wanted = {RBC_CLASSES.index(c): c for c in classes}
    found: dict[str, list[tuple[str, float, float]]] = {c: [] for c in classes}
    for name in fields:
        lab = root / "labels" / f"{name}.txt"
        if not lab.is_file():
            continue
        for x, y, k in read_labels(lab):
            if k in wanted:
                found[wanted[k]].append((name, x, y))
    rng = np.random.default_rng([seed, 17])
    sprites: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    sources: dict[str, list[str]] = {c: [] for c in classes}
    cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    factor = set_mpp / slide_mpp
    for c in classes:
        pool = found[c]
        for i in rng.permutation(len(pool)):
            if len(sprites[c]) >= per_class:
                break
            name, x, y = pool[int(i)]
            if name not in cache:
                img = mask_overlay(read_field_image(next((root / "images").glob(f"{name}.*"))))
                glass = np.percentile(img.reshape(-1, 3).astype(np.float32), 95, axis=0).clip(1.0, 255.0)
                boxes = np.array([d.bbox for d in detect_cells(img, set_mpp, kinds=("rbc",))], float).reshape(-1, 4)
                cache[name] = (img, glass, boxes)
            img, glass, boxes = cache[name]
            s = _cell_sprite(img, glass, x, y, set_mpp, boxes)
            if s is None:
                continue
            sprites[c].append(_resample(s, factor))
            sources[c].append(f"chula_rbc/images/{name}.jpg@{x:g},{y:g}")
        if not sprites[c]:
            raise ValueError(f"no {c} cell could be cut from the {split} fields of {root}")
    return RbcBank(sprites, sources, set_mpp, split, root)
