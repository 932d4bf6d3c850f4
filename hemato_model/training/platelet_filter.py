"""Train the learned platelet filter (:mod:`hemato_model.detection.platelet_filter`) on annotated
fields (CBC Training: Pascal VOC boxes over the BCCD images).

Every image's platelet candidates (:func:`hemato_model.detection.platelet_candidates.find_candidates`)
are labelled by matching their boxes to the annotated platelets as ``hematovision evaluate-detection``
matches them (one-to-one; IoU ≥ 0.3 or mutual centre containment). A one-hidden-layer perceptron
(tanh, sigmoid output; full-batch Adam on the class-balanced logistic loss with L2) is fitted to the
standardised features. The decision threshold is chosen by ``folds``-fold cross-validation **by image**
on the same training images: the highest threshold whose out-of-fold recall (of *all* annotated
platelets, candidates missed included) reaches ``target_recall``; the final model is then refitted on
every training image. No test image is read.

Usage::

    python -m hemato_model.training.platelet_filter --data ../shared/data --out hemato_model/models/platelet-filter-v1
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemato_model.detection.platelet_filter import META_FILE, PlateletFilter

logger = logging.getLogger(__name__)

HIDDEN = 16
STEPS = 1500
LEARNING_RATE = 0.02
L2 = 1e-3
VERSION = "1.0.0"


@dataclass
class ImageCandidates:
    """One image's candidates: features, whether each matched an annotated platelet, and the
    number of annotated platelets."""

    name: str
    features: np.ndarray
    positive: np.ndarray
    n_true: int


def collect(items: list[Any]) -> list[ImageCandidates]:
    """Candidates and labels of annotated images (``hemato_model.training.annotations`` items)."""
    from PIL import Image

    from hemato_model.detection import estimate_mpp
    from hemato_model.detection.detect import platelet_candidates_in
    from hemato_model.training.detection_eval import match_boxes

    out = []
    for it in items:
        with Image.open(it.image_path) as im:
            rgb = np.asarray(im.convert("RGB"))
        try:
            mpp = estimate_mpp(rgb)
        except ValueError:
            continue
        boxes, cands = platelet_candidates_in(rgb, mpp)
        true = [b.bbox for b in it.boxes if b.kind == "platelet"]
        pos = np.zeros(len(boxes), bool)
        for i, _ in match_boxes([tuple(b) for b in boxes], true):
            pos[i] = True
        out.append(ImageCandidates(Path(it.image_path).stem, cands.features, pos, len(true)))
    return out


def slide_fields(
    path: Path, n_fields: int = 12, field_um: float = 150.0, seed: int = 0
) -> Iterator[tuple[int, np.ndarray, float, list[tuple[float, float, float, float]]]]:
    """``n_fields`` random fields inside 0.7 of the smear ellipse of a ``make-slide`` slide: (index,
    the field's RGB pixels, µm/px, the manifest's platelet boxes in field pixels). The one way the
    platelet filter's training and ``benchmarks/platelet_recall.py`` read a slide's platelets."""
    from hematovision.core.slides import open_slide

    doc = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    mpp = float(doc["mpp"])
    plt = np.array([c["bbox"] for c in doc["cells"] if c["kind"] == "platelet"], float).reshape(-1, 4)
    (cx, cy), (ax, ay) = doc["smear_area"]["center"], doc["smear_area"]["semi_axes"]
    del doc
    size = int(field_um / mpp)
    rng = np.random.default_rng(seed)
    ctr = (plt[:, :2] + plt[:, 2:]) / 2
    with open_slide(path) as slide:
        width, height = slide.dimensions
        for k in range(n_fields):
            r, a = 0.7 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            x0 = int(np.clip(cx + r * ax * np.cos(a) - size / 2, 0, width - size))
            y0 = int(np.clip(cy + r * ay * np.sin(a) - size / 2, 0, height - size))
            region = slide.read_region((x0, y0), 0, (size, size))
            inside = (ctr[:, 0] >= x0) & (ctr[:, 0] < x0 + size) & (ctr[:, 1] >= y0) & (ctr[:, 1] < y0 + size)
            yield k, region, mpp, [tuple(b - [x0, y0, x0, y0]) for b in plt[inside]]


def collect_slide(path: Path, n_fields: int = 12, field_um: float = 150.0, seed: int = 0) -> list[ImageCandidates]:
    """Candidates of the :func:`slide_fields` of a ``make-slide`` slide, labelled by its manifest's platelets."""
    from hemato_model.detection.detect import platelet_candidates_in
    from hemato_model.training.detection_eval import match_boxes

    out = []
    for k, region, mpp, true in slide_fields(path, n_fields, field_um, seed):
        boxes, cands = platelet_candidates_in(region, mpp)
        pos = np.zeros(len(boxes), bool)
        for i, _ in match_boxes([tuple(b) for b in boxes], true):
            pos[i] = True
        out.append(ImageCandidates(f"{path.stem}-field{k}", cands.features, pos, len(true)))
    return out


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> PlateletFilter:
    """The perceptron on features ``x`` and labels ``y`` (threshold 0.5 until one is chosen)."""
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    z = (x - mean) / scale
    n, d = z.shape
    params = [
        rng.normal(0, 1 / np.sqrt(d), (d, HIDDEN)),
        np.zeros(HIDDEN),
        rng.normal(0, 1 / np.sqrt(HIDDEN), HIDDEN),
        np.zeros(1),
    ]
    # class-balanced weights: the few positives count as much as the many negatives
    w = np.where(y, 0.5 / max(1, y.sum()), 0.5 / max(1, (~y).sum())) * n
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1_, b2_, eps = 0.9, 0.999, 1e-8
    for step in range(1, STEPS + 1):
        w1, b1, w2, b2 = params
        h = np.tanh(z @ w1 + b1)
        p = 1 / (1 + np.exp(-(h @ w2 + b2[0])))
        g_out = w * (p - y) / n
        grads = [
            z.T @ (np.outer(g_out, w2) * (1 - h * h)) + L2 * w1,
            (np.outer(g_out, w2) * (1 - h * h)).sum(axis=0),
            h.T @ g_out + L2 * w2,
            np.array([g_out.sum()]),
        ]
        for k in range(4):
            m[k] = b1_ * m[k] + (1 - b1_) * grads[k]
            v[k] = b2_ * v[k] + (1 - b2_) * grads[k] ** 2
            params[k] = params[k] - LEARNING_RATE * (m[k] / (1 - b1_**step)) / (np.sqrt(v[k] / (1 - b2_**step)) + eps)
    w1, b1, w2, b2 = params
    return PlateletFilter(mean, scale, w1, b1, w2, float(b2[0]), 0.5, VERSION)


