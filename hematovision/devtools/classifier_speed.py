"""Classified cells per second: a classifier vs Keras ResNet50 at 224 px, same crops, same run
(``hematovision bench-classifier``, ``benchmarks/classifier_speed.py``).

Both models run batched inference compiled in a ``tf.function`` (graph mode), after a warm-up pass,
with the same TensorFlow thread count; each figure is the best of ``repeats`` timed passes over the
same ``n`` real PBC crops (cut by ``crop_cell`` at the model's ``crop_um``; ResNet50 gets them
resampled to 224×224). ResNet50 is built with random weights (``weights=None``): its speed does not
depend on them. The time to cut crops is not included.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def _crops(data_root: Path, n: int, crop_um: float, px: int) -> np.ndarray:
    from hemato_model.preprocessing import load_centered_crop
    from hematovision.core.datasets import PBC_MPP, pbc_root

    files = sorted(pbc_root(data_root).glob("*/*.jpg"))[::7][:n]
    if not files:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8)
    crops = np.stack([load_centered_crop(f, PBC_MPP, crop_um, px) for f in files])
    reps = int(np.ceil(n / len(crops)))
    return np.concatenate([crops] * reps)[:n]


def _time(fn: Any, batches: list[np.ndarray], repeats: int) -> float:
    for b in batches[:2]:
        np.asarray(fn(b))  # warm-up / tracing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            np.asarray(fn(b))
        best = min(best, time.perf_counter() - t0)
    return best


def run_benchmark(
    model_dir: str | Path, data_root: Path, n: int = 512, threads: int = 2, batch: int = 64, repeats: int = 3
) -> dict[str, Any]:
    """Measure both models in this process and return the JSON-able result (crops from the PBC
    images under ``data_root``; random pixels where they are missing)."""
    from hemato_model.runtime import limit_tensorflow_threads

    limit_tensorflow_threads(threads)
    import keras
    import tensorflow as tf

    from hemato_model.classifier import Classifier

    clf = Classifier.load(model_dir)
    crops = _crops(Path(data_root), n, clf.crop_um, clf.input_px)
    ours = _time(clf.predict_proba, [crops[i : i + batch] for i in range(0, n, batch)], repeats)
    ours_cps = n / ours

    resnet = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))

    @tf.function(input_signature=[tf.TensorSpec((None, clf.input_px, clf.input_px, 3), tf.uint8)])
    def resnet_predict(x: Any) -> Any:
        x = tf.image.resize(tf.cast(x, tf.float32), (224, 224), method="bilinear")
        return resnet(keras.applications.resnet50.preprocess_input(x), training=False)

    theirs = _time(resnet_predict, [crops[i : i + batch] for i in range(0, n, batch)], repeats)
    resnet_cps = n / theirs
    return {
        "model": f"{clf.name} {clf.version}",
        "input_px": clf.input_px,
        "crop_um": clf.crop_um,
        "n_crops": n,
        "batch": batch,
        "threads": threads,
        "cells_per_s": round(ours_cps, 1),
        "resnet50_224_cells_per_s": round(resnet_cps, 1),
        "speedup_vs_resnet50": round(ours_cps / resnet_cps, 2),
        "target_cells_per_s": 150,
        "meets_target": ours_cps >= 150,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "tensorflow": tf.__version__,
    }
