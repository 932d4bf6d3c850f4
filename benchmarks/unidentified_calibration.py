"""The unidentified rate of normal differentials: calibration of UNRECOGNIZED_POPULATION's threshold.

The model's held-out PBC **test** crops (the ``test`` part of ``split.json`` in the model directory;
images from ``shared/data/pbc_subset``) are classified **once**, cut as
:mod:`hemato_model.training.evaluation` cuts them (:func:`hemato_model.preprocessing.load_centered_crop`
at PBC scale, the model's threshold applied: low-confidence cells are ``unidentified``). Then
``--reps`` normal differentials are bootstrapped from those labels: cells are drawn with replacement,
each of a class drawn from a normal adult differential (neutrophils 60 %, lymphocytes 30 %, monocytes
6 %, eosinophils 3 %, basophils 1 %), until ``--target`` cells are *classified* (named white cells:
not ``unidentified``, not an erythroblast or platelet), as the one-process pipeline reads a slide.
Each differential's unidentified rate is unidentified / (classified + unidentified), the quantity
the rule compares (:func:`hematovision.core.flags.evaluate_rules`).

The threshold is ``max(30 %, the 99.9th percentile)``: a normal slide reaches it about once in a
thousand at most, and no model makes a third of a normal slide unidentified without the lab hearing
of it. The output is JSON (percentiles, threshold, per-class unidentified rates of the test crops).

    python benchmarks/unidentified_calibration.py [--model-dir DIR] [--reps 10000] [--target 200]
        [--seed 0] [--data-root ../shared] [--out result.json] [--blast-check] [--scan-mpp M [--scan-jpeg Q]]

``--blast-check`` also classifies the held-out B-ALL fields (the opt-in blast model's split; ALL
images under ``shared/data/aria_all``) as one slide and lists the flags the rules raise on it: the
case the threshold is for.

Limits: PBC crops are single centred cells of one lab and one stain; on real smears (another stain,
neighbours in the crop) the normal unidentified rate is higher (README, *Known limits*), so a lab
should re-calibrate on its own normal slides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The model whose blast split names the held-out B-ALL fields (``--blast-check``).
BLAST_SPLIT_MODEL = ROOT / "hemato_model" / "models" / "wbc-blast-effnetlite0-v2"
NORMAL_MIX = {"neutrophil": 0.60, "lymphocyte": 0.30, "monocyte": 0.06, "eosinophil": 0.03, "basophil": 0.01}
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.5, 99.9)
FLOOR_PCT = 30.0


def classify_test_crops(
    clf: Any, data_root: Path, scan_mpp: float | None = None, scan_jpeg: int | None = None
) -> dict[str, list[str]]:
    """The model's labels of its held-out PBC test crops, per true class of the normal mix (with
    ``scan_mpp``: re-sampled as a scan at that µm/px would give them, stored as JPEG at ``scan_jpeg``
    where given, and labelled as crops of it)."""
    from hemato_model.preprocessing import load_centered_crop
    from hematovision.core.datasets import PBC_MPP, pbc_root

    model_dir = Path(clf.model_dir)
    split = json.loads((model_dir / "split.json").read_text())
    pbc_dir = Path(split["data_dir"])
    if not pbc_dir.is_dir():
        pbc_dir = pbc_root(data_root)
    labels: dict[str, list[str]] = {}
    for cls in NORMAL_MIX:
        files = [pbc_dir / f for f in split["test"] if f.startswith(cls + "/")]
        if not files:
            raise SystemExit(f"split.json of {model_dir} has no test images of {cls}")
        crops = np.stack([load_centered_crop(f, PBC_MPP, clf.crop_um, clf.input_px) for f in files])
        labels[cls] = [lab for lab, _ in clf.classify(scanned(clf, crops, scan_mpp, scan_jpeg), mpp=scan_mpp)]
    return labels


def scanned(clf: Any, crops: np.ndarray, scan_mpp: float | None, scan_jpeg: int | None = None) -> np.ndarray:
    """``crops`` as a scan at ``scan_mpp`` µm/px would give them, stored as JPEG at ``scan_jpeg`` where
    given (unchanged when ``scan_mpp`` is None)."""
    from hemato_model.preprocessing import rescan

    return rescan(crops, clf.crop_um, scan_mpp, scan_jpeg) if scan_mpp else crops


def blast_check(
    clf: Any,
    data_root: Path,
    normals: dict[str, list[str]],
    seed: int,
    reps: int = 1000,
    scan_mpp: float | None = None,
    scan_jpeg: int | None = None,
) -> dict[str, Any]:
    """What the rules make of the held-out B-ALL fields (the blast model's ``blast_split.json`` test
    part, Early/Pre/Pro-B): every blast crop of those fields as one slide, classified by ``clf``; and,
    per blast fraction, the share of ``reps`` bootstrapped slides of 200 cells seen (blasts from those crops,
    the rest a normal differential) with UNRECOGNIZED_POPULATION and with UNIDENTIFIED_CELLS."""
    from hemato_model.training.blast_data import rebuild_field_crops
    from hematovision.core.datasets import ARIA_ALL_DIR
    from hematovision.core.flags import evaluate_rules, load_rules
    from hematovision.service.slide_results import differential

    doc = json.loads((BLAST_SPLIT_MODEL / "blast_split.json").read_text())
    doc = {**doc, "input_px": clf.input_px}  # the same crops, cut at the classifier's own input size
    fields = rebuild_field_crops(doc, data_root / ARIA_ALL_DIR.parent, "test", ("Early", "Pre", "Pro"))
    labels = [
        lab
        for lab, _ in clf.classify(
            scanned(clf, np.concatenate([c for _, c in fields]), scan_mpp, scan_jpeg), mpp=scan_mpp
        )
    ]
    d = differential(labels, list(clf.classes))
    outcome = evaluate_rules(
        d.counts(),
        d.n_classified,
        unidentified=d.unidentified,
        erythroblasts=d.erythroblasts,
        platelet_candidates=d.platelet_candidates,
        rules=load_rules(),
    )
    by_fraction = blast_fraction_rates(labels, normals, list(clf.classes), seed, reps)
    return {
        "fields": len(fields),
        "cells": len(labels),
        "labels": dict(sorted((lab, labels.count(lab)) for lab in set(labels))),
        "unidentified_pct_of_seen": round(100.0 * d.unidentified / d.n_seen, 1) if d.n_seen else None,
        "flags": [f"{f.code} ({f.severity})" for f in outcome.flags],
        "sampled_200_cell_slides_by_blast_fraction": by_fraction,
        "reps_per_fraction": reps,
    }


def blast_fraction_rates(
    blast_labels: list[str],
    normals: dict[str, list[str]],
    classes: list[str],
    seed: int,
    reps: int = 1000,
    fractions: tuple[int, ...] = (0, 5, 10, 20, 30, 40, 50),
) -> dict[str, dict[str, float]]:
    """Per blast fraction (%), the share of ``reps`` bootstrapped 200-cell slides (blast labels drawn
    from ``blast_labels``, the rest a normal differential drawn per class from ``normals``) on which the
    shipped rules raise UNRECOGNIZED_POPULATION, UNIDENTIFIED_CELLS, and either."""
    from hematovision.core.flags import evaluate_rules
    from hematovision.service.slide_results import differential

    rng = np.random.default_rng(seed)
    mix = list(NORMAL_MIX)
    p = np.array([NORMAL_MIX[c] for c in mix])
    by_fraction: dict[str, dict[str, float]] = {}
    for pct in fractions:
        hits = {"UNRECOGNIZED_POPULATION": 0, "UNIDENTIFIED_CELLS": 0, "any of the two": 0}
        for _ in range(reps):
            n_blast = rng.binomial(200, pct / 100)
            cells = [blast_labels[i] for i in rng.integers(0, len(blast_labels), n_blast)]
            for w in rng.choice(len(mix), size=200 - n_blast, p=p / p.sum()):
                pool = normals[mix[w]]
                cells.append(pool[rng.integers(0, len(pool))])
            s = differential(cells, classes)
            found = {f.code for f in evaluate_rules(s.counts(), s.n_classified, unidentified=s.unidentified).flags}
            for code in ("UNRECOGNIZED_POPULATION", "UNIDENTIFIED_CELLS"):
                hits[code] += code in found
            hits["any of the two"] += bool(found & {"UNRECOGNIZED_POPULATION", "UNIDENTIFIED_CELLS"})
        by_fraction[f"{pct}%"] = {k: round(v / reps, 3) for k, v in hits.items()}
    return by_fraction


def bootstrap(
    labels: dict[str, list[str]], reps: int, target: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unidentified rate (%), classified and seen cells of ``reps`` bootstrapped normal differentials."""
    from hematovision.core.results import UNIDENTIFIED, is_classified_wbc

    rng = np.random.default_rng(seed)
    classes = list(NORMAL_MIX)
    p = np.array([NORMAL_MIX[c] for c in classes])
    p = p / p.sum()
    # Per class, what each test crop counts as: 1 classified, 0 unidentified, -1 neither (a white
    # cell called erythroblast or platelet leaves the white-cell count).
    kind = [
        np.array([1 if is_classified_wbc(lab) else 0 if lab == UNIDENTIFIED else -1 for lab in labels[c]])
        for c in classes
    ]
    rates = np.empty(reps)
    classified = np.empty(reps, dtype=int)
    seen = np.empty(reps, dtype=int)
    chunk = 4 * target
    for r in range(reps):
        n_cls = n_unid = 0
        while n_cls < target:
            which = rng.choice(len(classes), size=chunk, p=p)
            draws = np.empty(chunk, dtype=int)
            for c, pool in enumerate(kind):
                at = which == c
                draws[at] = pool[rng.integers(0, len(pool), int(at.sum()))]
            cum = np.cumsum(draws == 1)
            need = target - n_cls
            stop = int(np.searchsorted(cum, need)) + 1 if cum[-1] >= need else chunk
            n_cls += int((draws[:stop] == 1).sum())
            n_unid += int((draws[:stop] == 0).sum())
        classified[r], seen[r] = n_cls, n_cls + n_unid
        rates[r] = 100.0 * n_unid / (n_cls + n_unid)
    return rates, classified, seen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None, help="default: the configured classifier")
    ap.add_argument("--data-root", type=Path, default=None, help="Shared folder (default: the settings' data_root).")
    ap.add_argument("--reps", type=int, default=10_000)
    ap.add_argument("--target", type=int, default=200, help="Classified white cells per differential.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    ap.add_argument(
        "--blast-check",
        action="store_true",
        help="Also classify the held-out B-ALL fields (shared/data/aria_all) as one slide and list its flags.",
    )
    ap.add_argument(
        "--scan-mpp",
        type=float,
        default=None,
        help="Re-sample every crop as a scan at this µm/px would give it (hemato_model.preprocessing.rescan).",
    )
    ap.add_argument(
        "--scan-jpeg", type=int, default=None, help="With --scan-mpp: the scan stored as JPEG at this quality."
    )
    a = ap.parse_args(argv)
    if a.data_root is None or a.model_dir is None:
        from hematovision.core.settings import load_settings

        a.data_root = a.data_root or load_settings().data_root
        a.model_dir = a.model_dir or load_settings().model_dir
    from hemato_model.classifier import Classifier

    t0 = time.perf_counter()
    clf = Classifier.load(a.model_dir)
    labels = classify_test_crops(clf, a.data_root, a.scan_mpp, a.scan_jpeg)
    model = f"{clf.name} {clf.version}"
    t_classify = time.perf_counter() - t0
    rates, classified, seen = bootstrap(labels, a.reps, a.target, a.seed)
    pct = {f"p{q:g}": round(float(np.percentile(rates, q)), 2) for q in PERCENTILES}
    threshold = max(FLOOR_PCT, float(np.percentile(rates, 99.9)))
    result = {
        "model": model,
        "model_dir": str(a.model_dir),
        "scan_mpp": a.scan_mpp,
        "scan_jpeg": a.scan_jpeg,
        "test_crops": {c: len(v) for c, v in labels.items()},
        "test_unidentified_rate_by_class": {
            c: round(sum(lab == "unidentified" for lab in v) / len(v), 4) for c, v in labels.items()
        },
        "test_labels_by_class": {c: dict(sorted((lab, v.count(lab)) for lab in set(v))) for c, v in labels.items()},
        "normal_mix": NORMAL_MIX,
        "reps": a.reps,
        "target_classified": a.target,
        "seed": a.seed,
        "cells_seen": {"mean": round(float(seen.mean()), 1), "max": int(seen.max())},
        "unidentified_pct": {"mean": round(float(rates.mean()), 2), "max": round(float(rates.max()), 2), **pct},
        "threshold_rule": f"max({FLOOR_PCT:g} %, p99.9)",
        "threshold_pct": round(threshold, 1),
    }
    if a.blast_check:
        result["held_out_b_all_fields"] = blast_check(
            clf, a.data_root, labels, a.seed, scan_mpp=a.scan_mpp, scan_jpeg=a.scan_jpeg
        )
    result["seconds"] = {"classify": round(t_classify, 1), "total": round(time.perf_counter() - t0, 1)}
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
