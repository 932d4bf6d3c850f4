"""Transfer learning of the red-cell morphology classifier (``hematovision train-rbc``).

The network is EfficientNet-Lite0 with ImageNet weights (:func:`hemato_model.training.backbone.build_backbone`,
the white-cell model's family) **cut after block 5c** (112 channels, stride 16; 0.72 M of its 3.4 M
weights): red-cell morphology is shape and texture at the scale of one cell, which the middle
blocks already describe (frozen pooled features of block 5c classified the validation fields as well
as the full backbone's 1280-d features), and the cut keeps the model file at ~3 MB and training
within CPU reach. Then global average pooling, dropout and a 13-way softmax.

Two stages, as for the white-cell model (:mod:`hemato_model.training.classifier_training`):

1. **Head** on frozen features computed once (class-weighted, early stopping on validation loss).
2. **Fine-tuning** of every convolution of the cut backbone (BatchNorm kept in inference mode) on
   augmented crops: flips, free rotation, ±5 % zoom and ±4 % shift only (macrocyte/microcyte are
   size classes, so scale jitter stays near the uncertainty of the scale estimate), HED stain and
   colour jitter and resolution loss (:func:`hemato_model.preprocessing.make_augmenter`); warm-up then
   cosine decay; early stopping on validation loss restores the best weights; a wall-clock budget
   (``max_minutes``) ends it early on a slow machine.

Imbalance (normal 31 % of the cells, uncategorised 0.8 %): class weights ``(n / (k · n_c)) ** power``
normalised to mean 1 (``power`` 0.5 by default: the square root of inverse frequency, which lifts
rare classes without letting 153 uncategorised cells dominate the loss).

The split is **by field (image)**, stratified on the classes, with a fixed seed
(:func:`hemato_model.rbc.data.split_fields`), and written to ``split.json`` in the model directory:
no field has cells on two sides. The set has no patient IDs, so fields of one patient may still be
on two sides.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemato_model.rbc.data import (
    DEFAULT_RBC_CROP_UM,
    DEFAULT_RBC_INPUT_PX,
    RBC_CLASSES,
    ProgressFactory,
    RbcDataError,
    list_fields,
    load_crops,
    split_fields,
)
from hemato_model.training.classifier_training import compile_for_fine_tuning, fit_head_on_features

log = logging.getLogger(__name__)

RBC_MODEL_NAME = "rbc-effnetlite0"
#: Last backbone layer kept.
DEFAULT_CUT = "block5c_add"


@dataclass
class RbcTrainConfig:
    """Everything that defines a red-cell training run (recorded in ``model.json``)."""

    data_dir: str
    out_dir: str
    input_px: int = DEFAULT_RBC_INPUT_PX
    crop_um: float = DEFAULT_RBC_CROP_UM
    mpp: float | None = None
    scale_mode: str = "folder"
    seed: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    backbone: str = "efficientnet_lite0"
    cut: str = DEFAULT_CUT
    head_epochs: int = 60
    head_lr: float = 1e-3
    epochs: int = 12
    batch_size: int = 64
    finetune_lr: float = 1e-3
    warmup_epochs: int = 1
    dropout: float = 0.3
    patience: int = 3
    class_weight_power: float = 0.5
    zoom: float = 0.05
    shift: float = 0.04
    aug_strength: float = 0.8
    max_minutes: float = 24.0
    target_accuracy: float = 0.97
    threshold_floor: float = 0.4
    version: str = "1.0.0"
    name: str = RBC_MODEL_NAME
    #: background/context augmentation (:mod:`hemato_model.rbc.context`); off = the 1.0 recipe
    context: bool = False
    p_isolate: float = 0.5
    p_clutter: float = 0.4
    p_jpeg: float = 0.3
    #: start from this model directory's weights (trained on the same split) instead of ImageNet + head
    init_model: str | None = None


def rbc_class_weights(y: np.ndarray, n_classes: int, power: float) -> dict[int, float]:
    """``(n / (k · n_c)) ** power``, normalised to mean 1 over the classes present."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = (counts.sum() / (n_classes * np.maximum(counts, 1.0))) ** power
    w = w / w[counts > 0].mean()
    return {i: float(v) for i, v in enumerate(w)}


