"""Transfer learning of the white-cell classifier (``hematovision train``).

Two stages, the standard recipe of Keras' transfer-learning guide (Chollet, "Transfer learning &
fine-tuning", keras.io) and of Yosinski et al., "How transferable are features in deep neural
networks?", NeurIPS 2014:

1. **Head.** The ImageNet backbone is frozen; its pooled features of the training crops are
   computed once and a new softmax head (dropout + dense) is fitted on them, with class weights and
   early stopping on the validation loss.
2. **Fine-tuning.** The top blocks (from ``unfreeze_from``, BatchNorm layers excluded) are unfrozen
   and trained end to end at a low learning rate on augmented crops
   (:func:`hemato_model.preprocessing.make_augmenter`); the backbone is called with
   ``training=False`` so its BatchNorm statistics stay those of ImageNet. Early stopping restores
   the best weights.

The data are an image folder (one subfolder per class, one centred cell per image, e.g. PBC). The
split is by file, stratified, with a fixed seed, and is written to ``split.json`` in the model
directory; the validation part chooses the low-confidence threshold, the test part is never seen.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hemato_model.preprocessing import DEFAULT_CROP_UM, DEFAULT_INPUT_PX, load_centered_crop

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
MODEL_NAME = "wbc-effnetlite0"

ProgressFactory = Callable[[int, str], Any]


class DataError(ValueError):
    """The training/evaluation data folder is missing or unusable."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in ``model.json``)."""

    data_dir: str
    out_dir: str
    backbone: str = "efficientnet_lite0"
    input_px: int = DEFAULT_INPUT_PX
    crop_um: float = DEFAULT_CROP_UM
    mpp: float = 0.08
    seed: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    head_epochs: int = 200
    epochs: int = 12
    batch_size: int = 32
    head_lr: float = 1e-3
    finetune_lr: float = 3e-4
    unfreeze_from: str = "block3a"
    warmup_epochs: int = 1
    dropout: float = 0.2
    patience: int = 6
    target_accuracy: float = 0.99
    threshold_floor: float = 0.5
    version: str = "1.0.0"
    name: str = MODEL_NAME
    limit_per_class: int | None = None
    init_from: str | None = None
    aug_strength: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    extra_data: str | None = None
    min_resolution: float | None = None
    aug_profile: str = "standard"
    #: Scan-storage augmentation (:mod:`hemato_model.training.scan_storage`): half of each batch as a
    #: scan at up to this many µm/px stored as JPEG; None: off.
    scan_storage_mpp: float | None = None


def list_image_folder(data_dir: str | Path) -> tuple[list[Path], list[str]]:
    """All images of an image folder as (paths, class names), sorted by class then file name.

    Raises:
        DataError: the folder does not exist or holds no class subfolder with images.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    paths: list[Path] = []
    labels: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        paths.extend(files)
        labels.extend([sub.name] * len(files))
    if not paths:
        raise DataError(f"no images in class subfolders of {root}")
    return paths, labels


def split_files(labels: Sequence[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """Stratified split of indices into train/val/test with a fixed seed."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    labels_arr = np.asarray(labels)
    for cls in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        parts["test"].extend(idx[:n_test].tolist())
        parts["val"].extend(idx[n_test : n_test + n_val].tolist())
        parts["train"].extend(idx[n_test + n_val :].tolist())
    return {k: sorted(v) for k, v in parts.items()}


def load_crops(
    paths: Sequence[Path],
    mpp: float,
    crop_um: float,
    input_px: int,
    progress: ProgressFactory | None = None,
    label: str = "Cutting crops",
) -> np.ndarray:
    """Centred ``crop_um`` crops of image files as uint8 (N, input_px, input_px, 3)."""
    out = np.empty((len(paths), input_px, input_px, 3), dtype=np.uint8)
    bar = progress(len(paths), label) if progress else None
    try:
        for i, p in enumerate(paths):
            out[i] = load_centered_crop(p, mpp, crop_um, input_px)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return out


def configure_tensorflow(threads: int | None, seed: int) -> None:
    """Thread limits (before TF starts) and every seed (Python, numpy, TF/Keras)."""
    import keras

    from hemato_model.runtime import limit_tensorflow_threads

    limit_tensorflow_threads(threads)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    keras.utils.set_random_seed(seed)


