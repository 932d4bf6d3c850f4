"""Training of the learned white-cell detector (:mod:`hemato_model.detection.learned`).

Data: CBC boxes on BCCD images (source ``CBC``: Training minus Validation → train, Validation →
val, Testing → test) and TXL-PBC (YOLO; after the trim only its Raabin-WBC and BCD images remain,
sources ``Raabin`` and ``BCD`` by ``source_map.csv``; its train/val/test folders are the splits).
TXL's BCCD copies were removed from the shared copy, so no image is in two sources.

Each image is resampled to ``WORK_MPP`` µm/px using the scale estimated from its own red cells
(:func:`hemato_model.detection.estimate_mpp`, as at inference), with strong augmentation: scale
jitter (±30 %), stain jitter in HED optical-density space, hue rotation, saturation, per-channel
gamma, brightness/contrast, grayscale, blur, JPEG re-compression, flips and 90° turns. The frozen
EfficientNet-Lite0 features of every (augmented) image at stride 8 and 16 are computed once and
cached in memory; the small head is trained on them (CenterNet focal loss on the centre heat map,
L1 on log box size and centre offset). The output is one Keras model: backbone up to ``block5c``
plus the head, saved with :func:`save_detector`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemato_model.detection.border import BBox, margin_px, split_border
from hemato_model.detection.learned import META_FILE, MODEL_FILE, decode, pad_to, resample, sha256_of
from hemato_model.training.annotations import read_voc_dir, read_yolo_dir

log = logging.getLogger(__name__)

WORK_MPP = 0.4
STRIDE = 8
CANVAS = 128
SOURCES = ("CBC", "Raabin", "BCD")
FEATURE_LAYERS = ("block3b_add", "block5c_add")


@dataclass(frozen=True)
class Sample:
    image_path: Path
    source: str
    split: str
    wbc: tuple[tuple[int, int, int, int], ...]
    #: the image's height and width in pixels (for the border rule)
    hw: tuple[int, int] = (0, 0)


def load_samples(data_root: Path) -> list[Sample]:
    """Every image of the three sources with its WBC boxes, source and split."""
    root = Path(data_root)
    cbc, bccd_images = root / "cbc", root / "bccd" / "BCCD" / "JPEGImages"
    out: list[Sample] = []
    val_names = {p.stem for p in (cbc / "Validation" / "Annotations").glob("*.xml")}
    for folder, split in (("Training", "train"), ("Testing", "test")):
        for item in read_voc_dir(cbc / folder / "Annotations", bccd_images):
            s = "val" if split == "train" and item.image_path.stem in val_names else split
            wbc = tuple(b.bbox for b in item.of_kind("wbc"))
            out.append(Sample(item.image_path, "CBC", s, wbc, (item.height, item.width)))
    txl = root / "txl_pbc" / "TXL_PBC"
    with open(root / "txl_pbc" / "source_map.csv", newline="") as fh:
        source_of = {Path(r["image"]).name: r["source"].split()[0] for r in csv.DictReader(fh)}
    names = {"Raabin-WBC": "Raabin", "BCD": "BCD"}
    for split in ("train", "val", "test"):
        for item in read_yolo_dir(txl, split=split):
            src = names.get(source_of.get(item.image_path.name, ""), "")
            if src:
                wbc = tuple(b.bbox for b in item.of_kind("wbc"))
                out.append(Sample(item.image_path, src, split, wbc, (item.height, item.width)))
    return out


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- augmentation


def _jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).astype(np.float32)


def augment_colour(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain, colour, blur and JPEG augmentation of a float 0..255 RGB image."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv

    x = np.clip(arr / 255.0, 1e-3, 1.0)
    if rng.random() < 0.8:  # stain jitter in HED optical density
        hed = rgb2hed(x)
        hed = hed * rng.uniform(0.6, 1.4, 3) + rng.uniform(-0.05, 0.05, 3)
        x = np.clip(hed2rgb(hed), 0, 1)
    if rng.random() < 0.7:  # hue rotation and saturation
        hsv = rgb2hsv(x)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.12, 0.12)) % 1.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 1)
        x = hsv2rgb(hsv)
    if rng.random() < 0.6:  # per-channel gamma
        x = x ** rng.uniform(0.7, 1.4, 3)
    if rng.random() < 0.6:  # brightness / contrast
        m = x.mean()
        x = (x - m) * rng.uniform(0.7, 1.3) + m + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.1:
        g = x @ np.array([0.299, 0.587, 0.114])
        x = np.repeat(g[..., None], 3, axis=2)
    out = np.clip(x, 0, 1) * 255.0
    if rng.random() < 0.4:
        s = rng.uniform(0.3, 1.3)
        out = gaussian_filter(out, (s, s, 0))
    if rng.random() < 0.5:
        out = _jpeg(out, int(rng.integers(25, 90)))
    return out.astype(np.float32)


def _geometry(arr: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and 90° turns of an image and its boxes ``(n, 4)`` in its pixels."""
    h, w = arr.shape[:2]
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1) if len(boxes) else boxes
    if rng.random() < 0.5:
        arr = arr[::-1]
        boxes = np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1) if len(boxes) else boxes
    if rng.random() < 0.5:  # transpose (with the flips: all 8 orientations)
        arr = arr.transpose(1, 0, 2)
        boxes = boxes[:, [1, 0, 3, 2]] if len(boxes) else boxes
    return np.ascontiguousarray(arr), boxes


