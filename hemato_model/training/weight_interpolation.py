"""Choosing how far a fine-tuned model moves from its parent: weight-space interpolation.

After the lab fine-tune, the weights of the parent (θ₀, the model as it was before fine-tuning) and
of the fine-tuned model (θ₁) are mixed, θ(α) = (1 − α)·θ₀ + α·θ₁, and α is chosen on the
*validation* cells: the largest lab gain among the α whose public (PBC) validation figures are not
lower than the parent's by more than the promotion margin — the same protected figures and margin
as ``hematovision validate-model`` (:mod:`hemato_model.training.model_comparison`), applied to the
validation split so that the test split stays unseen. Interpolating a fine-tuned network with the
one it started from keeps most of the gain on the new data and most of the old behaviour ("robust
fine-tuning", Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022); BatchNorm
statistics are frozen in the fine-tune, so the two share them and every θ(α) is a valid network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hemato_model.training.model_comparison import DEFAULT_MARGIN, compare_models, model_figures

DEFAULT_ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)


def interpolate(w0: Sequence[np.ndarray], w1: Sequence[np.ndarray], alpha: float) -> list[np.ndarray]:
    """(1 − alpha)·w0 + alpha·w1, array by array (integer arrays, e.g. counters, are taken from w1)."""
    if len(w0) != len(w1):
        raise ValueError(f"{len(w0)} and {len(w1)} weight arrays: not the same network")
    out = []
    for a, b in zip(w0, w1, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"weight shapes differ: {a.shape} and {b.shape}")
        if np.issubdtype(b.dtype, np.floating):
            out.append(((1.0 - alpha) * a + alpha * b).astype(b.dtype))
        else:
            out.append(b)
    return out


def choose_alpha(
    predict: Callable[[float], dict[str, np.ndarray]],
    truth: Mapping[str, Sequence[str]],
    classes: Sequence[str],
    protected_sets: Sequence[str],
    gain_set: str,
    *,
    current_classes: Sequence[str],
    threshold: float,
    baseline: Mapping[str, dict[str, Any]] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    margin: float = DEFAULT_MARGIN,
    min_support: int = 20,
) -> dict[str, Any]:
    """The α to keep, and every α's figures.

    Args:
        predict: α → ``{data set: probabilities}`` of the model θ(α) on each validation set.
        truth: the true class of every cell, per data set.
        protected_sets: data sets whose protected figures θ(α) may not lower beyond ``margin``
            against θ(0) (the PBC validation cells).
        gain_set: the data set whose accuracy is maximised (the lab's validation cells); ties go to
            the larger α.
        threshold: the parent's low-confidence threshold (only the unidentified rate depends on it).
        baseline: the parent's own figures (:func:`model_figures`) on the protected sets; default
            θ(0)'s. They differ when the head grew (θ(0) then has a refitted head).

    Returns:
        ``{"alpha", "within_margin", "tried": [{"alpha", "accuracy": {set: acc}, "dropped": [...]},
        ...]}``. When no α keeps the protected figures (possible only with a ``baseline``), α = 0 is
        returned with ``within_margin`` false: ``validate-model`` will then refuse the model.
    """
    if 0.0 not in alphas:
        alphas = (*alphas, 0.0)
    figures: dict[float, dict[str, dict[str, Any]]] = {}
    for a in alphas:
        proba = predict(a)
        figures[a] = {name: model_figures(truth[name], proba[name], classes, threshold) for name in proba}
    base = {name: (baseline or figures[0.0])[name] for name in protected_sets}
    tried = []
    best: tuple[float, float] | None = None
    for a in alphas:
        verdict = compare_models(
            base,
            {name: figures[a][name] for name in protected_sets},
            current_classes,
            margin=margin,
            min_support=min_support,
        )
        acc = {name: figures[a][name]["accuracy"] for name in figures[a]}
        tried.append({"alpha": a, "accuracy": acc, "dropped": verdict["dropped"]})
        if not verdict["refused"]:
            key = (float(acc.get(gain_set, 0.0)), a)
            if best is None or key > best:
                best = key
    if best is None:
        return {"alpha": 0.0, "within_margin": False, "margin": margin, "tried": tried}
    return {"alpha": best[1], "within_margin": True, "margin": margin, "tried": tried}