def build_model(
    backbone_name: str, input_px: int, n_classes: int, dropout: float, cache_dir: Path | None = None
) -> tuple[Any, Any]:
    """(classifier model, its backbone): float RGB 0..255 -> backbone (inference-mode BN) -> softmax.

    ``cache_dir`` is where the backbone's converted ImageNet weights are cached
    (:func:`hemato_model.training.backbone.imagenet_weights`).
    """
    import keras

    from hemato_model.training.backbone import build_backbone

    backbone = build_backbone(backbone_name, input_px, cache_dir)
    backbone.trainable = False
    inputs = keras.Input((input_px, input_px, 3), name="crop")
    features = backbone(inputs, training=False)
    x = keras.layers.Dropout(dropout, name="head_dropout")(features)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="wbc_classifier"), backbone


def load_for_training(
    model_dir: Path, classes: list[str], cfg: TrainConfig, cache_dir: Path | None = None
) -> tuple[Any, Any, bool]:
    """(model, backbone, head_needs_fit) of an existing model directory, to continue training it.

    With the same classes the model is returned as it is. When this run adds classes (e.g.
    ``blast`` from ``--extra-data``) a new model is built: the backbone weights are copied, the
    head's columns of the known classes are copied by name and each new class starts from the
    mean of the old columns; ``head_needs_fit`` is then True (the head stage runs first).

    Raises:
        DataError: the input size differs, or the old model has a class this run lacks.
    """
    import keras

    meta = json.loads((model_dir / "model.json").read_text())
    if int(meta["input_px"]) != cfg.input_px:
        raise DataError(f"{model_dir}: input_px differs from this training run")
    old = keras.models.load_model(model_dir / "model.keras", compile=False, safe_mode=True)
    if meta["classes"] == classes:
        return old, old.get_layer(cfg.backbone), False
    missing = set(meta["classes"]) - set(classes)
    if missing:
        raise DataError(f"{model_dir}: classes {sorted(missing)} are not in this training run")
    model, backbone = build_model(cfg.backbone, cfg.input_px, len(classes), cfg.dropout, cache_dir)
    backbone.set_weights(old.get_layer(cfg.backbone).get_weights())
    kernel, bias = old.get_layer("head").get_weights()
    new_kernel = np.repeat(kernel.mean(axis=1, keepdims=True), len(classes), axis=1)
    new_bias = np.full(len(classes), float(bias.mean()), dtype=bias.dtype)
    for j, c in enumerate(classes):
        if c in meta["classes"]:
            i = meta["classes"].index(c)
            new_kernel[:, j], new_bias[j] = kernel[:, i], bias[i]
    model.get_layer("head").set_weights([new_kernel, new_bias])
    return model, backbone, True