def to_canvas(
    arr: np.ndarray, boxes: np.ndarray, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Place a work-scale image on a ``CANVAS``² canvas (random crop when larger, glass padding
    when smaller); boxes shifted; returns the valid (unpadded) height and width."""
    h, w = arr.shape[:2]
    y0 = int(rng.integers(0, h - CANVAS + 1)) if rng is not None and h > CANVAS else max(0, (h - CANVAS) // 2)
    x0 = int(rng.integers(0, w - CANVAS + 1)) if rng is not None and w > CANVAS else max(0, (w - CANVAS) // 2)
    crop = arr[y0 : y0 + CANVAS, x0 : x0 + CANVAS]
    vh, vw = crop.shape[:2]
    canvas = np.empty((CANVAS, CANVAS, 3), np.float32)
    canvas[...] = np.median(crop.reshape(-1, 3), axis=0)
    canvas[:vh, :vw] = crop
    if len(boxes):
        boxes = boxes - np.array([x0, y0, x0, y0], float)
    return canvas, boxes, (vh, vw)


def make_target(boxes: np.ndarray, valid_hw: tuple[int, int], edge_margin_um: float | None = None) -> np.ndarray:
    """Training target ``(g, g, 7)``: heat (Gaussian per centre), log w/h µm, dx, dy, centre
    indicator, valid mask. Boxes in canvas work pixels; a cell counts when its centre is inside.

    With ``edge_margin_um``, border cells are masked, not taught: an annotated box within the margin
    of the valid region's edge (:func:`hemato_model.detection.border.touches_edge`) is no centre
    and the grid cells under it leave the loss, and so does the outer ring of grid cells (3.2 µm,
    less than a white cell's radius: any centre there is a cut cell's, and most cut cells are not
    annotated in Raabin while many are in CBC and BCD). The head is then taught neither that a
    partly visible cell is background nor that it is a cell; the detector drops border cells anyway.
    """
    g = CANVAS // STRIDE
    t = np.zeros((g, g, 7), np.float32)
    vh, vw = (int(np.ceil(v / STRIDE)) for v in valid_hw)
    t[:vh, :vw, 6] = 1.0
    masked: list[tuple[int, int, int, int]] = []
    if edge_margin_um is not None:
        t[[0, vh - 1], :vw, 6] = 0.0
        t[:vh, [0, vw - 1], 6] = 0.0
        m = margin_px(edge_margin_um, WORK_MPP)
        whole, cut = split_border([tuple(b) for b in boxes], valid_hw, m)
        boxes = np.asarray(whole, float).reshape(-1, 4)
        for x0, y0, x1, y1 in cut:
            gx0, gy0 = max(0, int(x0 // STRIDE)), max(0, int(y0 // STRIDE))
            gx1, gy1 = min(vw, int(np.ceil(x1 / STRIDE))), min(vh, int(np.ceil(y1 / STRIDE)))
            masked.append((gy0, gy1, gx0, gx1))
    yy, xx = np.mgrid[0:g, 0:g] + 0.5
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        if not (0 <= cx < vw and 0 <= cy < vh):
            continue
        bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        sigma = max(0.6, min(bw, bh) / STRIDE / 6.0)
        t[..., 0] = np.maximum(t[..., 0], np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)))
        gx, gy = int(cx), int(cy)
        t[gy, gx, 0] = 1.0
        t[gy, gx, 1] = np.log(bw * WORK_MPP)
        t[gy, gx, 2] = np.log(bh * WORK_MPP)
        t[gy, gx, 3] = cx - gx - 0.5
        t[gy, gx, 4] = cy - gy - 0.5
        t[gy, gx, 5] = 1.0
    for gy0, gy1, gx0, gx1 in masked:
        t[gy0:gy1, gx0:gx1, 6] = 0.0
    # a whole cell's centre stays in the loss even where a neighbour's mask covers it
    t[..., 6] = np.maximum(t[..., 6], t[..., 5])
    return t


def prepare(
    sample: Sample, mpp: float, rng: np.random.Generator | None, edge_margin_um: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One (optionally augmented) canvas and its target for ``sample`` at estimated ``mpp``
    (``edge_margin_um``: see :func:`make_target`)."""
    rgb = read_rgb(sample.image_path).astype(np.float32)
    boxes = np.asarray(sample.wbc, float).reshape(-1, 4)
    m = mpp * float(np.exp(rng.uniform(-0.3, 0.3))) if rng is not None else mpp
    work, scale = resample(rgb, m, WORK_MPP)
    boxes = boxes * scale
    if rng is not None:
        work, boxes = _geometry(work, boxes, rng)
    canvas, boxes, valid = to_canvas(work, boxes, rng)
    if rng is not None:
        canvas = augment_colour(canvas, rng)
    return canvas, make_target(boxes, valid, edge_margin_um)


# ---------------------------------------------------------------- model


def feature_extractor(cache_dir: Path | None = None) -> Any:
    """Frozen EfficientNet-Lite0 up to ``block5c``: outputs at stride 8 (40 ch) and 16 (112 ch)."""
    import keras

    from hemato_model.training.backbone import build_backbone

    bb = build_backbone(input_px=None, cache_dir=cache_dir)
    ext = keras.Model(bb.input, [bb.get_layer(n).output for n in FEATURE_LAYERS], name="wbc_features")
    ext.trainable = False
    return ext


def build_head(width: int = 64) -> Any:
    """The head on (stride-8, stride-16) features: 5 output channels (see ``learned.CHANNELS``)."""
    import keras
    from keras import layers

    f8 = keras.Input((None, None, 40), name="f8")
    f16 = keras.Input((None, None, 112), name="f16")
    a = layers.Conv2D(width, 1, name="lat8")(f8)
    b = layers.UpSampling2D(2, interpolation="bilinear", name="up16")(layers.Conv2D(width, 1, name="lat16")(f16))
    x = layers.ReLU(name="merge_relu")(layers.Add(name="merge")([a, b]))
    for i in range(2):
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"head_conv{i}")(x)
    # CenterNet's prior: every cell starts at p = 0.1 (bias -2.19), which holds only while the
    # kernel's share is small; the frozen features are not normalised (std 5-7), so a default
    # kernel starts the logits at ±10.
    heat = layers.Conv2D(
        1,
        1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3),
        bias_initializer=keras.initializers.Constant(-2.19),
        name="heat",
    )(x)
    size = layers.Conv2D(2, 1, bias_initializer=keras.initializers.Constant(2.7), name="size")(x)
    off = layers.Conv2D(2, 1, name="offset")(x)
    out = layers.Concatenate(name="out")([heat, size, off])
    return keras.Model([f8, f16], out, name="wbc_head")