def pr_at(scores: np.ndarray, y: np.ndarray, n_true: int, threshold: float) -> tuple[float, float]:
    """Precision and recall (of all ``n_true`` annotated platelets) at ``threshold``."""
    keep = scores >= threshold
    tp = int((keep & y).sum())
    return (tp / keep.sum() if keep.any() else 0.0), tp / max(1, n_true)


def cross_validate(images: list[ImageCandidates], folds: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold scores of every candidate (images split into ``folds`` groups)."""
    order = np.random.default_rng(seed).permutation(len(images))
    fold_of = np.empty(len(images), int)
    fold_of[order] = np.arange(len(images)) % folds
    scores = [np.zeros(0)] * len(images)
    for k in range(folds):
        tr = [im for i, im in enumerate(images) if fold_of[i] != k]
        model = fit(np.concatenate([im.features for im in tr]), np.concatenate([im.positive for im in tr]))
        for i, im in enumerate(images):
            if fold_of[i] == k:
                scores[i] = model.scores(im.features)
    return np.concatenate(scores)


def choose_threshold(scores: np.ndarray, y: np.ndarray, n_true: int, target_recall: float) -> float:
    """The highest threshold whose recall reaches ``target_recall`` (else the best-F1 one)."""
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    ok = [t for t in grid if pr_at(scores, y, n_true, t)[1] >= target_recall]
    if ok:
        return float(max(ok))
    f1 = [2 * p * r / max(p + r, 1e-9) for p, r in (pr_at(scores, y, n_true, t) for t in grid)]
    return float(grid[int(np.argmax(f1))])


def train(
    images: list[ImageCandidates],
    folds: int = 5,
    target_recall: float = 0.88,
    extra: list[ImageCandidates] | None = None,
) -> tuple[PlateletFilter, dict[str, Any]]:
    """Cross-validated threshold, then the filter refitted on all ``images`` (and ``extra``, fields
    of synthetic slides, which train the filter but do not set the threshold); with the figures."""
    extra = extra or []
    y = np.concatenate([im.positive for im in images])
    n_true = sum(im.n_true for im in images)
    oof_all = cross_validate(images + extra, folds)
    oof = oof_all[: y.size]
    thr = choose_threshold(oof, y, n_true, target_recall)
    p, r = pr_at(oof, y, n_true, thr)
    every = images + extra
    model = fit(np.concatenate([im.features for im in every]), np.concatenate([im.positive for im in every]))
    model = PlateletFilter(model.mean, model.scale, model.w1, model.b1, model.w2, model.b2, thr, VERSION)
    figures = {
        "images": len(images),
        "annotated_platelets": n_true,
        "candidates": int(y.size),
        "candidate_recall": round(float(y.sum()) / max(1, n_true), 4),
        "cv_folds": folds,
        "cv_threshold": thr,
        "cv_precision": round(p, 4),
        "cv_recall": round(r, 4),
    }
    if extra:
        ye = np.concatenate([im.positive for im in extra])
        pe, re_ = pr_at(oof_all[y.size :], ye, sum(im.n_true for im in extra), thr)
        figures |= {
            "synthetic_fields": len(extra),
            "synthetic_cv_precision": round(pe, 4),
            "synthetic_cv_recall": round(re_, 4),
        }
    return model, figures


def main(argv: list[str] | None = None) -> None:
    from hemato_model.training.annotations import read_voc_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target-recall", type=float, default=0.88)
    ap.add_argument("--make-slide", type=Path, action="append", default=[], help="a make-slide slide to train on too")
    ap.add_argument("--slide-fields", type=int, default=12)
    args = ap.parse_args(argv)
    items = read_voc_dir(args.data / "cbc" / "Training", args.data / "bccd" / "BCCD" / "JPEGImages")
    images = collect(items)
    extra = [f for p in args.make_slide for f in collect_slide(p, args.slide_fields, seed=1)]
    model, figures = train(images, target_recall=args.target_recall, extra=extra)
    args.out.mkdir(parents=True, exist_ok=True)
    slides = "".join(f" + {p.name} ({args.slide_fields} fields)" for p in args.make_slide)
    trained_on = "CBC Training (BCCD images)" + slides
    doc = model.to_json({"trained_on": trained_on, "training": figures})
    (args.out / META_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