def read_extra_data(extra_dir: str | Path, cfg: TrainConfig) -> tuple[list[Path], list[str], dict[str, list[int]]]:
    """Crops of an extra class folder (e.g. ``hemato_model.training.blast_data``'s output) and their split.

    The folder holds ``<class>/<crop>`` images already cut at the model's scale (``input_px``
    pixels = ``crop_um`` µm). Its own ``split.json`` (lists ``train``/``val``/``test`` of relative
    paths, e.g. split by field group) is used when present; otherwise the files are split like
    the main data.

    Raises:
        DataError: no images, or a ``split.json`` made for another crop size.
    """
    root = Path(extra_dir)
    paths, labels = list_image_folder(root)
    rel = [str(p.resolve().relative_to(root.resolve())) for p in paths]
    split_path = root / "split.json"
    if split_path.is_file():
        doc = json.loads(split_path.read_text())
        if (
            float(doc.get("crop_um", cfg.crop_um)) != cfg.crop_um
            or int(doc.get("input_px", cfg.input_px)) != cfg.input_px
        ):
            raise DataError(f"{split_path}: crops were cut at another crop_um/input_px than this run's")
        index = {r: i for i, r in enumerate(rel)}
        split = {k: sorted(index[r] for r in doc.get(k, []) if r in index) for k in ("train", "val", "test")}
    else:
        split = split_files(labels, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    return paths, labels, split


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, normalised to mean 1 (balanced data -> all 1)."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    weights = counts.sum() / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def choose_threshold(proba: np.ndarray, y: np.ndarray, target_accuracy: float, floor: float) -> float:
    """Lowest top-probability cut-off (≥ ``floor``) whose retained cells reach ``target_accuracy``.

    On validation data: cells under the cut-off go to the ``unidentified`` bucket. When no cut-off
    reaches the target, the one with the best retained accuracy is used.
    """
    top = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    candidates = np.unique(np.concatenate([[floor], top[top >= floor]]))
    best_t, best_acc = floor, -1.0
    for t in candidates:
        keep = top >= t
        if keep.sum() == 0:
            break
        acc = correct[keep].mean()
        if acc >= target_accuracy:
            return float(t)
        if acc > best_acc:
            best_t, best_acc = float(t), float(acc)
    return best_t


def _features(backbone: Any, x: np.ndarray, batch: int) -> np.ndarray:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def f(b: Any) -> Any:
        return backbone(tf.cast(b, tf.float32), training=False)

    return np.concatenate([np.asarray(f(x[i : i + batch])) for i in range(0, len(x), batch)])


def fit_head(
    model: Any,
    backbone: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    verbose: int,
) -> dict[str, Any]:
    """Stage 1: fit the head on frozen-backbone features (computed once)."""

    n_classes = int(model.outputs[0].shape[-1])
    t0 = time.time()
    f_train = _features(backbone, x_train, 64)
    f_val = _features(backbone, x_val, 64)
    log.info("features of %d+%d crops in %.0f s", len(f_train), len(f_val), time.time() - t0)
    hist = fit_head_on_features(
        model,
        (f_train, y_train),
        (f_val, y_val),
        lr=cfg.head_lr,
        epochs=cfg.head_epochs,
        batch_size=64,
        class_weight=class_weights(y_train, n_classes),
        patience=10,
        verbose=verbose,
    )
    return {
        "epochs": len(hist.history["loss"]),
        "val_accuracy": float(max(hist.history["val_accuracy"])),
        "seconds": round(time.time() - t0, 1),
    }


def fit_head_on_features(
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    class_weight: dict[int, float],
    patience: int,
    verbose: int,
) -> Any:
    """Fit ``model``'s head (its ``head_dropout`` and ``head`` layers, shared with the model, so the
    model gets the weights) on pooled features computed once from the frozen backbone; early
    stopping on the validation loss keeps the best weights. Returns the Keras history. Shared by the
    white-cell and the red-cell trainers."""
    import keras

    inp = keras.Input((train[0].shape[1],))
    head = keras.Model(inp, model.get_layer("head")(model.get_layer("head_dropout")(inp)))
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return head.fit(
        train[0],
        train[1],
        validation_data=val,
        epochs=epochs,
        batch_size=batch_size,
        class_weight=class_weight,
        verbose=verbose,
        shuffle=True,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)],
    )


