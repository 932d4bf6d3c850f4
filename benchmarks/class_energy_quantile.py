"""Choose the per-class energy quantile of a classifier on VALIDATION crops only.

A model without a blast class catches blasts only when it abstains on them (``unidentified``: the
rules' UNIDENTIFIED_CELLS and UNRECOGNIZED_POPULATION). A model that is more confident on normal
cells (``wbc-effnetlite0-v1.2``) abstains on fewer blasts too. Per-class energy cut-offs
(:mod:`hemato_model.training.ood_stats`) make it abstain on crops that look like no class's own
training crops. This script fits the cut-offs on the candidate's TRAINING crops for each quantile of
``--quantiles`` and measures, on validation crops only:

- PBC validation crops (the model's ``split.json`` ``val``): accuracy of the top class, unidentified
  rate overall and per true class;
- the ALL set's validation fields of the blast model's split (Early/Pre/Pro-B blasts;
  ``wbc-blast-effnetlite0-v2/blast_split.json``, part ``val``): unidentified rate and calls;
- bootstrapped 200-cell slides (normal mix from the PBC validation crops, blasts from those fields):
  the share that raises a review or critical flag at 0-30 % blasts
  (``unidentified_calibration.blast_fraction_rates``).

The same is measured for the reference model (``--reference``, the default model today) under its
own rule (with ``--scan-mpp``, its cut-offs for that scale: its scale band where it has one).
Chosen: the largest quantile (fewest normal cells abstained) whose false-alarm rate at
0 % blasts is at most 1 % and whose flag rates at 10 % blasts (review) and at 30 % blasts
(UNRECOGNIZED_POPULATION, critical) are at least the reference's. No test crop is read.

``--scan-mpp M`` asks the same at a coarser scan: every crop (training, validation, blasts; both
models) is first re-sampled as a scanner at M µm/px would give it
(:func:`hemato_model.preprocessing.rescan`), so the cut-offs are fitted, and the rule applied, on
what a slide at that scale shows. Its cut-offs go to ``ood.json`` as a scale band
(``benchmarks/fit_ood_stats.py --band-mpp M``). ``--scan-jpeg Q`` stores each such scan as JPEG at
quality Q (4:2:0), as slides store their tiles.

    python benchmarks/class_energy_quantile.py [--model DIR] [--reference DIR] [--scan-mpp M [--scan-jpeg Q]]
        [--out JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import unidentified_calibration as uc  # noqa: E402

MODELS = ROOT / "hemato_model" / "models"
QUANTILES = (0.95, 0.96, 0.97, 0.975, 0.98, 0.99, 0.995)


def labels_under(clf: Any, proba: np.ndarray, energy: np.ndarray, cut: dict[str, float] | None) -> list[str]:
    """``clf``'s labels of its outputs with the per-class cut-offs ``cut`` (None: threshold only),
    by the classifier's own rule (:meth:`~hemato_model.classifier.Classifier.labels_from_proba`)."""
    stats = {k: v for k, v in (clf.ood_stats or {}).items() if k != "class_energy_thresholds"}
    if cut is not None:
        stats["class_energy_thresholds"] = cut
    return [lab for lab, _ in dataclasses.replace(clf, ood_stats=stats).labels_from_proba(proba, energy)]


