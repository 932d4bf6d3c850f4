"""Comparing a candidate model with the current one before promotion (``hematovision validate-model``).

Pure functions over predictions: each model's figures on each data set (the lab's held-out reviewed
cells, the PBC test split), the differences, and the verdict. A model is **promotable** only if no
*protected figure* drops by more than the margin (absolute, on a 0..1 scale; default 0.02):

- accuracy on every data set (top class, as ``hematovision evaluate`` reports it);
- recall of every class the current model knows, on every data set where it has at least
  ``min_support`` cells (fewer cells make a single cell worth more than any sensible margin);
- blast sensitivity, where the data hold blasts.

The unidentified rate and blast specificity are reported, not protected (a lab may accept more
cells to review). Both models are scored on the same cells, so each drop also says how many cells
the candidate lost and gained (right before, wrong now, and the reverse) and the exact one-sided
McNemar p-value of that split: on a test split of ~80 cells a class, one cell is 1.2 points, and a
drop of three cells lost and none gained (p = 0.125) is within what chance gives. The verdict is
still the margin's (a protected figure is protected); the p-value is the evidence a director's
override reason can cite. A refused verdict can be overridden only with a written reason, which the JSON
and the PDF record (the lab director signs it). This is the usual non-inferiority framing of a
method change in laboratory medicine (CLSI EP12/EP15: a new method is accepted when it is no worse
than the current one by a stated margin), applied figure by figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hemato_model.training.evaluation import scored

BLAST = "blast"
DEFAULT_MARGIN = 0.02
DEFAULT_MIN_SUPPORT = 20
#: A drop whose one-sided exact McNemar p-value is under this is reported as beyond chance.
CHANCE_ALPHA = 0.05


def model_figures(
    truth: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    kept: np.ndarray | None = None,
) -> dict[str, Any]:
    """One model's figures on one data set: accuracy, per-class recall (over the true classes),
    unidentified rate, and blast sensitivity/specificity when blasts are among the truth; ``cells``
    holds each cell's truth and whether its top class was right, in input order (for the paired
    comparison of :func:`compare_models`).

    ``kept``: the cells that keep their top class under the model's own rule (default: top
    probability ≥ ``threshold``; see :func:`clf_figures`). A class the model does not have counts as
    missed (recall 0)."""
    truth = list(truth)
    true_classes = sorted(set(truth))
    s = scored(truth, proba, list(classes), threshold, true_classes, kept=kept)
    top = proba.argmax(axis=1)
    out: dict[str, Any] = {
        "n": s["n"],
        "accuracy": s["accuracy"],
        "accuracy_unidentified_as_error": s["accuracy_unidentified_as_error"],
        "unidentified_rate": s["unidentified_rate"],
        "per_class_recall": {c: s["per_class"][c]["recall"] for c in true_classes},
        "support": {c: s["per_class"][c]["support"] for c in true_classes},
        "cells": {"truth": truth, "correct": [int(classes[k] == t) for k, t in zip(top, truth, strict=True)]},
    }
    if BLAST in true_classes:
        own = proba.max(axis=1) >= threshold if kept is None else kept  # the model's own abstention rule
        called = np.array([classes[k] == BLAST for k in top]) & own
        is_blast = np.array([t == BLAST for t in truth])
        n_pos, n_neg = int(is_blast.sum()), int((~is_blast).sum())
        out["blast_sensitivity"] = round(float((called & is_blast).sum() / n_pos), 4) if n_pos else None
        out["blast_specificity"] = round(float((~called & ~is_blast).sum() / n_neg), 4) if n_neg else None
    return out


def protected_figures(
    figures: dict[str, Any], current_classes: Sequence[str], min_support: int = DEFAULT_MIN_SUPPORT
) -> dict[str, float]:
    """The figures a promotion may not lower, by name (``accuracy``, ``recall:<class>``, ``blast_sensitivity``)."""
    out = {"accuracy": float(figures["accuracy"])}
    for c, r in figures["per_class_recall"].items():
        if c in current_classes and figures["support"].get(c, 0) >= min_support:
            out[f"recall:{c}"] = float(r)
    if figures.get("blast_sensitivity") is not None:
        out["blast_sensitivity"] = float(figures["blast_sensitivity"])
    return out


def paired_counts(current: dict[str, Any], candidate: dict[str, Any], figure: str) -> dict[str, Any] | None:
    """Cells behind one figure's change, where both models' ``cells`` are at hand: ``lost`` (right
    with the current model, wrong with the candidate), ``gained`` (the reverse), ``n`` (the cells the
    figure is over: all of them for ``accuracy``, the class's for ``recall:<class>``) and ``p_value``,
    the exact one-sided McNemar test that the candidate is worse (P[Binomial(lost + gained, 1/2) ≥
    lost]). None for a figure not over top-class correctness (blast sensitivity) or without cells."""
    a, b = current.get("cells"), candidate.get("cells")
    if not a or not b or a["truth"] != b["truth"] or not (figure == "accuracy" or figure.startswith("recall:")):
        return None
    cls = figure.split(":", 1)[1] if figure.startswith("recall:") else None
    rows = [(x, y) for t, x, y in zip(a["truth"], a["correct"], b["correct"], strict=True) if cls in (None, t)]
    lost = sum(1 for x, y in rows if x and not y)
    gained = sum(1 for x, y in rows if y and not x)
    return {"n": len(rows), "lost": lost, "gained": gained, "p_value": round(mcnemar_one_sided(lost, gained), 4)}


def mcnemar_one_sided(lost: int, gained: int) -> float:
    """P[X ≥ lost] for X ~ Binomial(lost + gained, 1/2): how often chance alone splits the discordant
    cells at least this much against the candidate (1.0 when none are discordant)."""
    n = lost + gained
    return float(sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n) if n else 1.0


def compare_models(
    current: dict[str, dict[str, Any]],
    candidate: dict[str, dict[str, Any]],
    current_classes: Sequence[str],
    *,
    margin: float = DEFAULT_MARGIN,
    min_support: int = DEFAULT_MIN_SUPPORT,
    override_reason: str | None = None,
) -> dict[str, Any]:
    """The comparison and the verdict.

    Args:
        current, candidate: ``{data set name: model_figures(...)}`` of each model, same data sets.
        current_classes: the current model's classes (recall of classes it lacks is not protected).
        margin: the largest allowed drop of a protected figure (absolute, 0..1).
        override_reason: a person's reason to promote despite drops (recorded; empty = none).

    Returns:
        ``{"promotable", "refused", "dropped": [...], "changes": {data set: {figure: {current,
        candidate, change[, cells]}}}, "margin", "override_reason"}``; a drop and a change carry
        :func:`paired_counts` (``lost``, ``gained``, ``p_value``; a drop also ``beyond_chance``) where
        both figures hold their ``cells``. ``refused`` is the verdict of the
        figures alone; ``promotable`` is true when nothing dropped or an override reason is given.
    """
    if not 0 <= margin < 1:
        raise ValueError("margin must be in 0..1")
    dropped: list[dict[str, Any]] = []
    changes: dict[str, dict[str, Any]] = {}
    for name in sorted(current):
        cur = protected_figures(current[name], current_classes, min_support)
        new = protected_figures(candidate[name], current_classes, min_support)
        changes[name] = {}
        for fig, before in cur.items():
            after = new.get(fig, 0.0)
            change = round(after - before, 4)
            changes[name][fig] = {"current": before, "candidate": after, "change": change}
            cells = paired_counts(current[name], candidate[name], fig)
            if cells is not None:
                changes[name][fig]["cells"] = cells
            if before - after > margin + 1e-9:
                drop: dict[str, Any] = {"data": name, "figure": fig, "current": before, "candidate": after}
                drop["drop"] = -change
                if cells is not None:
                    drop |= {**cells, "beyond_chance": cells["p_value"] < CHANCE_ALPHA}
                dropped.append(drop)
    reason = (override_reason or "").strip() or None
    return {
        "promotable": not dropped or reason is not None,
        "refused": bool(dropped),
        "overridden": bool(dropped) and reason is not None,
        "override_reason": reason,
        "margin": margin,
        "min_support": min_support,
        "dropped": dropped,
        "changes": changes,
    }


def flag_change_summary(per_slide: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the flags of signed-off slides would change: per slide ``{"slide", "signed", "current",
    "candidate"}`` (flag code lists: from the signed-off labels, and from each model's labels)."""
    added: dict[str, int] = {}
    removed: dict[str, int] = {}
    changed = 0
    agree = {"current": 0, "candidate": 0}
    skipped = 0
    for s in per_slide:
        if s.get("skipped"):  # the slide file could not be read
            skipped += 1
            continue
        cur, new, signed = set(s["current"]), set(s["candidate"]), set(s["signed"])
        if cur != new:
            changed += 1
        for code in new - cur:
            added[code] = added.get(code, 0) + 1
        for code in cur - new:
            removed[code] = removed.get(code, 0) + 1
        agree["current"] += int(cur == signed)
        agree["candidate"] += int(new == signed)
    return {
        "slides": len(per_slide) - skipped,
        "slides_skipped": skipped,
        "slides_with_changed_flags": changed,
        "flags_added": dict(sorted(added.items())),
        "flags_removed": dict(sorted(removed.items())),
        "slides_matching_signed_off_flags": agree,
        "per_slide": list(per_slide),
    }


def held_out_figures(clf: Any, data_dir: Path) -> tuple[dict[str, Any], int]:
    """``model_figures`` of a classifier on an exported folder of reviewed cells (crops of
    ``crop_um`` at any resolution, see :func:`hemato_model.training.lab_finetune.load_lab_crops`)."""
    from hemato_model.training.classifier_training import list_image_folder
    from hemato_model.training.lab_finetune import load_lab_crops

    paths, labels = list_image_folder(data_dir)
    return clf_figures(clf, labels, load_lab_crops(paths, clf.crop_um, clf.input_px)), len(paths)


def pbc_test_files(model_dir: Path, exclude: Sequence[str] = ()) -> tuple[Path, list[str], float]:
    """(PBC folder, test files, µm/px) of a model's ``split.json``, less ``exclude``.

    Raises:
        DataError: no split.json, or no test files left.
    """
    import json

    from hemato_model.training.classifier_training import DataError

    path = model_dir / "split.json"
    if not path.is_file():
        raise DataError(f"{model_dir}: no split.json, so its PBC test split is unknown")
    doc = json.loads(path.read_text())
    meta = json.loads((model_dir / "model.json").read_text())
    skip = set(exclude)
    files = [f for f in doc.get("test", []) if f not in skip]
    if not files:
        raise DataError(f"{path}: no PBC test files (after exclusions)")
    mpp = float(meta.get("preprocessing", {}).get("training_mpp", 0.08))
    return Path(doc.get("data_dir", "")), files, mpp


def pbc_figures(clf: Any, root: Path, files: Sequence[str], mpp: float) -> dict[str, Any]:
    """``model_figures`` of a classifier on PBC files (class = first path part)."""
    from hemato_model.training.classifier_training import load_crops

    crops = load_crops([root / f for f in files], mpp, clf.crop_um, clf.input_px)
    return clf_figures(clf, [f.split("/")[0] for f in files], crops)


def clf_figures(clf: Any, truth: Sequence[str], crops: np.ndarray) -> dict[str, Any]:
    """``model_figures`` of a classifier on crops under its own abstention rule (threshold and,
    where it has them, per-class energy cut-offs: :meth:`~hemato_model.classifier.Classifier.identified`)."""
    proba, energy = clf.predict_scored(crops)
    return model_figures(truth, proba, clf.classes, clf.threshold, kept=clf.identified(proba, energy))