def compile_for_fine_tuning(
    model: Any,
    n_train: int,
    batch_size: int,
    epochs: int,
    warmup_epochs: int,
    lr: float,
    loss: str = "sparse_categorical_crossentropy",
) -> None:
    """Adam with a linear warm-up from lr/10 (the fresh gradients would otherwise wreck the trained
    head), then cosine decay to 5 % (Loshchilov & Hutter, "SGDR", ICLR 2017; Goyal et al. 2017
    warm-up); sparse cross-entropy (categorical for soft targets). The white-cell and red-cell
    fine-tuning stages share it."""
    import keras

    per_epoch = max(1, int(np.ceil(n_train / batch_size)))
    steps = per_epoch * epochs
    warmup = min(steps // 2, per_epoch * warmup_epochs)
    schedule = keras.optimizers.schedules.CosineDecay(
        lr / 10, decay_steps=max(1, steps - warmup), alpha=0.05, warmup_target=lr, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=["accuracy"])


def fine_tune(
    model: Any,
    backbone: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    verbose: int,
    soft_targets: np.ndarray | None = None,
) -> dict[str, Any]:
    """Stage 2: unfreeze the top blocks and train on augmented crops at a low learning rate.

    ``soft_targets`` (one row of class probabilities per training crop), when given, replace the
    hard labels ``y_train`` as the training targets (the class weights still follow ``y_train``):
    the lab fine-tune uses them to keep the parent model's answers on the public cells."""
    import keras
    import tensorflow as tf

    from hemato_model.preprocessing import make_augmenter

    backbone.trainable = True
    names = [layer.name for layer in backbone.layers]
    start = next((i for i, n in enumerate(names) if n.startswith(cfg.unfreeze_from)), None)
    if start is None:
        raise ValueError(f"backbone has no layer starting with {cfg.unfreeze_from!r}")
    n_trainable = 0
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        n_trainable += int(layer.trainable and bool(layer.weights))
    log.info("fine-tuning %d backbone layers from %s", n_trainable, cfg.unfreeze_from)

    n_classes = int(model.outputs[0].shape[-1])
    if cfg.aug_profile == "domain":
        from hemato_model.training.stain_augmentation import make_domain_augmenter

        base_augment = make_domain_augmenter(cfg.seed, cfg.aug_strength)
        # Model selection on the validation crops plus a stain-shifted copy of them (fixed seed), so
        # that early stopping does not simply keep the least-changed, most PBC-like epoch.
        shift = make_domain_augmenter(cfg.seed + 1000, cfg.aug_strength)
        shifted = np.concatenate(
            [np.asarray(shift(tf.cast(x_val[i : i + 64], tf.float32))) for i in range(0, len(x_val), 64)]
        )
        x_val = np.concatenate([x_val, np.rint(shifted).astype(np.uint8)])
        y_val = np.concatenate([y_val, y_val])
    elif cfg.aug_profile == "standard":
        base_augment = make_augmenter(cfg.seed, cfg.aug_strength)
    else:
        raise ValueError(f"unknown augmentation profile {cfg.aug_profile!r}")
    augment = base_augment
    if cfg.min_resolution:
        # Extra resolution loss (down-sampling of half the batch to min_resolution..1 of the side and
        # back, before the usual augmentation): camera fields such as the ALL set are cut from
        # ~50-90 px of a 224-px field and up-sampled, so without it "blurred" alone could mean "blast".
        gen = tf.random.Generator.from_seed(cfg.seed + 11)
        low = float(cfg.min_resolution)

        def augment(x: Any) -> Any:
            size = tf.shape(x)[1:3]
            factor = gen.uniform((), low, 1.0)
            small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * factor, tf.int32), 8)
            blurred = tf.image.resize(tf.image.resize(x, small, method="area"), size, method="bicubic")
            pick = tf.cast(gen.uniform((tf.shape(x)[0], 1, 1, 1)) < 0.5, tf.float32)
            return base_augment(tf.clip_by_value(pick * blurred + (1.0 - pick) * x, 0.0, 255.0))

    if cfg.scan_storage_mpp:
        augment, x_val, y_val = _with_scan_storage(augment, x_val, y_val, cfg.scan_storage_mpp, cfg.crop_um, cfg.seed)

    weights = class_weights(y_train, n_classes)
    if soft_targets is None:
        targets: np.ndarray = y_train
        val_targets: np.ndarray = y_val
        loss = "sparse_categorical_crossentropy"
    else:
        if soft_targets.shape != (len(x_train), n_classes):
            raise ValueError(f"soft targets of shape {soft_targets.shape}, expected {(len(x_train), n_classes)}")
        targets = soft_targets.astype(np.float32)
        val_targets = np.eye(n_classes, dtype=np.float32)[y_val]
        loss = "categorical_crossentropy"
    sample_w = np.array([weights[int(c)] for c in y_train], dtype=np.float32)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_train, targets, sample_w))
        .shuffle(len(x_train), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .map(lambda x, y, w: (augment(tf.cast(x, tf.float32)), y, w), num_parallel_calls=1)
        .prefetch(2)
    )
    val_ds = (
        tf.data.Dataset.from_tensor_slices((x_val, val_targets)).batch(64).map(lambda x, y: (tf.cast(x, tf.float32), y))
    )
    compile_for_fine_tuning(
        model, len(x_train), cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.finetune_lr, loss=loss
    )
    t0 = time.time()
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)],
    )
    return {
        "epochs": len(hist.history["loss"]),
        "val_accuracy": [round(float(a), 4) for a in hist.history["val_accuracy"]],
        "val_loss": [round(float(a), 4) for a in hist.history["val_loss"]],
        "seconds": round(time.time() - t0, 1),
    }


