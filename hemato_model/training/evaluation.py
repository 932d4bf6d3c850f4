"""Evaluation of the white-cell classifier (``hematovision evaluate``) and the BCCD out-of-domain test.

Metrics are computed here with numpy. The headline figures (``accuracy``, ``macro_f1``,
``per_class``, ``confusion_matrix``) score the top class of every cell, with no reject option, so
they measure the classifier itself. The low-confidence bucket is reported beside them:
``unidentified_rate`` (share of cells under the model's threshold), ``accuracy_identified``
(accuracy on the cells kept) and ``accuracy_unidentified_as_error`` (bucketed cells counted wrong).

Scale: with ``mpp`` given, each image's crop is ``crop_um`` µm around the image centre at that
scale (``mpp_source: "given"``). Without it the scale is measured, never assumed: every image's
µm/px is estimated from its own content (:func:`hemato_model.detection.scale.estimate_image_mpp`:
isolated red cells, measured on the image enlarged to ``MEASURE_SIDE_PX`` when smaller, else the
centred white cell) and the crop is cut at that estimate
(``mpp_source: "estimated"``, with the median and spread of the estimates and how many images
could not be measured; those are cut at the median of the others). The model's own ``split.json``
states the scale of an ``--extra-data`` folder it was trained with (``mpp_source: "split"``).

BCCD (out of domain): the WBC box of each image with exactly one WBC box and one subtype label
(neutrophil/eosinophil/lymphocyte/monocyte) is cropped at ``crop_um`` around the box centre at the
field's estimated scale (or ``mpp``) and compared with the majority-class baseline.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hemato_model.training.classifier_training import IMAGE_SUFFIXES, DataError, ProgressFactory, load_crops

if TYPE_CHECKING:
    from hemato_model.classifier import Classifier, Mpp

BCCD_CLASSES = ("neutrophil", "eosinophil", "lymphocyte", "monocyte")


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts (true row, predicted column) over ``labels`` (predictions outside them are dropped)."""
    index = {c: i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1/recall, per-class scores and the confusion matrix over ``classes``.

    Rows of the confusion matrix are the true ``classes``; its columns are ``classes`` followed by
    any other predicted label (another model class, ``unidentified``). Classes with no true sample
    are left out of the macro averages.
    """
    y_true, y_pred = list(y_true), list(y_pred)
    rows = list(classes)
    columns = rows + sorted(set(y_pred) - set(rows))
    cm = confusion_matrix(y_true, y_pred, columns)[: len(rows)]
    per_class: dict[str, dict[str, float | int]] = {}
    f1s, recalls = [], []
    for c in rows:
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        support = sum(1 for t in y_true if t == c)
        predicted = sum(1 for p in y_pred if p == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
        if support:
            f1s.append(f1)
            recalls.append(recall)
    n = len(y_true)
    return {
        "n": n,
        "accuracy": round(sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / n, 4) if n else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
        "macro_recall": round(float(np.mean(recalls)), 4) if recalls else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_order": {"rows": rows, "columns": columns},
    }


def collect_folder(
    data_dir: str | Path, classes: Sequence[str], split_files: Sequence[str] | None = None
) -> tuple[list[Path], list[str], list[str]]:
    """Images of class subfolders named like model classes: (paths, labels, skipped folder names).

    Args:
        data_dir: image folder (one subfolder per class).
        classes: the model's classes; other subfolders are skipped (reported, not fatal).
        split_files: if given, only these paths (relative to ``data_dir``) are used.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    skipped: list[str] = []
    paths: list[Path] = []
    labels: list[str] = []
    wanted = set(split_files) if split_files is not None else None
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in classes:
            skipped.append(sub.name)
            continue
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith("."):
                continue
            if wanted is not None and f"{sub.name}/{f.name}" not in wanted:
                continue
            paths.append(f)
            labels.append(sub.name)
    if not paths:
        raise DataError(f"no images of the model's classes ({', '.join(classes)}) in {root}")
    return paths, labels, skipped


def estimate_scales(images: Sequence[np.ndarray], centred_cell: bool = True) -> tuple[list[float], dict[str, Any]]:
    """Per-image µm/px estimates (the median of the measured ones stands in for an image that
    cannot be measured) and their summary for the JSON output.

    Raises:
        DataError: when no image can be measured.
    """
    from hemato_model.detection.scale import MEASURE_SIDE_PX, estimate_image_mpp

    values: list[float | None] = []
    sources: dict[str, int] = {}
    for img in images:
        try:
            est = estimate_image_mpp(img, centred_cell, MEASURE_SIDE_PX)
        except ValueError:
            values.append(None)
            continue
        values.append(est.mpp)
        sources[est.source] = sources.get(est.source, 0) + 1
    measured = np.array([v for v in values if v is not None], dtype=float)
    if len(measured) == 0:
        raise DataError("cannot estimate µm/px on any image (no red or white cell measurable): pass --mpp")
    median = float(np.median(measured))
    p10, p25, p75, p90 = (float(x) for x in np.percentile(measured, [10, 25, 75, 90]))
    summary = {
        "median": round(median, 4),
        "p10": round(p10, 4),
        "p90": round(p90, 4),
        "iqr": [round(p25, 4), round(p75, 4)],
        "relative_spread": round((p90 - p10) / median, 3),
        "n_measured": len(measured),
        "n_unmeasured": sum(v is None for v in values),
        "sources": dict(sorted(sources.items())),
    }
    return [median if v is None else v for v in values], summary


def _estimated_crops(
    paths: Sequence[Path], crop_um: float, input_px: int, progress: ProgressFactory | None = None
) -> tuple[np.ndarray, list[float], dict[str, Any]]:
    """Centred crops of single-cell images, each cut at its own estimated µm/px (the crops, the
    scales, the estimates' summary)."""
    from PIL import Image

    from hemato_model.preprocessing import crop_cell

    images = []
    bar = progress(len(paths), "Measuring scale") if progress else None
    try:
        for p in paths:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB")))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    scales, summary = estimate_scales(images)
    crops = np.empty((len(paths), input_px, input_px, 3), dtype=np.uint8)
    for i, (img, mpp) in enumerate(zip(images, scales, strict=True)):
        h, w = img.shape[:2]
        crops[i] = crop_cell(img, ((w - 1) / 2.0 + 0.5, (h - 1) / 2.0 + 0.5), mpp, crop_um, input_px)
    return crops, scales, summary


def evaluate_folder(
    clf: Classifier,
    data_dir: str | Path,
    mpp: float | None = None,
    split: str | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Evaluate ``clf`` on an image folder (optionally only one part of the model's ``split.json``);
    without ``mpp`` the scale of every image is estimated (see the module docstring)."""
    split_files = None
    source = "given" if mpp else "estimated"
    if split:
        split_path = clf.model_dir / "split.json"
        if not split_path.is_file():
            raise DataError(f"{clf.model_dir} has no split.json, so --split cannot be used")
        split_doc = json.loads(split_path.read_text())
        extra = split_doc.get("extra")
        if extra and Path(extra["data_dir"]).resolve() == Path(data_dir).resolve():
            split_doc = extra  # the --extra-data folder the model was trained with
            if not mpp:
                mpp, source = float(extra["mpp"]), "split"
        if split not in split_doc:
            raise DataError(f"split.json has no part {split!r} (train, val, test)")
        split_files = split_doc[split]
    paths, labels, skipped = collect_folder(data_dir, clf.classes, split_files)
    estimates: dict[str, Any] | None = None
    scales: float | list[float]
    if mpp:
        crops = load_crops(paths, mpp, clf.crop_um, clf.input_px, progress, label="Cutting crops")
        scales = mpp
    else:
        crops, scales, estimates = _estimated_crops(paths, clf.crop_um, clf.input_px, progress)
        mpp = estimates["median"]
    metrics = classifier_scored(clf, labels, *clf.predict_scored(crops), clf.classes, mpp=scales)
    result = {
        "model": f"{clf.name} {clf.version}",
        "data": str(data_dir),
        "split": split,
        "mpp": mpp,
        "mpp_source": source,
        "mpp_estimates": estimates,
        **metrics,
        "skipped_folders": skipped,
    }
    return result


def scored(
    truth: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    score_classes: Sequence[str],
    kept: np.ndarray | None = None,
) -> dict[str, Any]:
    """Top-class metrics over ``score_classes`` plus the low-confidence bucket's figures.

    ``kept``: which cells keep their top class (default: top probability ≥ ``threshold``); a
    classifier's own rule is :meth:`~hemato_model.classifier.Classifier.identified` (see
    :func:`classifier_scored`)."""
    top = proba.argmax(axis=1)
    forced = [classes[k] for k in top]
    if kept is None:
        kept = proba.max(axis=1) >= threshold
    metrics = classification_metrics(truth, forced, score_classes)
    n_kept = int(kept.sum())
    correct = np.array([t == p for t, p in zip(truth, forced, strict=True)])
    truth_arr = np.asarray(truth)
    per_class_unidentified = {
        c: round(float((~kept[truth_arr == c]).mean()), 4) for c in score_classes if (truth_arr == c).any()
    }
    return {
        **metrics,
        "threshold": threshold,
        "unidentified_rate": round(1.0 - n_kept / len(truth), 4) if len(truth) else 0.0,
        "accuracy_identified": round(float(correct[kept].mean()), 4) if n_kept else 0.0,
        "accuracy_unidentified_as_error": round(float((correct & kept).mean()), 4) if len(truth) else 0.0,
        "unidentified_rate_per_class": per_class_unidentified,
    }


def classifier_scored(
    clf: Classifier,
    truth: Sequence[str],
    proba: np.ndarray,
    energy: np.ndarray | None,
    score_classes: Sequence[str],
    mpp: Mpp = None,
) -> dict[str, Any]:
    """:func:`scored` of ``clf``'s outputs (:meth:`~hemato_model.classifier.Classifier.predict_scored`)
    under the classifier's own abstention rule: its threshold and, where it has them, its per-class
    energy cut-offs for crops cut at ``mpp`` µm/px (the base ones listed under
    ``class_energy_thresholds``)."""
    out = scored(truth, proba, clf.classes, clf.threshold, score_classes, kept=clf.identified(proba, energy, mpp))
    cut = clf.class_energy_max
    if cut is not None:
        out["class_energy_thresholds"] = {c: round(float(v), 4) for c, v in zip(clf.classes, cut, strict=True)}
    return out


def plot_confusion(result: dict[str, Any], out_png: str | Path, title: str = "") -> None:
    """Write the confusion matrix (counts, rows = truth) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(result["confusion_matrix"])
    rows = result["confusion_matrix_order"]["rows"]
    cols = result["confusion_matrix_order"]["columns"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(cols), 1.2 + 0.7 * len(rows)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    vmax = cm.max() if cm.size else 0
    for r in range(cm.shape[0]):
        for c in range(cm.shape[1]):
            if cm[r, c]:
                ax.text(
                    c,
                    r,
                    str(cm[r, c]),
                    ha="center",
                    va="center",
                    color="white" if cm[r, c] > vmax / 2 else "black",
                    fontsize=8,
                )
    ax.set_title(title or f"accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def _voc_wbc_boxes(xml_path: Path) -> list[tuple[float, float, float, float]]:
    root = ET.parse(xml_path).getroot()
    boxes: list[tuple[float, float, float, float]] = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().upper() != "WBC":
            continue
        bb = obj.find("bndbox")
        if bb is None:
            continue
        xmin, ymin, xmax, ymax = (float(bb.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin, ymin, xmax, ymax))
    return boxes


def bccd_cells(bccd_root: str | Path) -> list[tuple[Path, tuple[float, float], str]]:
    """Single-WBC, single-label BCCD images: (jpeg, box centre (x, y), subtype in BCCD_CLASSES)."""
    root = Path(bccd_root)
    labels_csv = root / "extra" / "wbc_subtype_labels.csv"
    if not labels_csv.is_file():
        raise DataError(f"BCCD subtype labels not found: {labels_csv}")
    cells = []
    with open(labels_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {f.lower(): f for f in reader.fieldnames or []}
        img_key = fields.get("image") or next(iter(fields.values()))
        cat_key = fields.get("category") or list(fields.values())[1]
        for row in reader:
            raw = (row.get(cat_key) or "").strip()
            label = raw.lower()
            if "," in label or label not in BCCD_CLASSES:
                continue
            try:
                n = int(float(row[img_key]))
            except (TypeError, ValueError):
                continue
            stem = f"BloodImage_{n:05d}"
            xml = root / "BCCD" / "Annotations" / f"{stem}.xml"
            jpg = root / "BCCD" / "JPEGImages" / f"{stem}.jpg"
            if not xml.is_file() or not jpg.is_file():
                continue
            boxes = _voc_wbc_boxes(xml)
            if len(boxes) != 1:
                continue
            x0, y0, x1, y1 = boxes[0]
            cells.append((jpg, ((x0 + x1) / 2.0, (y0 + y1) / 2.0), label))
    if not cells:
        raise DataError(f"no single-WBC, single-label images found under {root}")
    return cells


def evaluate_bccd(clf: Classifier, bccd_root: str | Path, mpp: float | None = None) -> dict[str, Any]:
    """Out-of-domain accuracy and macro recall on BCCD WBC crops vs the majority-class baseline.

    Without ``mpp`` each field's scale is estimated from its red cells (``mpp_source:
    "estimated"``); the data set's nominal :data:`~hematovision.core.datasets.BCCD_MPP` is reported
    beside it (pass ``--mpp 0.071`` to score at it).

    Only BCCD's four subtypes are scored; a prediction of another model class (e.g. ``ig``) counts
    as wrong. Macro averages run over the four BCCD classes. ``predicted_counts`` includes the
    ``unidentified`` bucket.
    """
    from PIL import Image

    from hemato_model.preprocessing import crop_cell
    from hematovision.core.datasets import BCCD_MPP

    cells = bccd_cells(bccd_root)
    images = []
    for jpg, _, _ in cells:
        with Image.open(jpg) as im:
            images.append(np.asarray(im.convert("RGB")))
    estimates: dict[str, Any] | None = None
    if mpp:
        scales = [mpp] * len(cells)
    else:
        scales, estimates = estimate_scales(images, centred_cell=False)  # fields: the WBC is off-centre
    crops = np.empty((len(cells), clf.input_px, clf.input_px, 3), dtype=np.uint8)
    for i, (img, (_, centre, _), s) in enumerate(zip(images, cells, scales, strict=True)):
        crops[i] = crop_cell(img, centre, s, clf.crop_um, clf.input_px)
    truth = [c for _, _, c in cells]
    proba, energy = clf.predict_scored(crops)
    predicted = [label for label, _ in clf.labels_from_proba(proba, energy, scales)]
    metrics = classifier_scored(clf, truth, proba, energy, list(BCCD_CLASSES), mpp=scales)
    counts = {c: truth.count(c) for c in BCCD_CLASSES}
    majority = max(counts, key=lambda c: counts[c])
    return {
        "model": f"{clf.name} {clf.version}",
        "data": str(bccd_root),
        "mpp": mpp if mpp else estimates["median"] if estimates else None,
        "mpp_source": "given" if mpp else "estimated",
        "mpp_estimates": estimates,
        "nominal_mpp": BCCD_MPP,
        "class_counts": counts,
        **metrics,
        "baseline_majority": {
            "class": majority,
            "accuracy": round(counts[majority] / len(cells), 4),
            "macro_recall": round(1.0 / len(BCCD_CLASSES), 4),
        },
        "predicted_counts": {c: predicted.count(c) for c in sorted(set(predicted))},
    }


def _rate(k: int, n: int) -> dict[str, Any]:
    from hematovision.core.stats import percent_interval

    lo, hi = percent_interval(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95_pct": [lo, hi]}


def evaluate_blast(
    clf: Classifier,
    blast_dir: str | Path,
    pbc_dir: str | Path | None = None,
    bccd_root: str | Path | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Blast sensitivity/specificity on held-out ALL fields, and false-blast rates on normal cells.

    ``blast_dir`` is the output of :mod:`hemato_model.training.blast_data` (crops + ``split.json``). A cell
    is "called a blast" when ``blast`` is its top class (the differential counts top classes above
    the threshold; a blast under it becomes ``unidentified``, so the thresholded figures are also
    given). Per cell: sensitivity over crops of Early/Pre/Pro fields, specificity over crops of
    Benign (hematogone) fields. Per field: a field is called positive when at least half of its
    cells are called blasts. False-blast rates: PBC lymphocytes of the model's held-out ``split``
    (and all PBC test white cells), and BCCD single-WBC lymphocytes (:func:`bccd_cells`).
    Rates come with exact 95 % intervals (percent).
    """
    from PIL import Image

    from hemato_model.preprocessing import crop_cell
    from hematovision.core.datasets import BCCD_MPP

    if "blast" not in clf.classes:
        raise DataError(f"{clf.name} {clf.version} has no 'blast' class")
    b = clf.classes.index("blast")
    root = Path(blast_dir)
    doc = json.loads((root / "split.json").read_text())
    fields = [f for f in doc["fields"] if f["part"] == split and f["crops"]]
    names = [c for f in fields for c in f["crops"]]
    scale = float(doc["crop_um"]) / int(doc["input_px"])
    crops = load_crops([root / n for n in names], scale, clf.crop_um, clf.input_px)
    proba = clf.predict_proba(crops)
    top_blast = proba.argmax(1) == b
    kept_blast = top_blast & (proba.max(1) >= clf.threshold)
    called = dict(zip(names, top_blast, strict=True))
    is_blast = np.array([n.startswith("blast/") for n in names])
    out: dict[str, Any] = {"model": f"{clf.name} {clf.version}", "split": split, "threshold": clf.threshold}
    out["per_cell"] = {
        "sensitivity": _rate(int(top_blast[is_blast].sum()), int(is_blast.sum())),
        "specificity_hematogones": _rate(int((~top_blast[~is_blast]).sum()), int((~is_blast).sum())),
        "sensitivity_above_threshold": _rate(int(kept_blast[is_blast].sum()), int(is_blast.sum())),
        "hematogones_called_lymphocyte": _rate(
            int((proba[~is_blast].argmax(1) == clf.classes.index("lymphocyte")).sum()), int((~is_blast).sum())
        ),
        "predicted_on_blast_cells": dict(
            sorted({c: int((proba[is_blast].argmax(1) == i).sum()) for i, c in enumerate(clf.classes)}.items())
        ),
    }
    pos = [f for f in fields if f["label"] == "blast"]
    neg = [f for f in fields if f["label"] != "blast"]

    def positive(f: dict[str, Any]) -> bool:
        return 2 * sum(bool(called[c]) for c in f["crops"]) >= len(f["crops"])

    out["per_field"] = {
        "rule": "field positive when >= half of its cells are called blast",
        "sensitivity": _rate(sum(positive(f) for f in pos), len(pos)),
        "specificity": _rate(sum(not positive(f) for f in neg), len(neg)),
        "fields_without_cells": sum(1 for f in doc["fields"] if f["part"] == split and not f["crops"]),
    }
    for cls in ("Early", "Pre", "Pro"):
        sub = [c for f in fields if f["class"] == cls for c in f["crops"]]
        out["per_cell"][f"sensitivity_{cls}"] = _rate(sum(bool(called[c]) for c in sub), len(sub))
    if pbc_dir is not None:
        from hematovision.core.datasets import PBC_MPP

        files = json.loads((clf.model_dir / "split.json").read_text())[split]
        wbc = [f for f in files if f.split("/")[0] not in ("erythroblast", "platelet")]
        p = clf.predict_proba(load_crops([Path(pbc_dir) / f for f in wbc], PBC_MPP, clf.crop_um, clf.input_px))
        lym = np.array([f.startswith("lymphocyte/") for f in wbc])
        out["false_blast_pbc_lymphocytes"] = _rate(int((p[lym].argmax(1) == b).sum()), int(lym.sum()))
        out["false_blast_pbc_all_wbc"] = _rate(int((p.argmax(1) == b).sum()), len(wbc))
    if bccd_root is not None:
        cells = [c for c in bccd_cells(bccd_root) if c[2] == "lymphocyte"]
        bc = np.empty((len(cells), clf.input_px, clf.input_px, 3), dtype=np.uint8)
        for i, (jpg, centre, _) in enumerate(cells):
            with Image.open(jpg) as im:
                bc[i] = crop_cell(np.asarray(im.convert("RGB")), centre, BCCD_MPP, clf.crop_um, clf.input_px)
        p = clf.predict_proba(bc)
        out["false_blast_bccd_lymphocytes"] = _rate(int((p.argmax(1) == b).sum()), len(cells))
    return out
