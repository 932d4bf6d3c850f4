"""The cells of the synthetic smears, as transmittance sprites (float32 (S, S, 3), S odd, centred).

Red cells (pink biconcave discs with central pallor), platelets, white cells cut from the real PBC
single-cell crops (Acevedo et al. 2020, CC BY 4.0: the shared data, or the small sample packaged in
``hematovision/devtools/sample_cells``) and rescaled to the slide's µm/px, or, where neither exists,
procedural white cells. Used by :mod:`hematovision.devtools.synthetic`, which plans and
renders whole slides from them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hematovision.core.datasets import PBC_MPP

RBC_DIAMETER_UM = (7.5, 0.4)  # mean, sd
#: Diameter of the soft circular paste mask around a PBC cell, per class (µm). 26 µm for every class
#: (PBC crops span 28.8 µm): the classifier's 24 µm crop then sees mostly the cell's own real
#: surroundings, as in a real smear. With 20 µm around lymphocytes more of them went "unidentified"
#: (measured on 60 lymphocytes, seed 9: 17 unidentified at 20 µm, 15 at 26 µm; on the demo's
#: lymphocytosis slide lymphocytes 42 % -> 51 %).
WBC_MASK_UM = dict.fromkeys(
    ("lymphocyte", "erythroblast", "basophil", "neutrophil", "eosinophil", "ig", "monocyte"), 26.0
)
#: Cytoplasm margin added around the nucleus found in a PBC crop to give the cell's box (µm).
WBC_MARGIN_UM = {
    "lymphocyte": 1.0,
    "erythroblast": 1.5,
    "basophil": 2.0,
    "neutrophil": 2.5,
    "eosinophil": 2.5,
    "ig": 3.0,
    "monocyte": 3.0,
}
#: Typical cell diameters for procedural white cells (µm).
WBC_DIAMETER_UM = {
    "lymphocyte": 9.0,
    "erythroblast": 9.5,
    "basophil": 11.0,
    "neutrophil": 12.0,
    "eosinophil": 13.0,
    "ig": 14.0,
    "monocyte": 16.0,
}

GLASS_RGB = np.array([250.0, 247.0, 242.0], np.float32)
PLASMA_T = np.array([0.985, 0.935, 0.875], np.float32)  # smear background relative to glass
RBC_T = np.array([0.82, 0.72, 0.82], np.float32)  # full-thickness red cell
PLATELET_T = np.array([0.55, 0.38, 0.86], np.float32)  # blue-purple granules (as PBC platelets)
NUCLEUS_T = np.array([0.36, 0.17, 0.66], np.float32)


def centered_grid(half: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(-half, half + 1, dtype=np.float32)
    return ax[None, :], ax[:, None]


def rbc_sprite(rng: np.random.Generator, mpp: float) -> tuple[np.ndarray, float]:
    """One red-cell variant: a biconcave disc (rim, central pallor), slightly elliptic."""
    d_um = float(np.clip(rng.normal(*RBC_DIAMETER_UM), 6.6, 8.4))
    r = d_um / 2.0 / mpp
    ecc = float(rng.uniform(1.0, 1.10))
    ang = float(rng.uniform(0, math.pi))
    pallor = float(rng.uniform(0.32, 0.50))
    depth = float(rng.uniform(0.55, 0.80))
    dark = float(rng.uniform(0.85, 1.2))
    half = int(math.ceil(r * ecc)) + 1
    x, y = centered_grid(half)
    c, s = math.cos(ang), math.sin(ang)
    u = (x * c + y * s) / (r * ecc)
    v = (-x * s + y * c) / r
    rho = np.sqrt(u * u + v * v)
    edge = np.clip((1.0 - rho) * r + 0.5, 0.0, 1.0)
    thick = (1.0 - depth * np.exp(-((rho / pallor) ** 2))) * (1.0 + 0.15 * np.exp(-(((rho - 0.86) / 0.1) ** 2)))
    od = -np.log(RBC_T)[None, None, :] * (dark * thick * edge)[..., None]
    return np.exp(-od).astype(np.float32), d_um


def platelet_sprite(rng: np.random.Generator, mpp: float) -> tuple[np.ndarray, float]:
    """One platelet variant: 2–4 overlapping purple blobs with granules, 1.8–3.2 µm across."""
    d_um = float(rng.uniform(1.8, 3.2))
    r = d_um / 2.0 / mpp
    half = int(math.ceil(r * 1.3)) + 1
    x, y = centered_grid(half)
    od_map = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        bx, by = rng.normal(0, r * 0.3, 2)
        br = r * rng.uniform(0.45, 0.75)
        od_map = np.maximum(od_map, np.clip((br - np.sqrt((x - bx) ** 2 + (y - by) ** 2)) + 0.5, 0, 1))
    gran = 0.8 + 0.4 * rng.random(od_map.shape).astype(np.float32)
    od = -np.log(PLATELET_T)[None, None, :] * (od_map * gran)[..., None]
    return np.exp(-od).astype(np.float32), d_um


def soft_disc(half: int, radius: float, feather: float) -> np.ndarray:
    x, y = centered_grid(half)
    rr = np.sqrt(x * x + y * y)
    t = np.clip((radius - rr) / max(feather, 1e-3) + 0.5, 0.0, 1.0)
    out: np.ndarray = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    return out


def load_pbc(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def pbc_background(rgb: np.ndarray) -> np.ndarray:
    """The crop's own background colour: median of its brightest fifth."""
    flat = rgb[::3, ::3].reshape(-1, 3).astype(np.float32)  # a ninth of the pixels is plenty
    lum = flat.mean(axis=1)
    bg: np.ndarray = np.maximum(np.median(flat[lum >= np.percentile(lum, 80)], axis=0), 1.0)
    return bg