def _with_scan_storage(
    augment: Callable[[Any], Any], x_val: np.ndarray, y_val: np.ndarray, max_mpp: float, crop_um: float, seed: int
) -> tuple[Callable[[Any], Any], np.ndarray, np.ndarray]:
    """``augment`` preceded by the scan-storage augmentation (scans up to ``max_mpp`` µm/px), and the
    validation crops plus a stored copy of them (fixed seed), so that early stopping does not keep
    the least-changed epoch."""
    import tensorflow as tf

    from hemato_model.training.scan_storage import stored_scans

    rng = np.random.default_rng(seed + 23)

    def store(x: np.ndarray) -> np.ndarray:
        crops = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return stored_scans(crops, crop_um, max_mpp, rng).astype(np.float32)

    def with_storage(x: Any) -> Any:
        y = tf.numpy_function(store, [x], tf.float32)
        y.set_shape(x.shape)
        return augment(y)

    val_copy = stored_scans(x_val, crop_um, max_mpp, np.random.default_rng(seed + 1023), share=1.0)
    return with_storage, np.concatenate([x_val, val_copy]), np.concatenate([y_val, y_val])


def _scan_storage_text(max_mpp: float) -> str:
    """The scan-storage augmentation as ``model.json`` records it."""
    from hemato_model.training.scan_storage import JPEG_QUALITY, SCAN_MPP_MIN

    return (
        f"; scan storage (hemato_model.training.scan_storage): half of each batch as a scan at "
        f"{SCAN_MPP_MIN:g}-{max_mpp:g} um/px stored as JPEG {JPEG_QUALITY[0]}-{JPEG_QUALITY[1]} (4:2:0)"
    )


