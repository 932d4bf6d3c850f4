"""Background and context augmentation of red-cell crops (issue 17: robust to glass and context).

The camera fields of Chula RBC-12 differ in their glass (background) colour, and one class's fields
(elliptocytes) alone have a bright one: a model trained on them learns the background as a cue, and
misreads cells on another background or among other neighbours (a scanned or composed slide). This
module takes that cue away and adds the contexts the pipeline meets, in transmittance
(Beer-Lambert, as :mod:`hematovision.devtools.synthetic` composes slides: pixel = glass light ×
Π cell transmittances):

1. **Transmittance**: each crop is divided by its field's glass colour (the field's 95th
   percentile per channel, as the pipeline measures it; :func:`field_glass`).
2. **The cell's own outline** (:func:`centre_cell_masks`): the stained region at the crop centre
   (optical density above a fraction of the crop's, holes filled), cut from touching neighbours at
   narrow necks (eroded by a disc of 12 % of the search radius, the centre's component grown back;
   a neighbour touching along a broad contact keeps its part) and to a disc of ``MAX_RADIUS_UM``;
   softened by one pixel.
3. In training, per crop (:func:`make_context_augmenter`): with ``p_isolate`` the cell alone on
   clear glass (its neighbours removed, as a pasted cell), with ``p_clutter`` a neighbour (another
   crop's isolated cell) multiplied in at 0.7-1.0 cell diameters from the centre, so it touches or
   overlaps the rim; then lit by a **random glass colour** (a level uniform in ``glass_range`` times
   a tint of ±15 % per channel, covering the set's fields and make-slide's glass; or, with
   ``p_canonical``, the canonical ``glass_rgb`` the pipeline normalises to), so no background
   colour is a class cue; last, with ``p_jpeg``, JPEG at quality 40-90 (the slide's tiles).

The pipeline normalises every crop to the canonical glass (:mod:`hemato_model.rbc.morphology`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: The glass colour a crop is normalised to (training and pipeline): the median 95th percentile of
#: the training fields of the set outside its elliptocyte fields.
CANONICAL_GLASS_RGB = (166.0, 178.0, 170.0)
#: A red cell's outline is looked for within this radius of the crop centre (µm).
MAX_RADIUS_UM = 5.5


def field_glass(image: np.ndarray) -> np.ndarray:
    """A field's glass colour: the 95th percentile of each channel (every 4th pixel), float32 (3,)."""
    return np.percentile(np.asarray(image)[::4, ::4, :3].reshape(-1, 3), 95, axis=0).astype(np.float32).clip(1, 255)


