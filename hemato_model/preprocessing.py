"""Cell crops at a fixed physical size, and the training-time augmentation.

Every crop the classifier sees, in training and on a slide, is ``crop_um`` µm square around the
cell centre, resampled to ``out_px`` pixels, so the model sees cells at one scale whatever the
scanner (``mpp``). Beyond the image edge the crop is filled by reflection.

Augmentation follows the usual recipe for stain and scanner robustness in microscopy (Tellez et
al., "Quantifying the effects of data augmentation and stain color normalization in convolutional
neural networks for computational pathology", Med. Image Anal. 58:101544, 2019): geometry (flips,
90° and free rotation, scale jitter, shifts), HED stain jitter (per-stain gain and offset in optical
density space), per-channel gain/offset, brightness/contrast/saturation/hue, and mild blur/resolution
loss. It runs in the ``tf.data`` pipeline, not in the saved model, so the model file holds only
plain inference layers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: The default physical crop side and network input of the shipped model.
DEFAULT_CROP_UM = 24.0
DEFAULT_INPUT_PX = 128


def crop_cell(image: np.ndarray, center_xy: tuple[float, float], mpp: float, crop_um: float, out_px: int) -> np.ndarray:
    """Cut a ``crop_um`` µm square centred on ``center_xy`` and resample it to ``out_px`` pixels.

    Args:
        image: (H, W, 3) uint8 RGB (a grey (H, W) image is stacked to RGB).
        center_xy: cell centre (x, y) in image pixels (floats allowed).
        mpp: µm per pixel of ``image``.
        crop_um: side of the square in µm.
        out_px: side of the result in pixels.

    Returns:
        (out_px, out_px, 3) uint8. Parts beyond the image are filled by reflecting the image.
    """
    if mpp <= 0 or crop_um <= 0 or out_px <= 0:
        raise ValueError("mpp, crop_um and out_px must be positive")
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    side = crop_um / mpp
    cx, cy = float(center_xy[0]), float(center_xy[1])
    x0, y0 = cx - side / 2.0, cy - side / 2.0
    ix0, iy0 = math.floor(x0) - 1, math.floor(y0) - 1
    ix1, iy1 = math.ceil(x0 + side) + 1, math.ceil(y0 + side) + 1
    pad = (max(0, -iy0), max(0, iy1 - h)), (max(0, -ix0), max(0, ix1 - w))
    region = img[max(0, iy0) : min(h, iy1), max(0, ix0) : min(w, ix1)]
    if region.size == 0:
        raise ValueError(f"centre {center_xy} lies outside the {w}x{h} image")
    if any(p for pair in pad for p in pair):
        widths = (pad[0], pad[1], (0, 0))
        region = (
            np.pad(region, widths, mode="reflect") if min(region.shape[:2]) > 1 else np.pad(region, widths, mode="edge")
        )
    box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    pil = Image.fromarray(np.ascontiguousarray(region))
    resample = Image.Resampling.BILINEAR if side >= out_px else Image.Resampling.BICUBIC
    return np.asarray(pil.resize((out_px, out_px), resample=resample, box=box), dtype=np.uint8)


def load_centered_crop(path: str | Path, mpp: float, crop_um: float, out_px: int) -> np.ndarray:
    """Read an image file holding one centred cell and cut its crop at the image centre."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    h, w = arr.shape[:2]
    return crop_cell(arr, ((w - 1) / 2.0 + 0.5, (h - 1) / 2.0 + 0.5), mpp, crop_um, out_px)


