"""Fit the classifier's out-of-distribution statistics (``ood.json`` beside the model).

The energy score ``-logsumexp(logits)`` (Liu et al., NeurIPS 2020) of every TRAINING crop of the
model's ``split.json`` (cut at PBC's 0.08 µm/px, as in training) gives the per-crop cut-off: its
``crop_quantile`` (0.99) quantile, so about 1 % of in-domain crops lie above it. The slide-level
cut-off of the gate (``[gate] ood_share_max`` in the rules file) comes from 10,000 bootstrapped
200-crop "slides" of the held-out TEST crops: the 99.9th percentile of their share above the cut-off
(also written here, under ``slide_share``).

    python benchmarks/fit_ood_stats.py [--model DIR] [--data PBC_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import OOD_FILE, Classifier
    from hemato_model.training.classifier_training import load_crops
    from hematovision.core.datasets import PBC_MPP, pbc_root
    from hematovision.core.settings import load_settings

    settings = load_settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=settings.model_dir)
    ap.add_argument("--data", type=Path, default=pbc_root(settings.data_root))
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--slide-cells", type=int, default=200)
    args = ap.parse_args()

    clf = Classifier.load(args.model)
    split = json.loads((clf.model_dir / "split.json").read_text())

    def energies(part: str) -> np.ndarray:
        crops = load_crops([args.data / f for f in split[part]], PBC_MPP, clf.crop_um, clf.input_px)
        _, e = clf.predict_scored(crops)
        if e is None:
            raise SystemExit(f"{clf.model_dir}: the model has no 'head' layer, so no energy score")
        return e

    train, test = energies("train"), energies("test")
    thr = float(np.quantile(train, args.quantile))
    rng = np.random.default_rng(0)
    above = test > thr
    shares = above[rng.integers(0, len(test), size=(10_000, args.slide_cells))].mean(axis=1)
    doc = {
        "score": "energy = -logsumexp(logits) of the head layer; higher = less like the training crops",
        "fitted_on": f"{len(train)} training crops of split.json at {PBC_MPP} µm/px",
        "crop_quantile": args.quantile,
        "energy_threshold": round(thr, 4),
        "train_energy_percentiles": {
            str(q): round(float(np.percentile(train, q)), 4) for q in (1, 5, 25, 50, 75, 95, 99, 99.9)
        },
        "test_share_above": round(float(above.mean()), 4),
        "slide_share": {
            "cells": args.slide_cells,
            "bootstraps": 10_000,
            "p99": round(float(np.percentile(shares, 99)), 4),
            "p99.9": round(float(np.percentile(shares, 99.9)), 4),
            "max": round(float(shares.max()), 4),
        },
    }
    (clf.model_dir / OOD_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