def centre_cell_masks(crops: np.ndarray, glass: np.ndarray, crop_um: float) -> np.ndarray:
    """Soft masks (uint8 0..255, (N, H, W)) of the red cell at the centre of each crop.

    Args:
        crops: uint8 (N, H, W, 3).
        glass: float (N, 3), the glass colour of each crop's field.
        crop_um: the crops' side in µm (for the outline's maximum radius).
    """
    from scipy import ndimage as ndi

    n, h, w = crops.shape[:3]
    yy, xx = np.mgrid[0:h, 0:w]
    r_px = MAX_RADIUS_UM / crop_um * w
    disc = (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= r_px * r_px
    out = np.zeros((n, h, w), np.uint8)
    c0, c1 = h // 2 - 3, h // 2 + 4
    k = max(1, int(round(0.12 * r_px)))
    neck = (np.mgrid[-k : k + 1, -k : k + 1] ** 2).sum(axis=0) <= k * k
    for i in range(n):
        t = np.clip(crops[i, ..., 1].astype(np.float32) / glass[i, 1], 1e-3, 1.0)
        od = -np.log10(t)
        stained = od > max(0.03, 0.15 * float(np.percentile(od, 90)))
        stained = ndi.binary_fill_holes(ndi.binary_closing(stained, iterations=1))
        # touching neighbours: cut at the necks (opening by reconstruction from the centre)
        core = ndi.binary_erosion(stained, neck, border_value=0)
        lab = ndi.label(core)[0]
        ids = lab[c0:c1, c0:c1]
        ids = ids[ids > 0]
        if ids.size:
            keep = ndi.binary_dilation(lab == int(np.bincount(ids).argmax()), neck) & stained
            lab = (keep & disc).astype(np.int32)
        else:
            lab = ndi.label(stained & disc)[0]
        ids = lab[c0:c1, c0:c1]
        ids = ids[ids > 0]
        if ids.size == 0:  # no stained region at the centre: keep the disc (the crop as it is)
            mask = disc
        else:
            mask = ndi.binary_dilation(lab == int(np.bincount(ids).argmax()), iterations=1)
        out[i] = np.clip(ndi.gaussian_filter(mask.astype(np.float32), 0.7) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def make_context_augmenter(
    seed: int,
    p_isolate: float = 0.5,
    p_clutter: float = 0.4,
    p_canonical: float = 0.3,
    p_jpeg: float = 0.3,
    glass_range: tuple[float, float] = (120.0, 250.0),
    canonical_glass: tuple[float, float, float] = CANONICAL_GLASS_RGB,
) -> Callable[[Any, Any, Any], Any]:
    """A ``tf.data`` batch function ``(crops uint8 (N,H,W,3), glass (N,3), masks uint8 (N,H,W)) ->
    float32 (N,H,W,3) 0..255``: isolation, neighbour clutter, random glass, JPEG (module docstring)."""
    import tensorflow as tf

    gen = tf.random.Generator.from_seed(seed + 11)
    canon = tf.constant(canonical_glass, tf.float32)

    def augment(crops: Any, glass: Any, masks: Any) -> Any:
        x = tf.cast(crops, tf.float32)
        n = tf.shape(x)[0]
        side = tf.cast(tf.shape(x)[1], tf.float32)
        t = tf.clip_by_value(x / glass[:, None, None, :], 0.002, 1.0)
        m = tf.cast(masks, tf.float32)[..., None] / 255.0
        alone = 1.0 + m * (t - 1.0)
        iso = tf.cast(gen.uniform((n, 1, 1, 1)) < p_isolate, tf.float32)
        t = iso * alone + (1.0 - iso) * t
        # a neighbour: the next crop's isolated cell, moved 0.8-1.1 diameters (~ side/12 µm * 7.5 µm)
        dist = gen.uniform((n,), 0.45, 0.62) * side
        ang = gen.uniform((n,), 0.0, 2.0 * np.pi)
        dx, dy = dist * tf.cos(ang), dist * tf.sin(ang)
        zeros, ones = tf.zeros((n,)), tf.ones((n,))
        # output (x, y) samples input (x - dx, y - dy)
        transforms = tf.stack([ones, zeros, -dx, zeros, ones, -dy, zeros, zeros], axis=1)
        other = tf.roll(alone, shift=1, axis=0)
        moved = tf.raw_ops.ImageProjectiveTransformV3(
            images=other,
            transforms=transforms,
            output_shape=tf.shape(x)[1:3],
            fill_value=1.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )
        clut = tf.cast(gen.uniform((n, 1, 1, 1)) < p_clutter, tf.float32)
        t = clut * (t * moved) + (1.0 - clut) * t
        level = gen.uniform((n, 1, 1, 1), glass_range[0], glass_range[1])
        rand_glass = tf.clip_by_value(level * gen.uniform((n, 1, 1, 3), 0.85, 1.15), 60.0, 255.0)
        use_canon = tf.cast(gen.uniform((n, 1, 1, 1)) < p_canonical, tf.float32)
        light = use_canon * canon[None, None, None, :] + (1.0 - use_canon) * rand_glass
        x = tf.clip_by_value(t * light, 0.0, 255.0)
        if p_jpeg > 0:
            as_u8 = tf.cast(x + 0.5, tf.uint8)
            jpeg = tf.map_fn(
                lambda im: tf.image.random_jpeg_quality(im, 40, 90),
                as_u8,
                fn_output_signature=tf.uint8,
            )
            pick = tf.cast(gen.uniform((n, 1, 1, 1)) < p_jpeg, tf.float32)
            x = pick * tf.cast(jpeg, tf.float32) + (1.0 - pick) * x
        return x

    return augment


def normalise_glass(crops: np.ndarray, glass: np.ndarray, target: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Crops relit from their field's glass (N, 3) or (3,) to ``target`` glass, uint8."""
    g = np.asarray(glass, np.float32)
    gain = np.asarray(target, np.float32) / np.maximum(g, 1.0)
    if gain.ndim == 2:
        gain = gain[:, None, None, :]
    return np.clip(crops.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