def build_rbc_model(cfg: RbcTrainConfig, n_classes: int, cache_dir: Path | None = None) -> tuple[Any, Any]:
    """(classifier, cut backbone): uint8/float RGB 0..255 -> Lite0 up to ``cfg.cut`` -> pool -> softmax."""
    import keras

    from hemato_model.training.backbone import build_backbone

    full = build_backbone(cfg.backbone, cfg.input_px, cache_dir)
    trunk = keras.Model(full.input, full.get_layer(cfg.cut).output, name=f"{cfg.backbone}_to_{cfg.cut.split('_')[0]}")
    trunk.trainable = False
    inputs = keras.Input((cfg.input_px, cfg.input_px, 3), name="crop")
    x = trunk(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="rbc_classifier"), trunk


def load_rbc_model_for_training(model_dir: Path) -> tuple[Any, Any]:
    """(classifier, its cut backbone) of a saved red-cell model, to train further."""
    import keras

    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    trunks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(trunks) != 1:
        raise RbcDataError(f"{model_dir}: not a red-cell model of this trainer (no single backbone)")
    return model, trunks[0]


def _predict(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def f(b: Any) -> Any:
        return model(tf.cast(b, tf.float32), training=False)

    return np.concatenate([np.asarray(f(x[i : i + batch])) for i in range(0, len(x), batch)])


def fit_head(
    model: Any, trunk: Any, data: dict[str, tuple[np.ndarray, np.ndarray]], cfg: RbcTrainConfig, verbose: int
) -> dict[str, Any]:
    """Stage 1: the pooled features of the frozen trunk once, then the head on them."""
    import keras

    t0 = time.time()
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)
    (x_tr, y_tr), (x_va, y_va) = data["train"], data["val"]
    f_tr, f_va = _predict(pooled, x_tr), _predict(pooled, x_va)
    t_features = time.time() - t0
    hist = fit_head_on_features(
        model,
        (f_tr, y_tr),
        (f_va, y_va),
        lr=cfg.head_lr,
        epochs=cfg.head_epochs,
        batch_size=128,
        class_weight=rbc_class_weights(y_tr, len(RBC_CLASSES), cfg.class_weight_power),
        patience=8,
        verbose=verbose,
    )
    return {
        "epochs": len(hist.history["loss"]),
        "val_accuracy": round(float(max(hist.history["val_accuracy"])), 4),
        "feature_seconds": round(t_features, 1),
        "seconds": round(time.time() - t0, 1),
    }


