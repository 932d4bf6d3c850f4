"""Fit the classifier's out-of-distribution statistics (``ood.json`` beside the model).

The energy score ``-logsumexp(logits)`` (Liu et al., NeurIPS 2020) of every TRAINING crop of the
model's ``split.json`` (cut at PBC's 0.08 µm/px, as in training) gives the per-crop cut-off: its
``crop_quantile`` (0.99) quantile, so about 1 % of in-domain crops lie above it. The slide-level
cut-off of the gate (``[gate] ood_share_max`` in the rules file) comes from 10,000 bootstrapped
200-crop "slides" of the held-out TEST crops: the 99.9th percentile of their share above the cut-off
(also written here, under ``slide_share``).

``--class-quantile Q`` also writes per-class cut-offs (``class_energy_thresholds``: the Q quantile
of the energies of each class's correctly classified training crops; see
:mod:`hemato_model.training.ood_stats`), which the classifier then abstains on. Q is chosen on
validation crops by ``benchmarks/class_energy_quantile.py``. Without it, the new ``ood.json`` has no
per-class cut-offs.

``--band-mpp M --class-quantile Q`` instead adds (or replaces) one scale band in the existing
``ood.json``: per-class cut-offs fitted the same way on the training crops re-sampled as a scan at
M µm/px (:func:`hemato_model.preprocessing.rescan`; with ``--band-jpeg Q`` that scan stored as JPEG),
applied to slides at ``--band-from-mpp`` µm/px or coarser
(:meth:`hemato_model.classifier.Classifier.class_energy_cutoffs`); Q for the band is chosen by
``benchmarks/class_energy_quantile.py --scan-mpp M``. Nothing else in ``ood.json`` changes.

    python benchmarks/fit_ood_stats.py [--model DIR] [--data PBC_DIR] [--class-quantile Q]
    python benchmarks/fit_ood_stats.py --band-mpp 0.5 --band-from-mpp 0.35 --class-quantile Q
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
    from hemato_model.preprocessing import rescan
    from hemato_model.training.classifier_training import load_crops
    from hemato_model.training.ood_stats import class_energy_thresholds, energy_statistics
    from hematovision.core.datasets import PBC_MPP, pbc_root
    from hematovision.core.settings import load_settings

    settings = load_settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=settings.model_dir)
    ap.add_argument("--data", type=Path, default=pbc_root(settings.data_root))
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--slide-cells", type=int, default=200)
    ap.add_argument("--class-quantile", type=float, default=None)
    ap.add_argument("--band-mpp", type=float, default=None, help="fit a scale band on crops re-sampled to this µm/px")
    ap.add_argument("--band-from-mpp", type=float, default=None, help="the band applies from this µm/px up")
    ap.add_argument("--band-jpeg", type=int, default=None, help="the band's scan stored as JPEG at this quality")
    args = ap.parse_args()
    if args.band_mpp is not None and (args.class_quantile is None or args.band_from_mpp is None):
        ap.error("--band-mpp needs --band-from-mpp and --class-quantile")

    clf = Classifier.load(args.model)
    split = json.loads((clf.model_dir / "split.json").read_text())

    def scores(part: str, scan_mpp: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        crops = load_crops([args.data / f for f in split[part]], PBC_MPP, clf.crop_um, clf.input_px)
        p, e = clf.predict_scored(rescan(crops, clf.crop_um, scan_mpp, args.band_jpeg) if scan_mpp else crops)
        if e is None:
            raise SystemExit(f"{clf.model_dir}: the model has no 'head' layer, so no energy score")
        return p, e

    if args.band_mpp is not None:
        path = clf.model_dir / OOD_FILE
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: fit the base statistics first")
        current = json.loads(path.read_text())
        train_p, train = scores("train", args.band_mpp)
        band = {
            "from_mpp": args.band_from_mpp,
            "scan_mpp": args.band_mpp,
            **({"scan_jpeg": args.band_jpeg} if args.band_jpeg else {}),
            "class_quantile": args.class_quantile,
            "fitted_on": f"{len(train)} training crops of split.json re-sampled as a scan at {args.band_mpp} µm/px"
            + (f" stored as JPEG {args.band_jpeg}" if args.band_jpeg else ""),
            "class_energy_thresholds": class_energy_thresholds(
                train_p, train, [f.split("/")[0] for f in split["train"]], clf.classes, args.class_quantile
            ),
        }
        others = [b for b in current.get("class_energy_bands") or [] if b.get("from_mpp") != args.band_from_mpp]
        current["class_energy_bands"] = sorted([*others, band], key=lambda b: float(b["from_mpp"]))
        path.write_text(json.dumps(current, indent=2) + "\n")
        print(json.dumps(band))
        return

    (train_p, train), (_, test) = scores("train"), scores("test")
    stats = energy_statistics(train, args.quantile)
    rng = np.random.default_rng(0)
    above = test > stats["energy_threshold"]
    shares = above[rng.integers(0, len(test), size=(10_000, args.slide_cells))].mean(axis=1)
    doc = {
        **stats,
        "fitted_on": f"{len(train)} training crops of split.json at {PBC_MPP} µm/px",
        "test_share_above": round(float(above.mean()), 4),
        "slide_share": {
            "cells": args.slide_cells,
            "bootstraps": 10_000,
            "p99": round(float(np.percentile(shares, 99)), 4),
            "p99.9": round(float(np.percentile(shares, 99.9)), 4),
            "max": round(float(shares.max()), 4),
        },
    }
    if args.class_quantile is not None:
        truth = [f.split("/")[0] for f in split["train"]]
        doc["class_quantile"] = args.class_quantile
        doc["class_energy_thresholds"] = class_energy_thresholds(
            train_p, train, truth, clf.classes, args.class_quantile
        )
    (clf.model_dir / OOD_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
