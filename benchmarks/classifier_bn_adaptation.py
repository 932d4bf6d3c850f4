"""Batch-norm statistics from a slide's own cells (AdaBN-style test-time adaptation), measured.

Question: does re-estimating the classifier's normalisation statistics from the cells being
classified (no labels) make the default classifier robust to another lab's stain without harming
in-domain slides? The network was fine-tuned with its batch-norm layers frozen at their ImageNet
statistics, so the statistics are *mapped*, not replaced: for every batch-norm layer the mean and
variance of its input over the target cells are matched to those over 600 PBC *training* crops as
the shipped network sees them (``mean' = mean + α(μ_target − μ_PBC)``,
``var' = var · (σ²_target / σ²_PBC)^α``), layer by layer in network order, moments pooled over chunks
of 100 crops. (Replacing the statistics outright, plain AdaBN, took PBC validation accuracy from
0.98 to 0.55 in a first try: the frozen layers were never trained on their own data's statistics.)

Stage ``val`` (the choice; PBC **validation** split only): the 656 validation crops clean and under the
fixed shifts of ``stain_shift_eval.py``; statistics from the set itself and from 200-cell
"slides" drawn with a normal, a lymphocytosis and a left-shift composition (two draws each), then
every crop of the set classified. Stage ``bccd`` (information, after the choice): the 339 BCCD white
cells, statistics from themselves.

    python benchmarks/classifier_bn_adaptation.py --stage val \
        --out benchmarks/results/classifier_bn_adaptation_val.json
    python benchmarks/classifier_bn_adaptation.py --stage bccd \
        --out benchmarks/results/classifier_bn_adaptation_bccd.json

Per condition: top-class accuracy, macro recall, accuracy counting `unidentified` as an error (the
model's own abstention rule: threshold and per-class energy cut-offs), unidentified rate, per class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stain_shift_eval import blur_jpeg, od_mix, pale_blue

MODELS = Path(__file__).resolve().parents[1] / "hemato_model" / "models"
MIXES = {
    "normal": {"neutrophil": 0.60, "lymphocyte": 0.30, "monocyte": 0.06, "eosinophil": 0.03, "basophil": 0.01},
    "lymphocytosis": {"lymphocyte": 0.80, "neutrophil": 0.15, "monocyte": 0.05},
    "left_shift": {"neutrophil": 0.55, "ig": 0.20, "lymphocyte": 0.18, "monocyte": 0.05, "eosinophil": 0.02},
}
CHUNK = 100


class BnMapper:
    """Maps a network's batch-norm statistics from a source set of crops onto a target set."""

    def __init__(self, model: Any) -> None:
        import keras

        self.model = model
        self.layers = [la for la in model._flatten_layers() if isinstance(la, keras.layers.BatchNormalization)]
        self.orig = {la.name: (la.moving_mean.numpy().copy(), la.moving_variance.numpy().copy()) for la in self.layers}
        self.moments: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self.source: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self.mode: str | None = None
        self.alpha = 1.0
        for la in self.layers:
            self._wrap(la)

    def _wrap(self, layer: Any) -> None:
        import tensorflow as tf

        call = layer.call

        def wrapped(x: Any, *a: Any, **k: Any) -> Any:
            if self.mode is not None:
                axes = list(range(len(x.shape) - 1))
                mu = tf.reduce_mean(x, axis=axes).numpy()
                var = tf.math.reduce_variance(x, axis=axes).numpy()
                n = int(np.prod(x.shape[:-1]))
                if layer.name in self.moments:  # pooled over the chunks so far
                    n0, mu0, var0 = self.moments[layer.name]
                    total = n0 + n
                    mu_t = (n0 * mu0 + n * mu) / total
                    var = (n0 * (var0 + (mu0 - mu_t) ** 2) + n * (var + (mu - mu_t) ** 2)) / total
                    mu, n = mu_t, total
                self.moments[layer.name] = (n, mu, var)
                if self.mode == "adapt":
                    _, s_mu, s_var = self.source[layer.name]
                    o_mu, o_var = self.orig[layer.name]
                    layer.moving_mean.assign(o_mu + self.alpha * (mu - s_mu))
                    layer.moving_variance.assign(o_var * (var / np.maximum(s_var, 1e-6)) ** self.alpha)
            return call(x, *a, **k)

        layer.call = wrapped

    def restore(self) -> None:
        for la in self.layers:
            mu, var = self.orig[la.name]
            la.moving_mean.assign(mu)
            la.moving_variance.assign(var)

    def _pass(self, crops: np.ndarray, mode: str) -> None:
        self.mode, self.moments = mode, {}
        try:
            for i in range(0, len(crops), CHUNK):
                self.model(np.asarray(crops[i : i + CHUNK], np.float32), training=False)
        finally:
            self.mode = None

    def fit_source(self, crops: np.ndarray) -> None:
        self.restore()
        self._pass(crops, "record")
        self.source = dict(self.moments)

    def adapt(self, crops: np.ndarray, alpha: float) -> None:
        self.restore()
        self.alpha = alpha
        self._pass(crops, "adapt")


