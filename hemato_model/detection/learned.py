"""The learned white-cell detector: a centre heat-map head (CenterNet-style) on EfficientNet-Lite0
features, run at a common scale.

The model (``model.keras`` in a model folder, e.g. ``hemato_model/models/wbc-detector-v2``) takes
an RGB image resampled to ``work_mpp`` µm/px (float 0..255, sides a multiple of 16) and returns, at
stride ``stride``, five channels: the white-cell centre heat map (logit), the box width and height
(log µm) and the sub-cell centre offset (in cells). :func:`decode` turns them into boxes.

Training and the leave-one-source-out figures: :mod:`hemato_model.training.wbc_detector`,
``benchmarks/wbc_detector_loso.py`` and docs/validation.md ("Learned white-cell detector and
leave-one-source-out").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemato_model.detection.border import EDGE_MARGIN_UM, margin_px, touches_edge
from hemato_model.detection.detect import Detection
from hemato_model.detection.stain import check_image
from hematovision.core.hashing import sha256_file as sha256_of

MODEL_FILE = "model.keras"
META_FILE = "model.json"
#: Channels of the head's output, in order.
CHANNELS = ("heat", "log_w_um", "log_h_um", "dx", "dy")


class DetectorModelError(RuntimeError):
    """A detector model folder that is missing, incomplete or altered."""


def resample(image: np.ndarray, mpp: float, work_mpp: float) -> tuple[np.ndarray, float]:
    """``image`` resampled to ``work_mpp`` (float32 0..255) and the factor from input to work pixels."""
    from skimage.transform import resize

    scale = float(mpp) / float(work_mpp)
    h, w = image.shape[:2]
    out_h, out_w = max(16, int(round(h * scale))), max(16, int(round(w * scale)))
    if (out_h, out_w) == (h, w):
        return image.astype(np.float32), 1.0
    out = resize(image, (out_h, out_w), order=1, anti_aliasing=scale < 1, preserve_range=True)
    return out.astype(np.float32), out_w / w


def pad_to(arr: np.ndarray, multiple: int) -> np.ndarray:
    """Pad bottom/right with the image's median colour (glass) to a multiple of ``multiple``."""
    h, w = arr.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return arr
    fill = np.median(arr.reshape(-1, 3), axis=0)
    out = np.empty((h + ph, w + pw, 3), arr.dtype)
    out[...] = fill
    out[:h, :w] = arr
    return out


def decode(
    out: np.ndarray,
    threshold: float,
    stride: int,
    work_mpp: float,
    valid_hw: tuple[int, int] | None = None,
    edge_margin_um: float | None = None,
) -> list[tuple[tuple[float, float, float, float], float]]:
    """Peaks of one head output ``(gh, gw, 5)`` as ``(box in work pixels, score)``.

    A peak is a cell whose sigmoid score is ≥ ``threshold`` and the largest in its 3×3
    neighbourhood; the box is centred at the cell centre plus the predicted offset. With
    ``edge_margin_um`` (and ``valid_hw``, the field's size in work pixels), border cells
    (:func:`hemato_model.detection.border.touches_edge`) are not returned.
    """
    from scipy.ndimage import maximum_filter
    from scipy.special import expit

    heat = expit(out[..., 0])
    peaks = (heat >= threshold) & (heat == maximum_filter(heat, size=3, mode="constant"))
    if valid_hw is not None:
        vh, vw = (int(np.ceil(v / stride)) for v in valid_hw)
        peaks[vh:, :] = False
        peaks[:, vw:] = False
    found = []
    for gy, gx in zip(*np.nonzero(peaks), strict=True):
        w_px = float(np.exp(out[gy, gx, 1])) / work_mpp
        h_px = float(np.exp(out[gy, gx, 2])) / work_mpp
        cx = (gx + 0.5 + float(out[gy, gx, 3])) * stride
        cy = (gy + 0.5 + float(out[gy, gx, 4])) * stride
        found.append(((cx - w_px / 2, cy - h_px / 2, cx + w_px / 2, cy + h_px / 2), float(heat[gy, gx])))
    if edge_margin_um is not None:
        if valid_hw is None:
            raise ValueError("edge_margin_um needs valid_hw, the field's size in work pixels")
        m = margin_px(edge_margin_um, work_mpp)
        found = [(b, sc) for b, sc in found if not touches_edge(b, valid_hw, m)]
    return found