def detection_loss(y_true: Any, y_pred: Any) -> Any:
    """CenterNet focal loss on the heat map (valid cells only) + L1 on size and offset at centres."""
    from keras import ops

    heat_t, valid, centre = y_true[..., 0], y_true[..., 6], y_true[..., 5]
    logit = y_pred[..., 0]
    p = ops.sigmoid(logit)
    pos = ops.cast(heat_t >= 0.999, "float32") * valid
    neg = (1.0 - pos) * valid
    # log p and log(1 - p) from the logit: clipping p (CenterNet clamps it to [1e-4, 1 - 1e-4])
    # zeroes the gradient of every centre whose logit falls below -9.2, and a head whose heat
    # logits drift there early never recovers (the two-source leave-one-source-out heads).
    pos_loss = ops.log_sigmoid(logit) * (1 - p) ** 2 * pos
    neg_loss = ops.log_sigmoid(-logit) * p**2 * (1 - heat_t) ** 4 * neg
    n_pos = ops.maximum(ops.sum(pos), 1.0)
    focal = -(ops.sum(pos_loss) + ops.sum(neg_loss)) / n_pos
    n_c = ops.maximum(ops.sum(centre), 1.0)
    reg = ops.sum(ops.abs(y_pred[..., 1:5] - y_true[..., 1:5]) * centre[..., None]) / n_c
    return focal + reg


