"""Synthetic blood-smear whole-slide images with a ground-truth manifest, built from real PBC cells.

No openly licensed whole-slide blood smear exists in the shared data, so slides for the pipeline,
the demo and the tests are composed: a pale glass background; a smear area (a feathered ellipse
covering most of the slide, thicker on the left, thinning to the right, so "choose the evaluable
area" has something to find); red cells drawn as pink biconcave discs with central pallor
(7.5 ± 0.4 µm, jittered on a grid so that some touch); small purple platelets; and white cells cut
from the real PBC single-cell crops (Acevedo et al. 2020, CC BY 4.0; ``datasets.PBC_MPP`` µm/px),
rescaled to the slide's µm/px and pasted with a soft circular mask of 20–24 µm centred on the crop
(the cell is centred in PBC crops). Where the shared data hold no PBC images, the white cells come
from the small sample of PBC cells packaged with HematoVision (:mod:`hematovision.devtools.sample_build`:
40 per class, source ``"pbc-sample"``), so a fresh clone still gets real cells; only if that sample
is missing too are white cells drawn procedurally (lobed, kidney-shaped or round purple nuclei by
class). The manifest says which source was used. The cells
themselves are drawn by :mod:`hematovision.devtools.cell_sprites`; this module plans and renders slides.

Optics: everything is composed in transmittance (Beer–Lambert): pixel = glass light × plasma ×
Π cell transmittances. Overlapping red cells therefore darken where they overlap, as in a real
smear, and the product does not depend on drawing order, so a tile rendered alone is identical to
the same pixels rendered as part of any other tile. A PBC crop is turned into a transmittance by
dividing by its own background colour, so it blends into the synthetic plasma without a seam.

Scale: all cell placement is planned up front from the seed (numpy arrays, a few bytes per cell),
then tiles are rendered on demand from a spatial index, so 40k×40k or 80k×80k slides are written
with flat memory by ``slide_writer.write_pyramid``. The manifest is streamed to disk.

Manifest (``<slide>.manifest.json``): ``{"mpp", "width", "height", "format", "source", "source_root",
"seed", "cells": [{"kind", "class", "center", "bbox", "source_file"}], "counts": {"wbc", "rbc",
"platelets"}, "differential": {class: count}, ...}``. ``source`` is ``"pbc"`` (the shared data),
``"pbc-sample"`` (the packaged sample) or ``"procedural"``; a white cell's ``source_file`` is
relative to ``source_root`` (the data root, or the sample's folder). Coordinates are level-0 pixels; ``bbox`` is
``[x0, y0, x1, y1]`` (exclusive end) of the cell itself (for PBC cells: the nucleus found in the crop,
grown by a class-typical cytoplasm margin), not of the paste mask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hematovision.core.datasets import have_pbc, pbc_root
from hematovision.devtools import sample_build
from hematovision.devtools.cell_sprites import (
    GLASS_RGB,
    PLASMA_T,
    RBC_DIAMETER_UM,
    WBC_MASK_UM,
    load_pbc,
    pbc_cell_box_um,
    pbc_sprite,
    platelet_sprite,
    procedural_wbc,
    rbc_sprite,
)

logger = logging.getLogger(__name__)

#: Normal adult differential (fractions of white cells) used when no mix is given.
DEFAULT_WBC_MIX: dict[str, float] = {
    "neutrophil": 0.55,
    "lymphocyte": 0.30,
    "monocyte": 0.07,
    "eosinophil": 0.03,
    "ig": 0.02,
    "erythroblast": 0.02,
    "basophil": 0.01,
}
WBC_CLASSES = tuple(DEFAULT_WBC_MIX)
SOURCES = ("auto", "pbc", sample_build.SAMPLE_SOURCE, "procedural")
#: A slide's source of white cells (the manifest's ``source``), in words for people.
SOURCE_WORDS = {
    "pbc": "real PBC cell images (shared data)",
    sample_build.SAMPLE_SOURCE: "real PBC cell images (the packaged sample, hematovision/devtools/sample_cells)",
    "procedural": "procedurally drawn cells",
}

#: Above this many cells the returned manifest leaves out red-cell entries (the file has all).
INLINE_CELLS_MAX = 200_000

_KIND_RBC, _KIND_PLT, _KIND_WBC = 0, 1, 2
_BIN_PX = 256


@dataclass
class SmearGeometry:
    """The smear area: an ellipse with a feathered edge; red-cell density falls from left to right."""

    cx: float
    cy: float
    ax: float
    ay: float
    feather: float  # relative to the radius (0..1)

    def coverage(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """0 outside the smear, 1 inside, smooth across the feathered edge (broadcasts)."""
        rho = np.sqrt(((xs - self.cx) / self.ax) ** 2 + ((ys - self.cy) / self.ay) ** 2)
        t = np.clip((1.0 - rho) / self.feather, 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    def coverage_bounds(self, x0: int, y0: int, x1: int, y1: int) -> tuple[float, float]:
        """(min, max) coverage over the box [x0, x1) × [y0, y1) (exact: rho² is separable)."""

        def term_range(a0: float, a1: float, c: float, ax: float) -> tuple[float, float]:
            lo = 0.0 if a0 <= c <= a1 else min((a0 - c) ** 2, (a1 - c) ** 2)
            hi = max((a0 - c) ** 2, (a1 - c) ** 2)
            return lo / (ax * ax), hi / (ax * ax)

        xlo, xhi = term_range(x0, x1 - 1, self.cx, self.ax)
        ylo, yhi = term_range(y0, y1 - 1, self.cy, self.ay)
        cov = self.coverage(
            np.array([math.sqrt(xhi + yhi), math.sqrt(xlo + ylo)]) * self.ax + self.cx, np.array([self.cy, self.cy])
        )
        return float(cov[0]), float(cov[1])

    def rbc_density(self, xs: np.ndarray, ys: np.ndarray, width: int) -> np.ndarray:
        """Area fraction covered by red cells: ~0.50 at the thick (left) end, ~0.30 at the thin end."""
        return self.coverage(xs, ys) * (0.50 - 0.20 * np.clip(xs / max(width, 1), 0.0, 1.0))


@dataclass
class WbcSpec:
    cls: str
    center: tuple[int, int]
    source_file: Path | None
    bbox_rel: tuple[int, int, int, int] = (0, 0, 0, 0)  # bbox relative to the centre (px)
    half_px: int = 0  # half-size of the paste sprite


@dataclass
class SmearPlan:
    """Everything needed to render any tile: deterministic from the seed."""

    width: int
    height: int
    mpp: float
    seed: int
    source: str
    geometry: SmearGeometry
    # red cells and platelets: centres, sprite variant
    rbc_xy: np.ndarray
    rbc_var: np.ndarray
    plt_xy: np.ndarray
    plt_var: np.ndarray
    wbcs: list[WbcSpec]
    rbc_sprites: list[np.ndarray]
    plt_sprites: list[np.ndarray]
    notes: list[str] = field(default_factory=list)
    wbc_requested: int = 0
    source_root: Path | None = None  # what the white cells' source files are relative to
    #: With a red-cell mix (real Chula RBC-12 cells, :mod:`hematovision.devtools.rbc_cells`): each
    #: red-cell sprite's class and source, and the mix asked for (percent).
    rbc_sprite_class: list[str] | None = None
    rbc_sprite_source: list[str] | None = None
    rbc_mix: dict[str, float] | None = None
    rbc_split: str = "test"


# --------------------------------------------------------------------------------------------------
# planning


def _allocate(mix: dict[str, float], n: int) -> dict[str, int]:
    """Split ``n`` cells over classes in proportion to ``mix`` (largest remainder, exact total)."""
    total = sum(mix.values())
    quotas = {c: n * w / total for c, w in mix.items()}
    counts = {c: int(math.floor(q)) for c, q in quotas.items()}
    rest = n - sum(counts.values())
    for c in sorted(quotas, key=lambda c: (-(quotas[c] - counts[c]), c))[:rest]:
        counts[c] += 1
    return counts


def _pbc_files(data_root: Path, classes: Sequence[str]) -> dict[str, list[Path]]:
    root = pbc_root(data_root)
    return {c: sorted((root / c).glob("*.jpg")) for c in classes}


def plan_smear(
    width: int,
    height: int,
    mpp: float = 0.25,
    n_wbc: int = 300,
    seed: int = 0,
    *,
    data_root: Path | None = None,
    source: str = "auto",
    wbc_mix: dict[str, float] | None = None,
    wbc_files: Sequence[Path] | None = None,
    rbc_mix: dict[str, float] | None = None,
    real_rbc: Any | None = None,
) -> SmearPlan:
    """Place every cell (deterministic for ``seed``); nothing is rendered yet. With ``rbc_mix``
    (percent by class) and ``real_rbc`` (:class:`hematovision.devtools.rbc_cells.RbcBank`) every red
    cell is a real cell of its class, classes allocated to the mix exactly."""
    if width < 64 or height < 64:
        raise ValueError(f"the slide must be at least 64×64 pixels, got {width}×{height}")
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"microns per pixel must be a positive number, got {mpp}")
    if not 0.02 <= mpp <= 4.0:
        raise ValueError(f"microns per pixel {mpp} is outside 0.02–4 (cells would be unresolvable)")
    if n_wbc < 0:
        raise ValueError(f"the number of white cells cannot be negative, got {n_wbc}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    mix = dict(DEFAULT_WBC_MIX if wbc_mix is None else wbc_mix)
    unknown = sorted(set(mix) - set(WBC_CLASSES))
    if unknown:
        raise ValueError(f"unknown white-cell class(es) {', '.join(unknown)}; known: {', '.join(WBC_CLASSES)}")
    if any(not (w >= 0 and math.isfinite(w)) for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError("the white-cell mix needs non-negative weights with a positive sum")
    mix = {c: w for c, w in mix.items() if w > 0}
    notes: list[str] = []

    files: dict[str, list[Path]] = {}
    source_root: Path | None = Path(data_root) if data_root is not None else None
    if wbc_files is not None:
        for f in wbc_files:
            f = Path(f)
            cls = f.parent.name
            if cls not in WBC_CLASSES:
                raise ValueError(f"{f}: its folder {cls!r} is not a white-cell class")
            files.setdefault(cls, []).append(f)
        for c in files:
            files[c].sort()
        if source == "procedural":
            raise ValueError("wbc_files were given but source is 'procedural'")
        used = "pbc"
        sample = sample_build.sample_root().resolve()
        if wbc_files and all(Path(f).resolve().is_relative_to(sample) for f in wbc_files):
            used, source_root = sample_build.SAMPLE_SOURCE, sample  # files of the packaged sample
    else:
        available = data_root is not None and have_pbc(Path(data_root))
        sample = sample_build.sample_root()
        have_sample = sample_build.have_sample(sample)
        if source == "pbc" and not available:
            raise ValueError(f"no real cell images under {pbc_root(Path(data_root or '.'))}")
        if source == sample_build.SAMPLE_SOURCE and not have_sample:
            raise ValueError(f"the packaged sample of real cells is missing from {sample}")
        if source == "pbc" or (source == "auto" and available):
            used = "pbc"
        elif source == sample_build.SAMPLE_SOURCE or (source == "auto" and have_sample):
            used = sample_build.SAMPLE_SOURCE
        else:
            used = "procedural"
        where = pbc_root(Path(data_root)) if data_root is not None else "the data root"
        if used == "pbc":
            assert data_root is not None
            files = _pbc_files(Path(data_root), list(mix))
        elif used == sample_build.SAMPLE_SOURCE:
            files = sample_build.sample_files(list(mix), sample)
            source_root = sample
            if source == "auto":
                notes.append(f"no real cell images under {where}; took real PBC cells from the packaged sample")
        elif source == "auto":
            source_root = None
            notes.append(f"no real cell images under {where} and no packaged sample at {sample}; drew procedural cells")
    if used in ("pbc", sample_build.SAMPLE_SOURCE):
        missing = [c for c in mix if not files.get(c)]
        if missing:
            notes.append(f"no images for {', '.join(missing)}; left out of the mix")
            mix = {c: w for c, w in mix.items() if files.get(c)}
        if not mix and n_wbc:
            raise ValueError("none of the requested white-cell classes has images")

    rng = np.random.default_rng([seed, 1])
    geom = SmearGeometry(cx=width / 2.0, cy=height / 2.0, ax=0.47 * width, ay=0.45 * height, feather=0.12)

    # --- white cells: rejection sampling inside the smear, masks never overlapping
    spacing = max(WBC_MASK_UM.values()) / mpp + 2
    margin = max(WBC_MASK_UM.values()) / 2.0 / mpp + 2
    wbc_xy: list[tuple[float, float]] = []
    grid: dict[tuple[int, int], list[tuple[float, float]]] = {}  # spatial hash, cell = spacing
    misses = 0
    room = margin * 2 < min(width, height)
    while room and len(wbc_xy) < n_wbc and misses < 5000:
        x, y = float(rng.uniform(margin, width - margin)), float(rng.uniform(margin, height - margin))
        rho = math.hypot((x - geom.cx) / geom.ax, (y - geom.cy) / geom.ay)
        gx_, gy_ = int(x // spacing), int(y // spacing)
        if rho > 1.0 - geom.feather or any(
            (x - px) ** 2 + (y - py) ** 2 < spacing * spacing
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for px, py in grid.get((gx_ + dx, gy_ + dy), ())
        ):
            misses += 1  # consecutive failures: the smear is full
            continue
        misses = 0
        wbc_xy.append((x, y))
        grid.setdefault((gx_, gy_), []).append((x, y))
    if len(wbc_xy) < n_wbc:
        notes.append(
            f"only {len(wbc_xy)} of {n_wbc} white cells fit without overlapping; make the slide larger for more"
        )
    counts = _allocate(mix, len(wbc_xy)) if mix else {}
    classes = [c for c, k in counts.items() for _ in range(k)]
    rng.shuffle(classes)
    picks: dict[str, list[Path]] = {}
    for c, k in counts.items():
        if used != "procedural" and k:
            pool = files[c]
            order: list[Path] = []
            while len(order) < k:  # each file once before any repeats
                order.extend(pool[i] for i in rng.permutation(len(pool)))
            picks[c] = order[:k]
    wbcs: list[WbcSpec] = []
    cursor = dict.fromkeys(counts, 0)
    for (x, y), c in zip(wbc_xy, classes, strict=True):
        src = None
        if used != "procedural":
            src = picks[c][cursor[c]]
            cursor[c] += 1
        wbcs.append(WbcSpec(c, (int(round(x)), int(round(y))), src))
    for i, w in enumerate(wbcs):
        if w.source_file is not None:
            x0, y0, x1, y1 = pbc_cell_box_um(load_pbc(w.source_file), w.cls)
            w.half_px = int(math.ceil(WBC_MASK_UM[w.cls] / 2.0 / mpp)) + 2
        else:
            _, d_um = procedural_wbc(w.cls, _wbc_rng(seed, i), mpp)
            x0 = y0 = -d_um / 2.0
            x1 = y1 = d_um / 2.0
            w.half_px = int(math.ceil(d_um / 2.0 / mpp)) + 2
        w.bbox_rel = (
            int(math.floor(x0 / mpp)),
            int(math.floor(y0 / mpp)),
            int(math.ceil(x1 / mpp)) + 1,
            int(math.ceil(y1 / mpp)) + 1,
        )

    # --- sprite banks
    srng = np.random.default_rng([seed, 2])
    rbc_bank = [rbc_sprite(srng, mpp) for _ in range(48)]
    plt_bank = [platelet_sprite(srng, mpp) for _ in range(16)]
    rbc_sprites = [s for s, _ in rbc_bank]
    plt_sprites = [s for s, _ in plt_bank]
    mean_r = RBC_DIAMETER_UM[0] / 2.0 / mpp

    # --- red cells: a jittered grid thinned to the local density (some touch, few overlap much)
    dmax = 0.55
    step = math.sqrt(math.pi * mean_r * mean_r / dmax)
    gx = np.arange(step / 2, width, step, dtype=np.float32)
    gy = np.arange(step / 2, height, step, dtype=np.float32)
    rrng = np.random.default_rng([seed, 3])
    xs = np.repeat(gx[None, :], gy.size, axis=0).ravel()
    ys = np.repeat(gy[:, None], gx.size, axis=1).ravel()
    xs = xs + rrng.uniform(-0.36 * step, 0.36 * step, xs.size).astype(np.float32)
    ys = ys + rrng.uniform(-0.36 * step, 0.36 * step, ys.size).astype(np.float32)
    keep = rrng.random(xs.size, dtype=np.float32) < geom.rbc_density(xs, ys, width) / dmax
    keep &= (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    rbc_xy = np.stack([xs[keep], ys[keep]], axis=1).round().astype(np.int32)
    del xs, ys, keep
    rbc_var: np.ndarray = rrng.integers(0, len(rbc_sprites), size=(rbc_xy.shape[0],)).astype(np.int16)
    sprite_class: list[str] | None = None
    sprite_source: list[str] | None = None
    if rbc_mix is not None and real_rbc is not None:
        mrng = np.random.default_rng([seed, 6])
        rbc_sprites, sprite_class, sprite_source, offset = [], [], [], {}
        for c in rbc_mix:
            offset[c] = len(rbc_sprites)
            rbc_sprites += real_rbc.sprites[c]
            sprite_class += [c] * len(real_rbc.sprites[c])
            sprite_source += real_rbc.sources[c]
        n_rbc = rbc_xy.shape[0]
        per_class = _allocate(rbc_mix, n_rbc)
        order = np.array([c for c, k in per_class.items() for _ in range(k)])
        mrng.shuffle(order)
        rbc_var = np.array(
            [offset[c] + int(mrng.integers(len(real_rbc.sprites[c]))) for c in order.tolist()], np.int16
        ).reshape(-1)

    # --- platelets: about one per 15 red cells, anywhere in the smear
    prng = np.random.default_rng([seed, 4])
    n_cand = int(rbc_xy.shape[0] / 15 / 0.4) + 1
    px = prng.uniform(0, width, n_cand).astype(np.float32)
    py = prng.uniform(0, height, n_cand).astype(np.float32)
    pk = prng.random(n_cand, dtype=np.float32) < geom.rbc_density(px, py, width) / 0.5 * 0.8
    plt_xy = np.stack([px[pk], py[pk]], axis=1).round().astype(np.int32)
    plt_var: np.ndarray = prng.integers(0, len(plt_sprites), size=(plt_xy.shape[0],)).astype(np.int16)

    # --- clear red cells and platelets under white cells (real white cells push them aside)
    if wbcs:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.array([w.center for w in wbcs], np.float64))
        clear = max(WBC_MASK_UM.values()) / 2.0 / mpp
        if rbc_xy.shape[0]:
            d, idx = tree.query(rbc_xy, k=1)
            radii = np.array([WBC_MASK_UM[w.cls] / 2.0 / mpp for w in wbcs])
            ok = d > radii[np.minimum(idx, len(wbcs) - 1)] * 0.85 + 0.3 * mean_r
            rbc_xy, rbc_var = rbc_xy[ok], rbc_var[ok]
        if plt_xy.shape[0]:
            d, _ = tree.query(plt_xy, k=1)
            ok = d > clear
            plt_xy, plt_var = plt_xy[ok], plt_var[ok]

    return SmearPlan(
        width=width,
        height=height,
        mpp=mpp,
        seed=seed,
        source=used,
        geometry=geom,
        rbc_xy=rbc_xy,
        rbc_var=rbc_var,
        plt_xy=plt_xy,
        plt_var=plt_var,
        wbcs=wbcs,
        rbc_sprites=rbc_sprites,
        plt_sprites=plt_sprites,
        notes=notes,
        wbc_requested=n_wbc,
        source_root=source_root if used != "procedural" else None,
        rbc_sprite_class=sprite_class,
        rbc_sprite_source=sprite_source,
        rbc_mix=dict(rbc_mix) if sprite_class is not None and rbc_mix is not None else None,
        rbc_split=str(getattr(real_rbc, "split", "test")),
    )


def _wbc_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 5, index])


# --------------------------------------------------------------------------------------------------
# rendering


class _BinIndex:
    """Items bucketed by centre into square bins (CSR layout) for tile queries."""

    def __init__(self, xy: np.ndarray, width: int, height: int) -> None:
        self.nbx = max(1, math.ceil(width / _BIN_PX))
        self.nby = max(1, math.ceil(height / _BIN_PX))
        if xy.shape[0] == 0:
            self.order = np.zeros(0, np.int64)
            self.starts = np.zeros(self.nbx * self.nby + 1, np.int64)
            return
        bx = np.clip(xy[:, 0] // _BIN_PX, 0, self.nbx - 1).astype(np.int64)
        by = np.clip(xy[:, 1] // _BIN_PX, 0, self.nby - 1).astype(np.int64)
        key = by * self.nbx + bx
        self.order = np.argsort(key, kind="stable")
        counts = np.bincount(key, minlength=self.nbx * self.nby)
        self.starts = np.concatenate([[0], np.cumsum(counts)])

    def query(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Indices of items whose centre lies in [x0, x1) × [y0, y1) (bin-granular superset)."""
        bx0, bx1 = max(0, x0 // _BIN_PX), min(self.nbx - 1, (x1 - 1) // _BIN_PX)
        by0, by1 = max(0, y0 // _BIN_PX), min(self.nby - 1, (y1 - 1) // _BIN_PX)
        if bx1 < bx0 or by1 < by0:
            return np.zeros(0, np.int64)
        parts = []
        for by in range(by0, by1 + 1):
            a = self.starts[by * self.nbx + bx0]
            b = self.starts[by * self.nbx + bx1 + 1]
            if b > a:
                parts.append(self.order[a:b])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class SmearRenderer:
    """Renders any level-0 region of a planned smear; a ``slide_writer.TileFn``."""

    def __init__(self, plan: SmearPlan, cache_size: int = 256) -> None:
        self.plan = plan
        self._rbc_index = _BinIndex(plan.rbc_xy, plan.width, plan.height)
        self._plt_index = _BinIndex(plan.plt_xy, plan.width, plan.height)
        wxy = np.array([w.center for w in plan.wbcs], np.int32).reshape(-1, 2)
        self._wbc_index = _BinIndex(wxy, plan.width, plan.height)
        self._rbc_half = max((s.shape[0] // 2 for s in plan.rbc_sprites), default=0)
        self._plt_half = max((s.shape[0] // 2 for s in plan.plt_sprites), default=0)
        self._wbc_half = max((w.half_px for w in plan.wbcs), default=0)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        trng = np.random.default_rng([plan.seed, 6])
        self._noise = trng.normal(0.0, 1.3, (512, 512, 1)).astype(np.float32)

    def _wbc_sprite(self, i: int) -> np.ndarray:
        sprite = self._cache.get(i)
        if sprite is not None:
            self._cache.move_to_end(i)
            return sprite
        w = self.plan.wbcs[i]
        if w.source_file is not None:
            sprite = pbc_sprite(w.source_file, w.cls, self.plan.mpp)
        else:
            sprite, _ = procedural_wbc(w.cls, _wbc_rng(self.plan.seed, i), self.plan.mpp)
        self._cache[i] = sprite
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return sprite

    def _noise_patch(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The fixed 512×512 noise texture, tiled over the slide, for this region."""
        ox, oy = x0 % 512, y0 % 512
        if ox + w <= 512 and oy + h <= 512:
            return self._noise[oy : oy + h, ox : ox + w]
        rows = np.arange(y0, y0 + h) % 512
        cols = np.arange(x0, x0 + w) % 512
        return np.take(np.take(self._noise, rows, axis=0), cols, axis=1)

    def __call__(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        plan = self.plan
        x1, y1 = x0 + w, y0 + h
        t = np.empty((h, w, 3), np.float32)
        cov_lo, cov_hi = plan.geometry.coverage_bounds(x0, y0, x1, y1)
        if cov_lo == cov_hi:  # wholly glass or wholly smear: no per-pixel edge
            t[:] = 1.0 + cov_lo * (PLASMA_T - 1.0)
        else:
            xs = np.arange(x0, x1, dtype=np.float32)[None, :]
            ys = np.arange(y0, y1, dtype=np.float32)[:, None]
            cov = plan.geometry.coverage(xs, ys).astype(np.float32)  # (h, w)
            np.multiply(cov[..., None], PLASMA_T - 1.0, out=t)
            t += 1.0

        def stamp(cx: int, cy: int, sprite: np.ndarray) -> None:
            half = sprite.shape[0] // 2
            ax0, ay0 = cx - half - x0, cy - half - y0
            sx0, sy0 = max(0, -ax0), max(0, -ay0)
            dx0, dy0 = max(0, ax0), max(0, ay0)
            sx1 = min(sprite.shape[1], w - ax0)
            sy1 = min(sprite.shape[0], h - ay0)
            if sx1 > sx0 and sy1 > sy0:
                t[dy0 : dy0 + sy1 - sy0, dx0 : dx0 + sx1 - sx0] *= sprite[sy0:sy1, sx0:sx1]

        m = self._rbc_half
        xy, var, sprites = plan.rbc_xy, plan.rbc_var, plan.rbc_sprites
        for j in self._rbc_index.query(x0 - m, y0 - m, x1 + m, y1 + m).tolist():
            stamp(int(xy[j, 0]), int(xy[j, 1]), sprites[var[j]])
        m = self._plt_half
        xy, var, sprites = plan.plt_xy, plan.plt_var, plan.plt_sprites
        for j in self._plt_index.query(x0 - m, y0 - m, x1 + m, y1 + m).tolist():
            stamp(int(xy[j, 0]), int(xy[j, 1]), sprites[var[j]])
        m = self._wbc_half
        for j in sorted(self._wbc_index.query(x0 - m, y0 - m, x1 + m, y1 + m).tolist()):
            cx, cy = plan.wbcs[j].center
            stamp(cx, cy, self._wbc_sprite(j))

        t *= GLASS_RGB
        t += self._noise_patch(x0, y0, w, h)
        np.clip(t, 0.0, 255.0, out=t)
        t += 0.5
        return t.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# manifest and the entry point


def manifest_path(out_path: str | os.PathLike[str]) -> Path:
    """``slide.tiff`` → ``slide.tiff.manifest.json`` (beside the slide)."""
    p = Path(out_path)
    return p.with_name(p.name + ".manifest.json")


_PBC_CITATION = "PBC dataset, Acevedo et al. 2020, Data in Brief 30:105474, CC BY 4.0"
_ATTRIBUTION = {
    "pbc": f"white cells: {_PBC_CITATION}",
    sample_build.SAMPLE_SOURCE: (
        f"white cells: {_PBC_CITATION}; HematoVision's packaged sample (cropped, re-encoded; "
        "see ATTRIBUTION.md in source_root)"
    ),
    "procedural": "procedurally drawn cells",
}


def _manifest_head(plan: SmearPlan, fmt: str, out_path: Path) -> dict[str, Any]:
    differential: dict[str, int] = {}
    for w in plan.wbcs:
        differential[w.cls] = differential.get(w.cls, 0) + 1
    g = plan.geometry
    return {
        "slide": out_path.name,
        "mpp": plan.mpp,
        "width": plan.width,
        "height": plan.height,
        "format": fmt,
        "source": plan.source,
        "source_root": str(plan.source_root) if plan.source_root is not None else None,
        "seed": plan.seed,
        "counts": {
            "wbc": len(plan.wbcs),
            "rbc": int(plan.rbc_xy.shape[0]),
            "platelets": int(plan.plt_xy.shape[0]),
        },
        "differential": dict(sorted(differential.items(), key=lambda kv: (-kv[1], kv[0]))),
        "wbc_requested": plan.wbc_requested,
        **_rbc_mix_head(plan),
        "smear_area": {
            "shape": "ellipse",
            "center": [round(g.cx, 1), round(g.cy, 1)],
            "semi_axes": [round(g.ax, 1), round(g.ay, 1)],
            "feather": g.feather,
            "note": "cells lie where coverage is high; outside the ellipse is empty glass",
        },
        "notes": list(plan.notes),
        "generator": "hematovision.devtools.synthetic",
        "attribution": _ATTRIBUTION[plan.source],
    }


def _rbc_mix_head(plan: SmearPlan) -> dict[str, Any]:
    """The manifest's red-cell mix: asked (percent) and placed (count and percent), when there is one."""
    if plan.rbc_sprite_class is None:
        return {}
    placed: dict[str, int] = {}
    for v in plan.rbc_var.tolist():
        c = plan.rbc_sprite_class[v]
        placed[c] = placed.get(c, 0) + 1
    n = max(1, int(plan.rbc_xy.shape[0]))
    return {
        "rbc_mix": {
            "requested_pct": plan.rbc_mix,
            "placed": dict(sorted(placed.items(), key=lambda kv: (-kv[1], kv[0]))),
            "placed_pct": {c: round(100.0 * k / n, 2) for c, k in sorted(placed.items())},
            "source": f"Chula RBC-12 (MIT), labelled cells of the red-cell model's {plan.rbc_split} fields only",
        }
    }


def _iter_cell_json(plan: SmearPlan, include_rbc: bool = True, as_text: bool = False) -> Iterator[Any]:
    """Manifest cell entries (dicts, or JSON text when ``as_text``: millions of red cells)."""
    for w in plan.wbcs:
        cx, cy = w.center
        bx0, by0, bx1, by1 = w.bbox_rel
        box = [max(0, cx + bx0), max(0, cy + by0), min(plan.width, cx + bx1), min(plan.height, cy + by1)]
        src = None
        if w.source_file is not None:
            src = str(w.source_file)
            if plan.source_root is not None:
                with contextlib.suppress(ValueError):  # outside source_root: keep the full path
                    src = str(Path(w.source_file).resolve().relative_to(plan.source_root.resolve()))
        cell = {"kind": "wbc", "class": w.cls, "center": [cx, cy], "bbox": box, "source_file": src}
        yield json.dumps(cell, separators=(", ", ": ")) if as_text else cell
    for kind, xy, var, sprites in (
        ("rbc", plan.rbc_xy, plan.rbc_var, plan.rbc_sprites),
        ("platelet", plan.plt_xy, plan.plt_var, plan.plt_sprites),
    ):
        if kind == "rbc" and not include_rbc:
            continue
        halves = np.array([s.shape[0] // 2 for s in sprites])
        classes = plan.rbc_sprite_class if kind == "rbc" else None
        srcs = plan.rbc_sprite_source if kind == "rbc" else None
        for (cx, cy), v in zip(xy.tolist(), var.tolist(), strict=True):
            hh = int(halves[v])
            cls = classes[v] if classes else None
            src = srcs[v] if srcs else None
            if as_text:
                yield (
                    f'{{"kind": "{kind}", "class": {json.dumps(cls)}, "center": [{cx}, {cy}], "bbox": '
                    f"[{max(0, cx - hh)}, {max(0, cy - hh)}, {min(plan.width, cx + hh + 1)}, "
                    f'{min(plan.height, cy + hh + 1)}], "source_file": {json.dumps(src)}}}'
                )
                continue
            yield {
                "kind": kind,
                "class": cls,
                "center": [cx, cy],
                "bbox": [max(0, cx - hh), max(0, cy - hh), min(plan.width, cx + hh + 1), min(plan.height, cy + hh + 1)],
                "source_file": src,
            }


def write_manifest(plan: SmearPlan, fmt: str, out_path: Path) -> Path:
    """Stream the manifest JSON beside the slide (atomic rename); returns its path."""
    target = manifest_path(out_path)
    tmp = target.with_name("." + target.name + ".part")
    head = _manifest_head(plan, fmt, out_path)
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write("{\n")
        for k, v in head.items():
            fh.write(f"  {json.dumps(k)}: {json.dumps(v)},\n")
        fh.write('  "cells": [')
        first = True
        for cell in _iter_cell_json(plan, include_rbc=True, as_text=True):
            fh.write(("\n    " if first else ",\n    ") + cell)
            first = False
        fh.write("\n  ]\n}\n")
    os.replace(tmp, target)
    return target


def make_slide(
    out_path: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | Any | None,
    width: int = 8192,
    height: int = 8192,
    mpp: float = 0.25,
    n_wbc: int = 300,
    seed: int = 0,
    fmt: str = "tiff",
    wbc_mix: dict[str, float] | None = None,
    source: str = "auto",
    wbc_files: Sequence[Path] | None = None,
    *,
    rbc_mix: dict[str, float] | None = None,
    rbc_model_dir: Path | None = None,
    rbc_split: str = "test",
    tile_px: int = 512,
    quality: int = 85,
    progress: Callable[[int], None] | None = None,
    jpeg2000_bpp: float | None = None,
) -> dict[str, Any]:
    """Compose a synthetic smear, write it as a pyramidal slide, and write its manifest beside it.

    Args:
        out_path: Slide file to write (``.tiff`` or ``.svs`` by ``fmt``).
        data_root: The shared data folder (or a ``Settings``, whose ``data_root`` is used); PBC
            cells are read below it. Without them (or None) ``"auto"`` takes the packaged sample.
        width, height: Level-0 size in pixels.
        mpp: µm per pixel at level 0 (0.25 ≈ a 40× scan).
        n_wbc: White cells to place (fewer are placed if they do not fit; see ``notes``).
        seed: Everything (placement, classes, chosen files, drawings) follows from it.
        fmt: ``"tiff"`` (generic tiled TIFF) or ``"svs"`` (Aperio-style).
        wbc_mix: Class weights, e.g. ``{"neutrophil": 60, "lymphocyte": 40}``; default
            ``DEFAULT_WBC_MIX`` (normal adult differential).
        source: ``"pbc"`` (real cells of the shared data; error if absent), ``"pbc-sample"`` (real
            cells of the packaged sample), ``"procedural"`` (drawn), or ``"auto"`` (the first of
            these three that is there).
        wbc_files: Take white cells only from these PBC files (class = parent folder name), e.g.
            a held-out split for evaluation.
        rbc_mix: Red-cell morphologies in percent (the rest ``normal``), e.g. ``{"schistocyte": 5}``:
            every red cell is then a real labelled cell of the Chula RBC-12 set, from the test
            fields of the red-cell model in ``rbc_model_dir`` (:mod:`hematovision.devtools.rbc_cells`).
        rbc_split: which part of that model's ``split.json`` the red cells come from: ``"test"``
            (held out: for measuring) or ``"val"`` (for tuning a pipeline setting without touching
            the test cells).
        tile_px, quality: TIFF tile size and JPEG quality.
        progress: Called with the number of level-0 tiles written since the last call.
        jpeg2000_bpp: SVS only: tiles stored as lossy JPEG 2000 at this many bits per pixel (Aperio
            compression 33005) instead of JPEG.

    Returns:
        The manifest dict (as written to ``<out_path>.manifest.json``; above ``INLINE_CELLS_MAX``
        cells the returned copy leaves out red-cell entries and says so in ``cells_omitted``), plus
        ``"manifest_path"``, ``"slide_path"`` and ``"levels"``.
    """
    from hematovision.devtools.slide_writer import SLIDE_FORMATS, write_pyramid

    if fmt not in SLIDE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(SLIDE_FORMATS)}, got {fmt!r}")
    out = Path(out_path)
    if not out.parent.is_dir():
        raise ValueError(f"the folder {out.parent} does not exist")
    if data_root is not None and hasattr(data_root, "data_root"):  # a Settings object
        data_root = data_root.data_root
    root = Path(data_root) if data_root is not None else None
    bank = None
    if rbc_mix is not None:
        from hematovision.core.settings import RBC_MODEL_DIR
        from hematovision.devtools.rbc_cells import load_rbc_bank

        if root is None:
            raise ValueError("a red-cell mix needs the shared data (data/chula_rbc)")
        bank = load_rbc_bank(
            root, list(rbc_mix), mpp, model_dir=rbc_model_dir or RBC_MODEL_DIR, seed=seed, split=rbc_split
        )
    plan = plan_smear(
        width,
        height,
        mpp,
        n_wbc,
        seed,
        data_root=root,
        source=source,
        wbc_mix=wbc_mix,
        wbc_files=wbc_files,
        rbc_mix=rbc_mix,
        real_rbc=bank,
    )
    for note in plan.notes:
        logger.warning("%s", note)
    renderer = SmearRenderer(plan)
    info = write_pyramid(
        out,
        width,
        height,
        renderer,
        mpp,
        fmt=fmt,
        tile_px=tile_px,
        quality=quality,
        progress=progress,
        jpeg2000_bpp=jpeg2000_bpp,
    )
    mpath = write_manifest(plan, fmt, out)
    manifest = _manifest_head(plan, fmt, out)
    n_cells = len(plan.wbcs) + plan.rbc_xy.shape[0] + plan.plt_xy.shape[0]
    include_rbc = n_cells <= INLINE_CELLS_MAX
    manifest["cells"] = list(_iter_cell_json(plan, include_rbc=include_rbc))
    if not include_rbc:
        manifest["cells_omitted"] = f"rbc entries left out of the returned copy; all are in {mpath}"
    manifest["manifest_path"] = str(mpath)
    manifest["slide_path"] = str(out)
    manifest["levels"] = [list(d) for d in info["levels"]]
    return manifest