def score(clf: Any, truth: list[str], crops: np.ndarray, classes: list[str], mpp: Any) -> dict[str, Any]:
    """``evaluate``'s figures (:func:`~hemato_model.training.evaluation.classifier_scored`: top class,
    and the model's own abstention rule) under this script's names."""
    from hemato_model.training.evaluation import classifier_scored

    out = classifier_scored(clf, truth, *clf.predict_scored(crops), classes, mpp=mpp)
    return {
        "accuracy_top": out["accuracy"],
        "macro_recall_top": out["macro_recall"],
        "accuracy_unidentified_as_error": out["accuracy_unidentified_as_error"],
        "unidentified_rate": out["unidentified_rate"],
        "recall_top_per_class": {c: out["per_class"][c]["recall"] for c in classes},
        "unidentified_rate_per_class": out["unidentified_rate_per_class"],
    }


def mix_draw(truth: list[str], mix: dict[str, float], n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.asarray(truth)
    idx: list[int] = []
    for c, f in mix.items():
        idx += list(rng.choice(np.flatnonzero(t == c), int(round(f * n)), replace=True))
    return np.asarray(idx)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import Classifier
    from hemato_model.preprocessing import crop_cell
    from hemato_model.training.evaluation import BCCD_CLASSES, bccd_cells, estimate_scales
    from hematovision.core.datasets import BCCD_DIR, PBC_MPP, pbc_root
    from hematovision.core.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("val", "bccd"), required=True)
    ap.add_argument("--model", type=Path, default=MODELS / "wbc-effnetlite0-v1.2")
    ap.add_argument("--data-root", type=Path, default=load_settings().data_root)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    clf = Classifier.load(args.model)
    mapper = BnMapper(clf._model)
    pbc = pbc_root(args.data_root)
    split = json.loads((clf.model_dir / "split.json").read_text())

    def centred(images: list[np.ndarray]) -> np.ndarray:
        return np.stack(
            [crop_cell(im, (im.shape[1] / 2, im.shape[0] / 2), PBC_MPP, clf.crop_um, clf.input_px) for im in images]
        )

    def load(files: list[str]) -> list[np.ndarray]:
        return [np.asarray(Image.open(pbc / f).convert("RGB")) for f in files]

    source_files = list(np.random.default_rng(5).choice(split["train"], 600, replace=False))
    mapper.fit_source(centred(load(source_files)))
    t0 = time.time()
    result: dict[str, Any] = {"model": f"{clf.name} {clf.version}", "stage": args.stage, "source_crops": 600}
    if args.stage == "val":
        files = split["val"]
        truth = [f.split("/")[0] for f in files]
        images = load(files)
        sets = {"clean": centred(images)}
        for name, fn in (("od_mix", od_mix), ("pale_blue", pale_blue), ("blur_jpeg", blur_jpeg)):
            sets[name] = centred([fn(im) for im in images])
        classes = list(clf.classes)
        for name, crops in sets.items():
            mapper.restore()
            row = {"none": score(clf, truth, crops, classes, PBC_MPP)}
            for alpha in (0.5, 1.0):
                mapper.adapt(crops, alpha)
                row[f"self_alpha{alpha}"] = score(clf, truth, crops, classes, PBC_MPP)
                for mix_name, mix in MIXES.items():
                    for seed in (0, 1):
                        mapper.adapt(crops[mix_draw(truth, mix, seed=seed)], alpha)
                        row[f"{mix_name}{seed}_alpha{alpha}"] = score(clf, truth, crops, classes, PBC_MPP)
            result[name] = row
            print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    else:
        cells = bccd_cells(args.data_root / BCCD_DIR)
        images = [np.asarray(Image.open(j).convert("RGB")) for j, _, _ in cells]
        truth = [c for _, _, c in cells]
        estimated, _ = estimate_scales(images, centred_cell=False)
        for name, scales in (("mpp_0.071", [0.071] * len(cells)), ("mpp_estimated", estimated)):
            crops = np.stack(
                [
                    crop_cell(im, centre, s, clf.crop_um, clf.input_px)
                    for im, (_, centre, _), s in zip(images, cells, scales, strict=True)
                ]
            )
            mapper.restore()
            row = {"none": score(clf, truth, crops, list(BCCD_CLASSES), scales)}
            for alpha in (0.5, 1.0):
                mapper.adapt(crops, alpha)
                row[f"self_alpha{alpha}"] = score(clf, truth, crops, list(BCCD_CLASSES), scales)
            result[name] = row
    result["wall_s"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