def full_model(extractor: Any, head: Any) -> Any:
    """Image in (float RGB 0..255, any size multiple of 16), head output out."""
    import keras

    clean = build_head()  # an uncompiled copy: the saved model carries no training loss
    clean.set_weights(head.get_weights())
    inp = keras.Input((None, None, 3), name="image")
    f8, f16 = extractor(inp)
    return keras.Model(inp, clean([f8, f16]), name="wbc_detector")


# ---------------------------------------------------------------- data cache and training


@dataclass
class FeatureCache:
    """Frozen features of every prepared canvas: ``f8``, ``f16``, ``target`` and the sample index."""

    f8: np.ndarray
    f16: np.ndarray
    target: np.ndarray
    index: np.ndarray


def _canvases(
    samples: Sequence[Sample], mpps: Sequence[float], n_aug: int, seed: int, edge_margin_um: float | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(sample index, canvas, target)``: each sample un-augmented once and ``n_aug`` times
    augmented, in one random sequence (the same canvases for the same seed)."""
    rng = np.random.default_rng(seed)
    for i, (s, m) in enumerate(zip(samples, mpps, strict=True)):
        for k in range(n_aug + 1):
            x, t = prepare(s, m, rng if k else None, edge_margin_um)
            yield i, x, t
        if (i + 1) % 100 == 0:
            log.info("canvases: %d/%d images", i + 1, len(samples))


def build_cache(
    samples: Sequence[Sample],
    mpps: Sequence[float],
    n_aug: int,
    extractor: Any,
    seed: int = 0,
    batch: int = 32,
    edge_margin_um: float | None = None,
) -> FeatureCache:
    """Features of each sample un-augmented once and ``n_aug`` times augmented."""
    f8s, f16s, targets, index = [], [], [], []
    pending_x: list[np.ndarray] = []

    def flush() -> None:
        if pending_x:
            a, b = extractor.predict(np.stack(pending_x), verbose=0, batch_size=batch)
            f8s.append(a.astype(np.float16))
            f16s.append(b.astype(np.float16))
            pending_x.clear()

    for i, x, t in _canvases(samples, mpps, n_aug, seed, edge_margin_um):
        pending_x.append(x)
        targets.append(t)
        index.append(i)
        if len(pending_x) >= 4 * batch:
            flush()
    flush()
    return FeatureCache(np.concatenate(f8s), np.concatenate(f16s), np.stack(targets), np.asarray(index))


def build_targets(
    samples: Sequence[Sample], mpps: Sequence[float], n_aug: int, seed: int, edge_margin_um: float | None
) -> np.ndarray:
    """The targets of :func:`build_cache`'s canvases (same seed, same order) under another
    border rule, without recomputing features."""
    return np.stack([t for _, _, t in _canvases(samples, mpps, n_aug, seed, edge_margin_um)])


def train_head(cache: FeatureCache, rows: np.ndarray, epochs: int = 30, seed: int = 0, batch: int = 32) -> Any:
    """Fit a fresh head on the cached rows ``rows``."""
    import keras

    keras.utils.set_random_seed(seed)
    head = build_head()
    steps = max(1, len(rows) // batch) * epochs
    sched = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, alpha=0.05)
    head.compile(optimizer=keras.optimizers.AdamW(sched, weight_decay=1e-4), loss=detection_loss)
    hist = head.fit(
        [cache.f8[rows].astype(np.float32), cache.f16[rows].astype(np.float32)],
        cache.target[rows],
        batch_size=batch,
        epochs=epochs,
        shuffle=True,
        verbose=0,
    )
    losses = [round(float(v), 4) for v in hist.history["loss"]]
    log.info("head: %d canvases, %d steps, loss by epoch %s", len(rows), steps, losses)
    return head


def estimate_mpps(samples: Sequence[Sample], fallback: float = 0.08) -> tuple[list[float], list[str]]:
    """Estimated µm/px of each sample's image (``fallback`` where none can be measured)."""
    from hemato_model.detection import estimate_mpp

    out, failed = [], []
    for s in samples:
        try:
            out.append(float(estimate_mpp(read_rgb(s.image_path))))
        except ValueError:
            out.append(fallback)
            failed.append(s.image_path.name)
    return out, failed


def predict_boxes(
    model: Any,
    samples: Sequence[Sample],
    mpps: Sequence[float],
    threshold: float,
    edge_margin_um: float | None = None,
) -> list[list[tuple[tuple[float, float, float, float], float]]]:
    """Boxes (input pixels) and scores for each sample with the full model; with
    ``edge_margin_um``, border cells are dropped as the detector does (:func:`decode`)."""
    out = []
    for s, m in zip(samples, mpps, strict=True):
        rgb = read_rgb(s.image_path).astype(np.float32)
        work, scale = resample(rgb, m, WORK_MPP)
        valid = work.shape[:2]
        y = np.asarray(model(pad_to(work, 16)[None], training=False))[0]
        found = decode(y, threshold, STRIDE, WORK_MPP, (int(valid[0]), int(valid[1])), edge_margin_um)
        out.append([((x0 / scale, y0 / scale, x1 / scale, y1 / scale), sc) for (x0, y0, x1, y1), sc in found])
    return out


Found = Sequence[Sequence[tuple[tuple[float, ...], float]]]


@dataclass(frozen=True)
class BorderScoring:
    """Annotated border cells are don't-care (:mod:`hemato_model.detection.border`): the margin
    in µm and each sample's µm/px (the estimate used at inference)."""

    edge_margin_um: float
    mpps: Sequence[float]


def score(
    samples: Sequence[Sample], found: Found, threshold: float, border: BorderScoring | None = None
) -> dict[str, Any]:
    """White-cell recall / precision under evaluate-detection's matching rule at ``threshold``;
    with ``border``, annotated border cells are don't-care (counted in ``n_ignored_true``)."""
    from hemato_model.training.detection_eval import DetectionScores

    sc = DetectionScores(kinds=("wbc",))
    for k, (s, f) in enumerate(zip(samples, found, strict=True)):
        whole: list[BBox] = list(s.wbc)
        cut: list[BBox] = []
        if border is not None:
            whole, cut = split_border(s.wbc, s.hw, margin_px(border.edge_margin_um, border.mpps[k]))
        pred = [("wbc", b) for b, p in f if p >= threshold]
        sc.add_image(pred, [("wbc", b) for b in whole], [("wbc", b) for b in cut])
    return sc.tallies["wbc"].as_dict()


#: Threshold policies (chosen on val splits, docs/validation.md "Border-cut cells"): the best F1,
#: or the highest threshold whose val recall is at least ``recall_floor``.
THRESHOLD_POLICIES = ("f1", "recall-floor")


def pick_threshold(
    samples: Sequence[Sample],
    found: Found,
    border: BorderScoring | None = None,
    policy: str = "f1",
    recall_floor: float = 0.97,
) -> float:
    """The score threshold on ``samples`` (a validation split) by ``policy``: ``f1`` = best F1,
    ties to the lower; ``recall-floor`` = the highest threshold with recall ≥ ``recall_floor``
    (the lowest searched when none reaches it)."""
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"policy must be one of {THRESHOLD_POLICIES}, got {policy!r}")
    grid = [float(t) for t in np.round(np.arange(0.1, 0.81, 0.05), 2)]
    if policy == "recall-floor":
        ok = [t for t in grid if (score(samples, found, t, border)["recall"] or 0.0) >= recall_floor]
        return max(ok) if ok else grid[0]
    best, best_f1 = 0.3, -1.0
    for thr in grid:
        m = score(samples, found, thr, border)
        p, r = m["precision"] or 0.0, m["recall"] or 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best_f1 + 1e-9:
            best, best_f1 = thr, f1
    return best


def save_detector(model: Any, out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.keras`` and ``model.json`` (with its SHA-256) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    meta = {**meta, "work_mpp": WORK_MPP, "stride": STRIDE, "sha256": sha256_of(out_dir / MODEL_FILE)}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
