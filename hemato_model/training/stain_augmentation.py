"""Domain-generalisation augmentation: the stain, optics and compression of other laboratories.

The standard augmenter (:func:`hemato_model.preprocessing.make_augmenter`) jitters colour within
roughly one laboratory's range. A model trained on one site (PBC: MGG, CellaVision) and used on
another (BCCD: Giemsa-type, bluish, blurred JPEG) needs a far wider range. This module adds, after
the standard augmentation and with the same seeded ``tf.data`` mechanics:

- **optical-density jitter** per RGB channel (gain 0.6..1.5 and offset ±0.10 OD), which moves the
  stain's hue and intensity together, as a different stain recipe or staining time does
  (Tellez et al., Med. Image Anal. 58:101544, 2019, "HED-strong"/"HSV-strong" settings);
- **hue rotation** ±0.12 of the colour circle and per-channel **gamma** 0.7..1.4 (camera response,
  white balance);
- **random grayscale** (10 % of crops), so that shape cues carry weight beyond colour;
- **Gaussian blur** (σ 0..1.6 px, half the crops): other optics and focus;
- **JPEG re-compression** at quality 30..90 (half the crops): BCCD-like block artefacts;
- a wider **scale jitter** (zoom ±25 %) for scales that are estimated, not known.

It is used by ``hematovision train --aug-profile domain``; the saved model holds no augmentation.
The parameter ranges were fixed before any out-of-domain figure was looked at and are not tuned on
BCCD (the out-of-domain test set).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Profiles accepted by ``TrainConfig.aug_profile``.
AUG_PROFILES = ("standard", "domain")
#: Scale jitter of the domain profile (± fraction).
DOMAIN_ZOOM = 0.25


def _gaussian_kernels(sigma: Any, radius: int) -> Any:
    """(N, 2r+1) normalised 1-D Gaussian kernels, one per sigma (sigma 0 gives a delta)."""
    import tensorflow as tf

    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)[None, :]
    s = tf.maximum(sigma[:, None], 1e-3)
    k = tf.exp(-0.5 * tf.square(x / s))
    return k / tf.reduce_sum(k, axis=1, keepdims=True)


def _blur(x: Any, sigma: Any, radius: int = 4) -> Any:
    """Separable per-image Gaussian blur of (N, H, W, 3) with per-image sigma (N,)."""
    import tensorflow as tf

    k = _gaussian_kernels(sigma, radius)  # (N, K)
    pad = [[0, 0], [radius, radius], [radius, radius], [0, 0]]
    xp = tf.pad(x, pad, mode="REFLECT")
    h = tf.shape(x)[1]
    w = tf.shape(x)[2]
    # Horizontal then vertical pass as weighted sums of shifted copies (K is small).
    size = 2 * radius + 1
    horiz = tf.add_n([xp[:, :, i : i + w, :] * k[:, i][:, None, None, None] for i in range(size)])
    return tf.add_n([horiz[:, i : i + h, :, :] * k[:, i][:, None, None, None] for i in range(size)])


def make_domain_augmenter(seed: int, strength: float = 1.0) -> Callable[[Any], Any]:
    """Standard augmentation (zoom ±25 %) followed by the cross-laboratory stain/optics jitter.

    Args:
        seed: seed of the random generators (reproducible given the data order).
        strength: scales the standard colour jitter (the domain jitter's ranges are fixed).

    Returns:
        A function float32 (N, H, W, 3) 0..255 -> same, for ``tf.data`` ``map``.
    """
    import tensorflow as tf

    from hemato_model.preprocessing import make_augmenter

    base = make_augmenter(seed, strength, zoom=DOMAIN_ZOOM)
    gen = tf.random.Generator.from_seed(seed + 101)

    def jpeg(img: Any, quality: Any) -> Any:
        out = tf.image.adjust_jpeg_quality(tf.cast(img, tf.uint8), quality)
        return tf.cast(out, tf.float32)

    def augment(images: Any) -> Any:
        x = base(images)
        n = tf.shape(x)[0]
        # Optical-density jitter per RGB channel.
        od = -tf.math.log((x + 1.0) / 256.0)
        od = od * gen.uniform((n, 1, 1, 3), 0.6, 1.5) + gen.uniform((n, 1, 1, 3), -0.10, 0.10)
        x = tf.clip_by_value(256.0 * tf.exp(-tf.maximum(od, 0.0)) - 1.0, 0.0, 255.0) / 255.0
        # Per-channel gamma, then hue rotation.
        x = tf.pow(tf.maximum(x, 1e-4), gen.uniform((n, 1, 1, 3), 0.7, 1.4))
        hsv = tf.image.rgb_to_hsv(x)
        dh = gen.uniform((n, 1, 1), -0.12, 0.12)
        x = tf.image.hsv_to_rgb(tf.stack([tf.math.floormod(hsv[..., 0] + dh, 1.0), hsv[..., 1], hsv[..., 2]], -1))
        # Random grayscale.
        grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
        pick = tf.cast(gen.uniform((n, 1, 1, 1)) < 0.1, tf.float32)
        x = (pick * grey + (1.0 - pick) * x) * 255.0
        # Gaussian blur on half of the crops.
        sigma = gen.uniform((n,), 0.0, 1.6) * tf.cast(gen.uniform((n,)) < 0.5, tf.float32)
        x = _blur(x, sigma)
        # JPEG re-compression on half of the crops (per image: the op takes one image).
        quality = tf.cast(gen.uniform((n,), 30.0, 90.0), tf.int32)
        use = gen.uniform((n,)) < 0.5
        x = tf.clip_by_value(x, 0.0, 255.0)
        compressed = tf.map_fn(
            lambda a: jpeg(a[0], a[1]), (x, quality), fn_output_signature=tf.TensorSpec(None, tf.float32)
        )
        compressed = tf.ensure_shape(compressed, x.shape)
        x = tf.where(use[:, None, None, None], compressed, x)
        return tf.clip_by_value(x, 0.0, 255.0)

    return augment