def _training_loss_not_needed(y_true: Any, y_pred: Any) -> Any:
    raise RuntimeError("the detector's training loss is not available at inference")


@dataclass
class LearnedWbcDetector:
    """A loaded detector: ``detect(image, mpp)`` returns white-cell :class:`Detection` s."""

    model: Any
    work_mpp: float
    stride: int
    threshold: float
    version: str
    edge_margin_um: float = EDGE_MARGIN_UM

    @classmethod
    def load(cls, model_dir: str | Path, verify_sha256: bool = True) -> LearnedWbcDetector:
        """Load ``model.keras`` + ``model.json`` from ``model_dir``; check the recorded SHA-256.

        Raises:
            DetectorModelError: when a file is missing or the weights do not match the card.
        """
        model_dir = Path(model_dir)
        meta_path, model_path = model_dir / META_FILE, model_dir / MODEL_FILE
        if not (meta_path.is_file() and model_path.is_file()):
            raise DetectorModelError(f"{model_dir}: not a detector model folder (needs {MODEL_FILE} and {META_FILE})")
        meta = json.loads(meta_path.read_text())
        if verify_sha256 and meta.get("sha256") and sha256_of(model_path) != meta["sha256"]:
            raise DetectorModelError(f"{model_path}: SHA-256 differs from {META_FILE}; the weights were altered")
        import keras

        # v1 was saved with its head's training loss in the head's compile config; loading with
        # compile=False never calls it, but Keras still resolves the name.
        model = keras.models.load_model(
            model_path, compile=False, custom_objects={"detection_loss": _training_loss_not_needed}
        )
        return cls(
            model=model,
            work_mpp=float(meta["work_mpp"]),
            stride=int(meta["stride"]),
            threshold=float(meta["threshold"]),
            version=str(meta.get("version", model_dir.name)),
            # models saved before the border rule (v1) get the rule's default margin
            edge_margin_um=float(meta.get("edge_margin_um", EDGE_MARGIN_UM)),
        )

    def heads(self, image: np.ndarray, mpp: float) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Raw head output for one image, the input→work scale and the unpadded work size."""
        arr = check_image(image)
        if not (np.isfinite(mpp) and mpp > 0):
            raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
        work, scale = resample(arr, mpp, self.work_mpp)
        valid = work.shape[:2]
        padded = pad_to(work, 16)
        out = np.asarray(self.model(padded[None], training=False))[0]
        return out, scale, (int(valid[0]), int(valid[1]))

    def detect(self, image: np.ndarray, mpp: float, threshold: float | None = None) -> list[Detection]:
        """White cells of one RGB field at ``mpp`` µm/px; boxes in ``image`` pixels. Border cells
        (within ``edge_margin_um`` of the field's edge, :mod:`hemato_model.detection.border`) are
        not reported: a cut cell cannot be classified, and on a slide an overlapping tile sees it whole.

        Raises:
            ValueError: on a non-RGB image or a non-positive ``mpp``.
        """
        out, scale, valid = self.heads(image, mpp)
        h, w = np.asarray(image).shape[:2]
        thr = self.threshold if threshold is None else threshold
        cells = []
        for (x0, y0, x1, y1), score in decode(out, thr, self.stride, self.work_mpp, valid, self.edge_margin_um):
            box = (
                int(np.clip(np.floor(x0 / scale), 0, w - 1)),
                int(np.clip(np.floor(y0 / scale), 0, h - 1)),
                0,
                0,
            )
            x1i = int(np.clip(np.ceil(x1 / scale), box[0] + 1, w))
            y1i = int(np.clip(np.ceil(y1 / scale), box[1] + 1, h))
            cells.append(Detection("wbc", (box[0], box[1], x1i, y1i), score))
        return cells