class _TimeBudget:
    """Keras callback factory: stop training once ``seconds`` have passed (checked after each epoch)."""

    @staticmethod
    def make(seconds: float) -> Any:
        import keras

        class TimeBudget(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.t0 = time.time()
                self.stopped = False

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                if time.time() - self.t0 > seconds:
                    self.stopped = True
                    self.model.stop_training = True

        return TimeBudget()


def fine_tune(
    model: Any,
    trunk: Any,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    cfg: RbcTrainConfig,
    verbose: int,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Stage 2: every convolution of the trunk trainable (BatchNorm frozen), augmented crops.

    ``context``: (glass colour (N, 3), centre-cell mask (N, H, W)) of each training crop, for the
    background/context augmentation (:mod:`hemato_model.rbc.context`) before the usual one."""
    import keras
    import tensorflow as tf

    from hemato_model.preprocessing import make_augmenter

    trunk.trainable = True
    for layer in trunk.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    (x_tr, y_tr), (x_va, y_va) = data["train"], data["val"]
    augment = make_augmenter(cfg.seed, cfg.aug_strength, zoom=cfg.zoom, shift=cfg.shift)
    if context is None:
        train_ds = (
            tf.data.Dataset.from_tensor_slices((x_tr, y_tr))
            .shuffle(len(x_tr), seed=cfg.seed, reshuffle_each_iteration=True)
            .batch(cfg.batch_size)
            .map(lambda x, y: (augment(tf.cast(x, tf.float32)), y), num_parallel_calls=1)
            .prefetch(2)
        )
    else:
        from hemato_model.rbc.context import make_context_augmenter

        relight = make_context_augmenter(cfg.seed, cfg.p_isolate, cfg.p_clutter, p_jpeg=cfg.p_jpeg)
        glass_tr, mask_tr = context
        train_ds = (
            tf.data.Dataset.from_tensor_slices((x_tr, glass_tr, mask_tr, y_tr))
            .shuffle(len(x_tr), seed=cfg.seed, reshuffle_each_iteration=True)
            .batch(cfg.batch_size)
            .map(lambda x, g, m, y: (augment(relight(x, g, m)), y), num_parallel_calls=1)
            .prefetch(2)
        )
    val_ds = tf.data.Dataset.from_tensor_slices((x_va, y_va)).batch(256).map(lambda x, y: (tf.cast(x, tf.float32), y))
    compile_for_fine_tuning(model, len(x_tr), cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.finetune_lr)
    budget = _TimeBudget.make(cfg.max_minutes * 60.0)
    t0 = time.time()
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        class_weight=rbc_class_weights(y_tr, len(RBC_CLASSES), cfg.class_weight_power),
        verbose=verbose,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
            budget,
        ],
    )
    return {
        "epochs": len(hist.history["loss"]),
        "stopped_by_time_budget": bool(budget.stopped),
        "val_accuracy": [round(float(a), 4) for a in hist.history["val_accuracy"]],
        "val_loss": [round(float(a), 4) for a in hist.history["val_loss"]],
        "seconds": round(time.time() - t0, 1),
    }


def train_rbc(
    cfg: RbcTrainConfig,
    progress: ProgressFactory | None = None,
    verbose: int = 1,
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and write a red-cell model directory (``model.keras``, ``model.json``, ``split.json``).

    Returns ``model.json``'s content.

    Raises:
        RbcDataError: a missing or malformed data folder, or too few fields to split.
    """
    from hemato_model.training.classifier_training import choose_threshold, configure_tensorflow, save_model_dir
    from hemato_model.training.evaluation import classification_metrics

    t_start = time.time()
    fields = list_fields(cfg.data_dir)
    if len(fields) < 10:
        raise RbcDataError(f"{cfg.data_dir}: {len(fields)} labelled fields; need at least 10 to split by field")
    split = split_fields(fields, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    configure_tensorflow(threads, cfg.seed)
    crops = load_crops(fields, cfg.crop_um, cfg.input_px, cfg.mpp, cfg.scale_mode, progress)
    t_data = time.time() - t_start
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[str, dict[str, int]] = {}
    for part, names in split.items():
        sub = crops.subset(names)
        data[part] = (sub.x, sub.y)
        counts[part] = {c: int((sub.y == i).sum()) for i, c in enumerate(RBC_CLASSES)}
    split_doc = {
        "unit": "field (image): all labelled cells of a field are in one part",
        "seed": cfg.seed,
        "method": "greedy iterative stratification on class counts (hemato_model.rbc.data.split_fields)",
        "data_dir": str(cfg.data_dir),
        "classes": list(RBC_CLASSES),
        "fractions": {"val": cfg.val_fraction, "test": cfg.test_fraction},
        "cells": counts,
        **split,
    }
    (out_dir / "split.json").write_text(json.dumps(split_doc, indent=1) + "\n")

    context = None
    glass_rgb = None
    if cfg.context:
        from hemato_model.rbc.context import CANONICAL_GLASS_RGB, centre_cell_masks, normalise_glass

        tr = crops.subset(split["train"])
        context = (tr.crop_glass(), centre_cell_masks(tr.x, tr.crop_glass(), cfg.crop_um))
        glass_rgb = list(CANONICAL_GLASS_RGB)
        # validation (early stopping, threshold) as the pipeline sees crops: relit to the canonical glass
        va = crops.subset(split["val"])
        data["val"] = (normalise_glass(va.x, va.crop_glass(), CANONICAL_GLASS_RGB), va.y)
    if cfg.init_model:
        model, trunk = load_rbc_model_for_training(Path(cfg.init_model))
        head_info: dict[str, Any] = {"init_model": str(cfg.init_model)}
    else:
        model, trunk = build_rbc_model(cfg, len(RBC_CLASSES), cache_dir)
        head_info = fit_head(model, trunk, data, cfg, verbose)
    ft_info: dict[str, Any] = {"epochs": 0}
    if cfg.epochs > 0:
        ft_info = fine_tune(model, trunk, data, cfg, verbose, context)

    x_va, y_va = data["val"]
    val_proba = _predict(model, x_va)
    val = classification_metrics(
        [RBC_CLASSES[i] for i in y_va], [RBC_CLASSES[i] for i in val_proba.argmax(1)], RBC_CLASSES
    )
    threshold = choose_threshold(val_proba, y_va, cfg.target_accuracy, cfg.threshold_floor)
    seconds = round(time.time() - t_start, 1)
    meta = {
        "name": cfg.name,
        "version": cfg.version,
        "kind": "red-cell morphology",
        "classes": list(RBC_CLASSES),
        "input_px": cfg.input_px,
        "crop_um": cfg.crop_um,
        "threshold": round(threshold, 6),
        "backbone": f"{cfg.backbone} (ImageNet) cut after {cfg.cut}",
        "preprocessing": {
            "crop": "square of crop_um µm around the labelled red-cell centre, resampled to input_px "
            "(hemato_model.preprocessing.crop_cell); green scale-bar overlay painted out first",
            "input": "uint8 RGB crops; the model casts to float 0..255 and normalises (x-127)/128 inside",
            "scale": crops.scale.summary(),
            "augmentation": (
                f"background/context (hemato_model.rbc.context): cell isolated p={cfg.p_isolate}, a neighbour "
                f"cell multiplied in p={cfg.p_clutter}, relit by a random glass colour (canonical p=0.3), JPEG "
                f"p={cfg.p_jpeg}; then "
                if cfg.context
                else ""
            )
            + f"flips, free rotation, zoom ±{cfg.zoom:.0%}, shift ±{cfg.shift:.0%}, HED stain "
            f"jitter, channel gain/offset, brightness/contrast/saturation/hue (strength {cfg.aug_strength}), "
            "random resolution loss",
            **(
                {
                    "glass_rgb": glass_rgb,
                    "relight_to_glass": True,
                    "glass_normalisation": "each crop is relit per channel by glass_rgb / its field's glass colour "
                    "(95th percentile of the field) before the model, in the pipeline, in evaluate-rbc and for "
                    "the validation crops; training relit crops to random glass colours",
                }
                if glass_rgb is not None
                else {}
            ),
        },
        "split": f"by field (image), stratified, seed {cfg.seed}: split.json",
        "training": {
            "config": asdict(cfg),
            "n_cells": {p: int(len(v[1])) for p, v in data.items()},
            "n_fields": {p: len(v) for p, v in split.items()},
            "class_weights": {
                c: round(w, 3)
                for c, w in zip(
                    RBC_CLASSES,
                    rbc_class_weights(data["train"][1], len(RBC_CLASSES), cfg.class_weight_power).values(),
                    strict=True,
                )
            },
            "head": head_info,
            "fine_tune": ft_info,
            "data_seconds": round(t_data, 1),
            "seconds": seconds,
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "threshold_rule": f"lowest top-probability cut-off >= {cfg.threshold_floor} keeping "
            f">= {cfg.target_accuracy:.0%} validation accuracy on retained cells",
        },
    }
    meta = save_model_dir(model, out_dir, meta)
    log.info(
        "trained %s in %.0f s, val accuracy %.4f, macro-F1 %.4f", out_dir, seconds, val["accuracy"], val["macro_f1"]
    )
    return meta