def rescan(
    crops: np.ndarray,
    crop_um: float,
    mpp: float,
    jpeg_quality: int | None = None,
    jpeg2000_bpp: float | None = None,
) -> np.ndarray:
    """Crops as a scanner at ``mpp`` µm/px would have given them: each ``crop_um`` µm crop is
    down-sampled to the pixels that square has at ``mpp`` (Lanczos, as ``make-slide`` places cells)
    and back to its own size (bicubic, as :func:`crop_cell` up-samples a coarse slide's pixels).
    With ``jpeg_quality`` the scan's pixels are first stored as JPEG at that quality with 4:2:0
    chroma, as whole-slide scanners and ``make-slide`` store their tiles (the chroma is then kept at
    half the scan's resolution). With ``jpeg2000_bpp`` they are stored as lossy JPEG 2000 at that
    many bits per pixel instead (:func:`jpeg2000_stored`). Crops already at or coarser than ``mpp``
    are returned unchanged (only stored, where asked).

    Args:
        crops: uint8 (N, px, px, 3).
        crop_um: the crops' side in µm.
        mpp: the scan's µm per pixel.
        jpeg_quality: 1-100, or None for no JPEG.
        jpeg2000_bpp: bits per pixel (all three channels, > 0 and < 24), or None for no JPEG 2000.
    """
    crops = np.asarray(crops, dtype=np.uint8)
    if mpp <= 0 or crop_um <= 0:
        raise ValueError("mpp and crop_um must be positive")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be 1-100, not {jpeg_quality}")
    if jpeg_quality is not None and jpeg2000_bpp is not None:
        raise ValueError("a scan is stored as JPEG or as JPEG 2000, not both")
    if jpeg2000_bpp is not None and not 0 < jpeg2000_bpp < 24:
        raise ValueError(f"jpeg2000_bpp must be above 0 and below 24, not {jpeg2000_bpp}")
    px = crops.shape[1]
    small = max(1, round(crop_um / mpp))
    if small >= px and jpeg_quality is None and jpeg2000_bpp is None:
        return crops
    lows = [Image.fromarray(c) for c in crops]
    if small < px:
        lows = [low.resize((small, small), Image.Resampling.LANCZOS) for low in lows]
    if jpeg_quality is not None:
        lows = [_jpeg_stored(low, jpeg_quality) for low in lows]
    if jpeg2000_bpp is not None:
        lows = jpeg2000_stored(lows, jpeg2000_bpp)
    out = np.empty_like(crops)
    for i, low in enumerate(lows):
        out[i] = np.asarray(low.resize((px, px), Image.Resampling.BICUBIC) if small < px else low, dtype=np.uint8)
    return out