def pbc_cell_box_um(rgb: np.ndarray, cls: str) -> tuple[float, float, float, float]:
    """Box of the centred white cell in a PBC crop, µm relative to the crop centre.

    The nucleus (dark purple: green channel under half the background's) is segmented, the
    components near the centre kept, and the box grown by a class-typical cytoplasm margin.
    """
    from scipy import ndimage

    h, w = rgb.shape[:2]
    bg = pbc_background(rgb)
    dark = rgb[..., 1].astype(np.float32) < 0.5 * bg[1]
    labels, n = ndimage.label(dark)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    near_px = 7.0 / PBC_MPP
    box = None
    if n:
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            ys, xs = np.nonzero(labels[sl] == i)
            if ys.size < 30:
                continue
            my, mx = ys.mean() + sl[0].start, xs.mean() + sl[1].start
            if math.hypot(my - cy, mx - cx) > near_px:
                continue
            b = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
            box = b if box is None else (min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3]))
    if box is None:
        r = WBC_DIAMETER_UM[cls] / 2.0
        return (-r, -r, r, r)
    m = WBC_MARGIN_UM[cls]
    lim = WBC_MASK_UM[cls] / 2.0
    return (
        max(-lim, (box[0] - cx) * PBC_MPP - m),
        max(-lim, (box[1] - cy) * PBC_MPP - m),
        min(lim, (box[2] - cx) * PBC_MPP + m),
        min(lim, (box[3] - cy) * PBC_MPP + m),
    )


def pbc_sprite(path: Path, cls: str, mpp: float) -> np.ndarray:
    """Transmittance factor of a PBC cell at the slide's scale, faded out by a soft circular mask.

    The mask fades to nothing 13 µm from the centre, so only that disc of the image matters; where
    the square read around it reaches past the image (slides coarser than about 0.55 µm/px, or the
    packaged sample's images, cut to 26 µm), the image is extended with its own background colour.
    """
    from PIL import Image

    rgb = load_pbc(path)
    bg = pbc_background(rgb)
    mask_um = WBC_MASK_UM[cls]
    half = int(math.ceil(mask_um / 2.0 / mpp)) + 2
    size = 2 * half + 1
    # crop a square of `size` slide pixels around the crop centre, at PBC resolution
    side_src = size * mpp / PBC_MPP
    pad = max(0, math.ceil((side_src - min(rgb.shape[:2])) / 2.0) + 1)
    if pad:  # the square reaches past the image (coarse mpp, or a cut image): extend it with its background
        grown = np.empty((rgb.shape[0] + 2 * pad, rgb.shape[1] + 2 * pad, 3), np.uint8)
        grown[:] = np.round(bg).astype(np.uint8)
        grown[pad:-pad, pad:-pad] = rgb
        rgb = grown
    h, w = rgb.shape[:2]
    cx, cy = w / 2.0, h / 2.0
    box = (cx - side_src / 2, cy - side_src / 2, cx + side_src / 2, cy + side_src / 2)
    img = Image.fromarray(rgb).resize(
        (size, size),
        Image.Resampling.LANCZOS if side_src > size else Image.Resampling.BICUBIC,
        box=box,
    )
    t = np.clip(np.asarray(img, np.float32) / bg[None, None, :], 0.0, 1.0)
    m = soft_disc(half, mask_um / 2.0 / mpp - 1.0 / mpp, 2.0 / mpp)[..., None]
    factor: np.ndarray = (1.0 + m * (t - 1.0)).astype(np.float32)
    return factor