def figures(
    clf: Any, truth: list[str], normal: list[str], proba: np.ndarray, blasts: list[str], seed: int, reps: int
) -> dict[str, Any]:
    """Validation figures of one labelling of the PBC val crops and the ALL val blast crops."""
    from hemato_model.classifier import UNIDENTIFIED

    t = np.asarray(truth)
    lab = np.asarray(normal)
    normals = {c: [x for x, y in zip(normal, truth, strict=True) if y == c] for c in uc.NORMAL_MIX}
    rates = uc.blast_fraction_rates(blasts, normals, list(clf.classes), seed, reps, (0, 5, 10, 20, 30))
    return {
        "pbc_val_accuracy": round(float((np.asarray(clf.classes)[proba.argmax(1)] == t).mean()), 4),
        "pbc_val_unidentified_rate": round(float((lab == UNIDENTIFIED).mean()), 4),
        "pbc_val_unidentified_rate_per_class": {
            c: round(float((lab[t == c] == UNIDENTIFIED).mean()), 4) for c in clf.classes
        },
        "pbc_val_accuracy_identified": round(float((lab == t)[lab != UNIDENTIFIED].mean()), 4),
        "all_val_blasts": len(blasts),
        "all_val_blast_unidentified_rate": round(blasts.count(UNIDENTIFIED) / len(blasts), 4),
        "all_val_blast_calls": dict(sorted((c, blasts.count(c)) for c in set(blasts))),
        "flag_rate_by_blast_fraction": {k: v["any of the two"] for k, v in rates.items()},
        "critical_rate_by_blast_fraction": {k: v["UNRECOGNIZED_POPULATION"] for k, v in rates.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemato_model.classifier import Classifier
    from hemato_model.training.blast_data import rebuild_field_crops
    from hemato_model.training.classifier_training import load_crops
    from hemato_model.training.ood_stats import class_energy_thresholds
    from hematovision.core.datasets import ARIA_ALL_DIR, PBC_MPP, pbc_root
    from hematovision.core.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODELS / "wbc-effnetlite0-v1.2")
    ap.add_argument("--reference", type=Path, default=MODELS / "wbc-effnetlite0-v1")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scan-mpp", type=float, default=None, help="re-sample every crop as a scan at this µm/px")
    ap.add_argument(
        "--scan-jpeg", type=int, default=None, help="with --scan-mpp: the scan stored as JPEG at this quality"
    )
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)

    data_root = a.data_root or load_settings().data_root
    t0 = time.perf_counter()
    blast_doc = json.loads((uc.BLAST_SPLIT_MODEL / "blast_split.json").read_text())

    def outputs(clf: Any, part: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        split = json.loads((clf.model_dir / "split.json").read_text())
        pbc = pbc_root(data_root)
        crops = load_crops([pbc / f for f in split[part]], PBC_MPP, clf.crop_um, clf.input_px)
        proba, energy = clf.predict_scored(uc.scanned(clf, crops, a.scan_mpp, a.scan_jpeg))
        if energy is None:
            raise SystemExit(f"{clf.model_dir}: no 'head' layer, so no energy score")
        return [f.split("/")[0] for f in split[part]], proba, energy

    def val_blasts(clf: Any) -> tuple[np.ndarray, np.ndarray]:
        doc = {**blast_doc, "input_px": clf.input_px}
        fields = rebuild_field_crops(doc, data_root / ARIA_ALL_DIR.parent, "val", ("Early", "Pre", "Pro"))
        proba, energy = clf.predict_scored(
            uc.scanned(clf, np.concatenate([c for _, c in fields]), a.scan_mpp, a.scan_jpeg)
        )
        return proba, energy

    ref = Classifier.load(a.reference)
    truth, rp, re_ = outputs(ref, "val")
    bp, be = val_blasts(ref)
    # the reference under its own rule at this scale: its scale band where it has one for scan_mpp
    ref_fig = figures(
        ref,
        truth,
        [lab for lab, _ in ref.labels_from_proba(rp, re_, a.scan_mpp)],
        rp,
        [lab for lab, _ in ref.labels_from_proba(bp, be, a.scan_mpp)],
        a.seed,
        a.reps,
    )

    clf = Classifier.load(a.model)
    train_truth, tp, te = outputs(clf, "train")
    truth, vp, ve = outputs(clf, "val")
    bp, be = val_blasts(clf)
    candidates: dict[str, Any] = {
        "none": figures(
            clf, truth, labels_under(clf, vp, ve, None), vp, labels_under(clf, bp, be, None), a.seed, a.reps
        )
    }
    cuts: dict[str, dict[str, float]] = {}
    for q in QUANTILES:
        cut = cuts[str(q)] = class_energy_thresholds(tp, te, train_truth, clf.classes, q)
        candidates[str(q)] = figures(
            clf, truth, labels_under(clf, vp, ve, cut), vp, labels_under(clf, bp, be, cut), a.seed, a.reps
        )

    def ok(f: dict[str, Any]) -> bool:
        return (
            f["flag_rate_by_blast_fraction"]["0%"] <= 0.01
            and f["flag_rate_by_blast_fraction"]["10%"] >= ref_fig["flag_rate_by_blast_fraction"]["10%"]
            and f["critical_rate_by_blast_fraction"]["30%"] >= ref_fig["critical_rate_by_blast_fraction"]["30%"]
        )

    passing = [q for q in QUANTILES if ok(candidates[str(q)])]
    result = {
        "model": f"{clf.name} {clf.version}",
        "reference": f"{ref.name} {ref.version}",
        "scan_mpp": a.scan_mpp,
        "scan_jpeg": a.scan_jpeg,
        "reference_figures": ref_fig,
        "rule": "largest quantile with flag rate <= 1 % at 0 % blasts and review/critical rates at 10 % / 30 % "
        "blasts >= the reference's (validation crops only)",
        "candidates": candidates,
        "class_energy_thresholds": cuts,
        "passing": passing,
        "chosen_quantile": max(passing) if passing else None,
        "reps": a.reps,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