def _jpeg_stored(image: Image.Image, quality: int) -> Image.Image:
    """``image`` after a round trip through JPEG at ``quality`` with 4:2:0 chroma subsampling."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


#: Side of the tiles JPEG 2000 slides are stored in (Aperio's 240 px).
JPEG2000_TILE_PX = 240


def jpeg2000_encode(image: Image.Image, bpp: float) -> bytes:
    """``image`` as one lossy JPEG 2000 codestream at ``bpp`` bits per pixel, as scanners store a tile:
    irreversible 9/7 wavelet with the colour transform (Aperio's SVS compression 33005), OpenJPEG's
    rate control, no JP2 wrapper. The one place the project's JPEG 2000 storage is defined."""
    buf = io.BytesIO()
    image.convert("RGB").save(
        buf, format="JPEG2000", no_jp2=True, irreversible=True, mct=1, quality_mode="rates", quality_layers=[24.0 / bpp]
    )
    return buf.getvalue()


def jpeg2000_stored(images: list[Image.Image], bpp: float, tile_px: int = JPEG2000_TILE_PX) -> list[Image.Image]:
    """Equal-sized square ``images`` after a round trip through lossy JPEG 2000 at ``bpp`` bits per
    pixel, as a scanner stores its tiles (irreversible 9/7 wavelet, colour transform on; Aperio's
    SVS compression 33005).

    JPEG 2000 spends a tile's bits where its content needs them, so the loss at a rate depends on
    what else the tile holds: each image is stored inside a tile of about ``tile_px`` pixels packed
    with the others (k × k images per tile, in order; a last tile short of images repeats them), and
    ``bpp`` is the whole tile's rate. A tile full of cells gets fewer bits per cell than a slide's
    tile that is partly glass at the same rate, so this errs towards a larger loss.
    """
    if not images:
        return []
    side = images[0].size[0]
    if any(im.size != (side, side) for im in images):
        raise ValueError("jpeg2000_stored needs equal-sized square images")
    k = max(1, tile_px // side)
    out: list[Image.Image] = []
    for start in range(0, len(images), k * k):
        group = images[start : start + k * k]
        tile = Image.new("RGB", (k * side, k * side))
        for j in range(k * k):
            tile.paste(group[j % len(group)], ((j % k) * side, (j // k) * side))
        with Image.open(io.BytesIO(jpeg2000_encode(tile, bpp))) as decoded:
            stored = decoded.convert("RGB")
        out += [
            stored.crop(((j % k) * side, (j // k) * side, (j % k + 1) * side, (j // k + 1) * side))
            for j in range(len(group))
        ]
    return out


# Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution",
# Anal. Quant. Cytol. Histol. 23:291, 2001: the rows are the optical-density vectors of
# haematoxylin, eosin and DAB (skimage.color.hed_from_rgb's inverse).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def make_augmenter(seed: int, strength: float = 1.0, zoom: float = 0.15, shift: float = 0.06) -> Callable[[Any], Any]:
    """Build a batch augmentation function for ``tf.data``: float32 (N, H, W, 3) 0..255 in and out.

    Args:
        seed: seed of the Keras random layers (the pipeline is reproducible given the data order).
        strength: scales the colour jitter (1.0 = the shipped model's setting).
        zoom: scale jitter, ± this fraction (the red-cell model keeps it small: its size classes
            are told apart by physical size).
        shift: translation jitter, ± this fraction of the side.
    """
    import keras
    import tensorflow as tf

    geometry = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(0.5, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 3),
        ],
        name="geometry_augmentation",
    )
    rgb_from_hed = tf.constant(_RGB_FROM_HED)
    hed_from_rgb = tf.constant(_HED_FROM_RGB)
    gen = tf.random.Generator.from_seed(seed + 4)

    def augment(images: Any) -> Any:
        x = geometry(images, training=True)
        n = tf.shape(x)[0]
        # HED stain jitter in optical density space.
        od = -tf.math.log((x + 1.0) / 256.0)
        hed = tf.einsum("nhwc,cd->nhwd", od, hed_from_rgb)
        alpha = gen.uniform((n, 1, 1, 3), 1.0 - 0.15 * strength, 1.0 + 0.15 * strength)
        beta = gen.uniform((n, 1, 1, 3), -0.04 * strength, 0.04 * strength)
        od = tf.einsum("nhwd,dc->nhwc", hed * alpha + beta, rgb_from_hed)
        x = tf.clip_by_value(256.0 * tf.exp(-od) - 1.0, 0.0, 255.0)
        # Per-channel gain/offset (camera white balance), brightness and contrast.
        gain = gen.uniform((n, 1, 1, 3), 1.0 - 0.08 * strength, 1.0 + 0.08 * strength)
        offset = gen.uniform((n, 1, 1, 3), -12.0 * strength, 12.0 * strength)
        x = x * gain + offset
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        contrast = gen.uniform((n, 1, 1, 1), 1.0 - 0.2 * strength, 1.0 + 0.2 * strength)
        bright = gen.uniform((n, 1, 1, 1), -20.0 * strength, 20.0 * strength)
        x = (x - mean) * contrast + mean + bright
        x = tf.clip_by_value(x, 0.0, 255.0) / 255.0
        # Saturation and hue.
        hsv = tf.image.rgb_to_hsv(x)
        dh = gen.uniform((n, 1, 1), -0.04 * strength, 0.04 * strength)
        ds = gen.uniform((n, 1, 1), 1.0 - 0.25 * strength, 1.0 + 0.25 * strength)
        hsv = tf.stack(
            [tf.math.floormod(hsv[..., 0] + dh, 1.0), tf.clip_by_value(hsv[..., 1] * ds, 0.0, 1.0), hsv[..., 2]],
            axis=-1,
        )
        x = tf.image.hsv_to_rgb(hsv) * 255.0
        # Resolution loss (other optics, JPEG): down- and up-sample a random half of the batch.
        size = tf.shape(x)[1:3]
        factor = gen.uniform((), 0.55, 1.0)
        small = tf.cast(tf.cast(size, tf.float32) * factor, tf.int32)
        blurred = tf.image.resize(tf.image.resize(x, small, method="area"), size, method="bilinear")
        pick = tf.cast(gen.uniform((n, 1, 1, 1)) < 0.5, tf.float32)
        x = pick * blurred + (1.0 - pick) * x
        return tf.clip_by_value(x, 0.0, 255.0)

    return augment