def procedural_wbc(cls: str, rng: np.random.Generator, mpp: float) -> tuple[np.ndarray, float]:
    """A drawn white cell (transmittance) of the given class; returns (sprite, diameter µm)."""
    d_um = WBC_DIAMETER_UM[cls] * float(rng.uniform(0.92, 1.08))
    r = d_um / 2.0 / mpp
    half = int(math.ceil(r)) + 2
    x, y = centered_grid(half)
    body = soft_disc(half, r, 1.0)
    cyto_t = {
        "neutrophil": (0.93, 0.86, 0.90),
        "eosinophil": (0.90, 0.72, 0.70),
        "basophil": (0.80, 0.72, 0.88),
        "lymphocyte": (0.78, 0.80, 0.95),
        "monocyte": (0.86, 0.84, 0.92),
        "ig": (0.88, 0.80, 0.90),
        "erythroblast": (0.80, 0.74, 0.84),
    }[cls]
    nuc = np.zeros_like(body)

    def blob(bx: float, by: float, rx: float, ry: float, ang: float) -> np.ndarray:
        c, s = math.cos(ang), math.sin(ang)
        u = ((x - bx) * c + (y - by) * s) / max(rx, 0.5)
        v = (-(x - bx) * s + (y - by) * c) / max(ry, 0.5)
        rho = np.sqrt(u * u + v * v)
        return np.clip((1.0 - rho) * min(rx, ry) + 0.5, 0.0, 1.0).astype(np.float32)

    a0 = float(rng.uniform(0, 2 * math.pi))
    if cls in ("neutrophil", "eosinophil"):
        lobes = int(rng.integers(3, 5)) if cls == "neutrophil" else 2
        for k in range(lobes):
            ang = a0 + 2 * math.pi * k / lobes + rng.normal(0, 0.25)
            dist = r * 0.42
            nuc = np.maximum(nuc, blob(dist * math.cos(ang), dist * math.sin(ang), r * 0.28, r * 0.22, ang))
        # thin bridges between lobes
        nuc = np.maximum(nuc, 0.6 * blob(0, 0, r * 0.35, r * 0.08, a0))
    elif cls == "monocyte":
        nuc = blob(r * 0.1 * math.cos(a0), r * 0.1 * math.sin(a0), r * 0.62, r * 0.45, a0)
        nuc = nuc * (1.0 - blob(r * 0.55 * math.cos(a0), r * 0.55 * math.sin(a0), r * 0.3, r * 0.3, a0))
    elif cls == "lymphocyte":
        nuc = blob(r * 0.08 * math.cos(a0), r * 0.08 * math.sin(a0), r * 0.78, r * 0.74, a0)
    elif cls == "erythroblast":
        nuc = blob(0, 0, r * 0.55, r * 0.55, 0.0) * 1.3
    elif cls == "ig":
        nuc = blob(r * 0.25 * math.cos(a0), r * 0.25 * math.sin(a0), r * 0.55, r * 0.42, a0)
    elif cls == "basophil":
        nuc = blob(0, 0, r * 0.5, r * 0.4, a0) * 0.7
    tex = 0.75 + 0.5 * rng.random(body.shape).astype(np.float32)
    od = -np.log(np.array(cyto_t, np.float32))[None, None, :] * body[..., None]
    od += -np.log(NUCLEUS_T)[None, None, :] * (np.minimum(nuc, 1.3) * body * tex)[..., None]
    if cls in ("eosinophil", "basophil", "ig"):
        gran_t = {"eosinophil": (0.80, 0.50, 0.42), "basophil": (0.35, 0.22, 0.55), "ig": (0.80, 0.65, 0.80)}[cls]
        dots = (rng.random(body.shape) < (0.35 if cls != "ig" else 0.15)).astype(np.float32)
        od += -np.log(np.array(gran_t, np.float32))[None, None, :] * (dots * body)[..., None]
    return np.exp(-od).astype(np.float32), d_um
