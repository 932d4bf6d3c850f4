"""Stain maps of a smear field at a working resolution: glass (flat field), optical density, the
nuclear-stain channel and the cell mask (steps 1-3 of :mod:`hemato_model.detection`).

Optical density follows Beer–Lambert as in Ruifrok & Johnston's colour deconvolution (*Anal Quant
Cytol Histol* 2001); the nuclear channel ``OD_green - OD_blue`` is what Romanowsky-stained nuclei
absorb and haemoglobin does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_li

#: Nuclear pixels pass blue: OD_green - OD_blue is at least this fraction of OD_green (red cells,
#: which absorb blue too, stay under ~0.5 even when dark).
NUCLEUS_MIN_CHROMA = 0.5
#: Nuclear threshold: this multiple of the field's median stain over cells, at least ...
NUCLEUS_REL_THRESHOLD = 2.6
#: ... and at least this much above it (OD units) ...
NUCLEUS_MIN_EXCESS_OD = 0.06
#: ... and at least this absolute OD.
NUCLEUS_MIN_OD = 0.08
#: Glass (flat-field) estimate: block size, µm, and the darkest a block's glass may be relative to
#: the field's.
GLASS_BLOCK_UM = 30.0
GLASS_MIN_FRACTION = 0.85
#: Minimum mean OD of a cell pixel (a blank field has no cells).
CELL_MIN_OD = 0.03
#: The field's robust statistics (cell threshold, reference stain) are taken from a regular grid
#: of at most this many pixels: a level-0 tile or a camera field at working resolution has fewer,
#: a 2 x 2 mm chunk of a 1 µm/px pyramid level has 4 million, where sorting them all cost more
#: than finding the cells.
STATS_MAX_PX = 1_000_000


@dataclass
class StainField:
    """The image at working resolution and the stain maps derived from it."""

    scale: float  # working pixel = scale input pixels
    mpp: float  # µm per working pixel
    od: np.ndarray  # (h, w) mean optical density
    stain: np.ndarray  # (h, w) OD_green - OD_blue, smoothed
    cells: np.ndarray  # (h, w) bool, any cell
    stain_ref: float  # median stain over cells (red cells, mostly)

    def px(self, um: float) -> float:
        return um / self.mpp

    def px2(self, um2: float) -> float:
        return um2 / (self.mpp * self.mpp)


def check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"image too small to detect cells: {arr.shape[1]}x{arr.shape[0]} px")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {arr.dtype}")
    return arr


def resample(image: np.ndarray, scale: float) -> np.ndarray:
    """Shrink ``image`` by ``scale`` (> 1) with area averaging; ``scale <= 1`` returns it as is."""
    if scale <= 1.0001:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _block_percentile(rgb: np.ndarray, by: np.ndarray, bx: np.ndarray, step: int, q: float) -> np.ndarray:
    """Per-channel ``q``-th percentile of every block ``rgb[by[i]:by[i+1]:step, bx[j]:bx[j+1]:step]``.

    The same numbers as one ``np.percentile`` per block, computed for all blocks of one shape at
    a time (block edges from ``linspace`` give at most two heights and two widths): one call per
    block cost more than the rest of white-cell detection on a coarse pyramid level.
    """
    grid = np.empty((len(by) - 1, len(bx) - 1, 3), np.float32)
    heights, widths = np.diff(by), np.diff(bx)
    for hb in np.unique(heights):
        rows = np.nonzero(heights == hb)[0]
        ry = by[rows][:, None] + np.arange(0, hb, step)[None, :]  # (n_rows, hb / step)
        for wb in np.unique(widths):
            cols = np.nonzero(widths == wb)[0]
            cx = bx[cols][:, None] + np.arange(0, wb, step)[None, :]  # (n_cols, wb / step)
            blocks = rgb[ry[:, :, None, None], cx[None, None, :, :]]  # (n_rows, bh, n_cols, bw, 3)
            blocks = blocks.transpose(0, 2, 1, 3, 4).reshape(len(rows), len(cols), -1, 3)
            grid[np.ix_(rows, cols)] = np.percentile(blocks, q, axis=2)
    return grid


def glass_map(rgb: np.ndarray, block_px: int, channels: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Colour of the bare glass at every pixel (flat field), from the brightest pixels per block.

    Camera fields are unevenly lit (vignetting, a tilted lamp), so a single glass colour leaves
    the dim side's cells under threshold. Per block of ``block_px``, the glass is the 90th
    percentile of each channel; blocks darker than ``GLASS_MIN_FRACTION`` of the field's glass
    (crowded with cells, no glass to see) take the field's value; the block grid is smoothed and
    interpolated back to pixels. Returns the ``channels`` asked for, in that order.
    """
    h, w = rgb.shape[:2]
    field_glass = np.percentile(stats_sample(rgb).reshape(-1, 3), 95, axis=0)
    nby, nbx = max(1, h // block_px), max(1, w // block_px)
    if nby * nbx <= 1:
        return np.broadcast_to(field_glass[list(channels)], (*rgb.shape[:2], len(channels)))
    by = np.linspace(0, h, nby + 1).astype(int)
    bx = np.linspace(0, w, nbx + 1).astype(int)
    step = 2 if block_px >= 16 else 1  # every other pixel is plenty for a percentile
    grid = _block_percentile(rgb, by, bx, step, 90.0)
    floor = GLASS_MIN_FRACTION * field_glass.sum()
    dim = grid.sum(axis=2) < floor
    grid[dim] = field_glass
    if nby >= 3 and nbx >= 3:
        grid = np.stack([ndi.median_filter(grid[..., c], 3, mode="nearest") for c in range(3)], 2)
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(grid[..., c]), mode="F").resize((w, h), Image.Resampling.BILINEAR)
            )
            for c in channels
        ],
        2,
    )