def save_model_dir(model: Any, out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.keras`` and ``model.json`` (with the sha256 of the model file)."""
    import keras

    from hemato_model.classifier import sha256_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.tmp.keras"
    # A fresh, uncompiled functional wrapper: the file holds weights only, no optimizer state.
    keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)
    os.replace(tmp, out_dir / "model.keras")
    meta = dict(meta)
    meta["sha256"] = sha256_file(out_dir / "model.keras")
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def train(
    cfg: TrainConfig,
    progress: ProgressFactory | None = None,
    verbose: int = 1,
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and write a model directory; returns ``model.json``'s content plus timing.

    ``cache_dir`` is where the backbone's converted ImageNet weights are cached (``settings.cache_dir``;
    None: ``~/.cache/hematovision``). It is not part of the run's record.

    Raises:
        DataError: missing or empty data folder, or fewer than two classes.
    """
    t_start = time.time()
    paths, labels = list_image_folder(cfg.data_dir)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"{cfg.data_dir}: need at least two class subfolders, found {classes}")
    if cfg.limit_per_class:
        keep: list[int] = []
        for c in classes:
            keep.extend([i for i, lab in enumerate(labels) if lab == c][: cfg.limit_per_class])
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    configure_tensorflow(threads, cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_root = Path(cfg.data_dir).resolve()
    # The main data's split depends on its own files only, so adding extra data leaves it unchanged.
    split = split_files(labels, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    rel = [str(p.resolve().relative_to(data_root)) for p in paths]
    split_doc: dict[str, Any] = {
        "seed": cfg.seed,
        "data_dir": str(cfg.data_dir),
        "classes": classes,
        "fractions": {"val": cfg.val_fraction, "test": cfg.test_fraction},
        **{k: [rel[i] for i in v] for k, v in split.items()},
    }
    x_all = load_crops(paths, cfg.mpp, cfg.crop_um, cfg.input_px, progress)
    if cfg.extra_data:
        e_paths, e_labels, e_split = read_extra_data(cfg.extra_data, cfg)
        e_root = Path(cfg.extra_data).resolve()
        e_rel = [str(p.resolve().relative_to(e_root)) for p in e_paths]
        split_doc["extra"] = {
            "data_dir": str(cfg.extra_data),
            "mpp": cfg.crop_um / cfg.input_px,
            **{k: [e_rel[i] for i in v] for k, v in e_split.items()},
        }
        offset = len(paths)
        for k in split:
            split[k] = split[k] + [offset + i for i in e_split[k]]
        x_all = np.concatenate(
            [
                x_all,
                load_crops(
                    e_paths, cfg.crop_um / cfg.input_px, cfg.crop_um, cfg.input_px, progress, label="Extra crops"
                ),
            ]
        )
        paths, labels = paths + e_paths, labels + e_labels
        classes = sorted(set(labels))
        split_doc["classes"] = classes
    (out_dir / "split.json").write_text(json.dumps(split_doc, indent=1) + "\n")

    y_all = np.array([classes.index(lab) for lab in labels])
    tr, va = np.array(split["train"]), np.array(split["val"])
    if len(va) == 0:
        raise DataError("validation split is empty: add images")
    if cfg.init_from:
        model, backbone, needs_head = load_for_training(Path(cfg.init_from), classes, cfg, cache_dir)
        head_info: dict[str, Any] = {"init_from": str(cfg.init_from)}
        if needs_head:
            head_info.update(fit_head(model, backbone, x_all[tr], y_all[tr], x_all[va], y_all[va], cfg, verbose))
    else:
        model, backbone = build_model(cfg.backbone, cfg.input_px, len(classes), cfg.dropout, cache_dir)
        head_info = fit_head(model, backbone, x_all[tr], y_all[tr], x_all[va], y_all[va], cfg, verbose)
    ft_info: dict[str, Any] = {"epochs": 0}
    if cfg.epochs > 0:
        ft_info = fine_tune(model, backbone, x_all[tr], y_all[tr], x_all[va], y_all[va], cfg, verbose)

    import tensorflow as tf

    val_proba = np.concatenate(
        [np.asarray(model(tf.cast(x_all[va][i : i + 64], tf.float32), training=False)) for i in range(0, len(va), 64)]
    )
    val_acc = float((val_proba.argmax(1) == y_all[va]).mean())
    threshold = choose_threshold(val_proba, y_all[va], cfg.target_accuracy, cfg.threshold_floor)
    val_unid = float((val_proba.max(1) < threshold).mean())
    seconds = round(time.time() - t_start, 1)
    meta = {
        "name": cfg.name,
        "version": cfg.version,
        "classes": classes,
        "input_px": cfg.input_px,
        "crop_um": cfg.crop_um,
        "threshold": round(threshold, 6),
        "backbone": cfg.backbone,
        "preprocessing": {
            "crop": "square of crop_um µm around the cell centre, resampled to input_px "
            "(hemato_model.preprocessing.crop_cell)",
            "input": "uint8 RGB crops; the model casts to float 0..255 and normalises (x-127)/128 inside",
            "training_mpp": cfg.mpp,
            "augmentation": "flips, rotation, zoom ±15%, shift ±6%, HED stain jitter, channel gain/offset, "
            "brightness/contrast/saturation/hue, random resolution loss"
            + (f" (extra: down to {cfg.min_resolution:g} of the side)" if cfg.min_resolution else "")
            + (_scan_storage_text(cfg.scan_storage_mpp) if cfg.scan_storage_mpp else "")
            + (
                "; domain profile (hemato_model.training.stain_augmentation): zoom ±25%, RGB optical-density "
                "gain 0.6-1.5 / offset ±0.1, per-channel gamma 0.7-1.4, hue ±0.12, 10% grayscale, "
                "Gaussian blur sigma 0-1.6 px, JPEG quality 30-90"
                if cfg.aug_profile == "domain"
                else ""
            ),
            **({"extra_data": "crops already at model scale from " + str(cfg.extra_data)} if cfg.extra_data else {}),
        },
        "training": {
            "config": asdict(cfg),
            "n_train": int(len(tr)),
            "n_val": int(len(va)),
            "n_test": int(len(split["test"])),
            "n_per_class_train": {c: int((y_all[tr] == i).sum()) for i, c in enumerate(classes)},
            "head": head_info,
            "fine_tune": ft_info,
            "seconds": seconds,
            "val_accuracy": round(val_acc, 4),
            "threshold_rule": f"lowest top-probability cut-off >= {cfg.threshold_floor} keeping "
            f">= {cfg.target_accuracy:.0%} validation accuracy on retained cells",
            "val_unidentified_rate": round(val_unid, 4),
        },
    }
    meta = save_model_dir(model, out_dir, meta)
    log.info("trained %s in %.0f s, val accuracy %.4f, threshold %.3f", out_dir, seconds, val_acc, threshold)
    return meta