def stats_sample(values: np.ndarray) -> np.ndarray:
    """``values`` (2-D) on a regular grid of at most ``STATS_MAX_PX`` pixels (all of them if fewer)."""
    step = int(np.ceil(np.sqrt(values.shape[0] * values.shape[1] / STATS_MAX_PX)))
    return values[::step, ::step] if step > 1 else values


def cell_threshold(od: np.ndarray) -> float:
    """OD above which a pixel belongs to a cell.

    Otsu's threshold is pulled up by dark white cells and misses pale red cells, so the glass
    noise sets the level: median + 4 robust SD of the faintest 30% of pixels (glass in any field
    that is not packed), capped by Li's minimum-cross-entropy threshold (Li & Tam 1998) for
    packed fields, and never under ``CELL_MIN_OD``.
    """
    low = od[od <= np.percentile(od, 30)]
    mode = float(np.median(low))
    noise = 1.4826 * float(np.median(np.abs(low - mode)))
    try:
        li = float(threshold_li(od))
    except ValueError:  # a constant image
        li = float("inf")
    return max(min(mode + 4.0 * noise, li), CELL_MIN_OD)


def _optical_density(channel: np.ndarray, glass: np.ndarray) -> np.ndarray:
    """``-log10(clip((channel + 1) / (glass + 1), 1e-3, 1))`` in one float32 buffer (the same values
    as the expression, without its four whole-field temporaries)."""
    od = channel + 1.0
    od /= glass + 1.0
    np.clip(od, 1e-3, 1.0, out=od)
    np.log10(od, out=od)
    np.negative(od, out=od)
    return od


def stain_field(
    image: np.ndarray, mpp: float, work_mpp: float, block_px: int | None = None, smooth_px: float | None = None
) -> StainField:
    scale = max(1.0, work_mpp / mpp)
    small = resample(image, scale)
    scale_y = image.shape[0] / small.shape[0]
    scale_x = image.shape[1] / small.shape[1]
    scale = (scale_x + scale_y) / 2.0
    wmpp = mpp * scale
    rgb = small.astype(np.float32)
    # optical density of green and blue only (red is not used)
    glass = glass_map(rgb, max(8, int(round(GLASS_BLOCK_UM / wmpp))) if block_px is None else block_px, (1, 2))
    od_g = _optical_density(rgb[..., 1], glass[..., 0])
    od_b = _optical_density(rgb[..., 2], glass[..., 1])
    del rgb, glass  # a 2 x 2 mm chunk of a 1 µm/px level: 80 MB that are no longer needed
    sigma = max(0.3, 0.35 / wmpp) if smooth_px is None else smooth_px
    # haemoglobin and nuclear dyes both absorb green most: the green OD finds every cell
    od_mean = ndi.gaussian_filter(od_g, sigma)
    od_g -= od_b
    del od_b
    stain = ndi.gaussian_filter(od_g, sigma)
    del od_g
    cells = od_mean > cell_threshold(stats_sample(od_mean))
    sampled_cells = stats_sample(cells)
    ref = float(np.median(stats_sample(stain)[sampled_cells])) if sampled_cells.any() else 0.0
    return StainField(scale, wmpp, od_mean, stain, cells, ref)


def nucleus_threshold(field: StainField) -> float:
    ref = max(field.stain_ref, 0.0)
    return max(NUCLEUS_REL_THRESHOLD * ref, ref + NUCLEUS_MIN_EXCESS_OD, NUCLEUS_MIN_OD)


def disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk: np.ndarray = (xx * xx + yy * yy) <= r * r + 0.5
    return disk


def dilate_disk(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """``ndi.binary_dilation(mask, disk(radius_px))``, the same pixels, several times faster on large
    masks: a disk is a stack of centred row segments, so the mask is dilated along rows once per
    half-width and the shifted rows are OR-ed together (a few whole-array passes instead of one
    pass per structuring element)."""
    se = disk(radius_px)
    r = se.shape[0] // 2
    h = mask.shape[0]
    rows = [mask.astype(bool, copy=False)]  # rows[k]: dilated along rows by k px each side
    for _ in range(r):
        prev = rows[-1]
        nxt = prev.copy()
        nxt[:, 1:] |= prev[:, :-1]
        nxt[:, :-1] |= prev[:, 1:]
        rows.append(nxt)
    out = np.zeros(mask.shape, bool)
    for dy in range(-min(r, h - 1), min(r, h - 1) + 1):
        src = rows[(int(se[dy + r].sum()) - 1) // 2]
        if dy >= 0:
            out[dy:] |= src[: h - dy]
        else:
            out[: h + dy] |= src[-dy:]
    return out
