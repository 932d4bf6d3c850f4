"""The classifier's out-of-distribution statistics (``ood.json`` beside a model), fitted on its own
training crops.

- The energy distribution ``-logsumexp(logits)`` of the training crops and its ``crop_quantile``
  (the per-crop cut-off the slide gate counts crops above; :func:`energy_statistics`).
- Optionally, one cut-off per class (:func:`class_energy_thresholds`): the ``class_quantile`` of the
  energies of that class's *correctly classified* training crops. The classifier then calls a crop
  ``unidentified`` when its energy is above the cut-off of its top class
  (:meth:`hemato_model.classifier.Classifier.identified`). How the quantile was chosen:
  ``benchmarks/class_energy_quantile.py`` (validation crops only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SCORE = "energy = -logsumexp(logits) of the head layer; higher = less like the training crops"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99, 99.9)
#: Fewest correctly classified training crops a class needs for its own cut-off.
MIN_CLASS_CROPS = 20


def energy_statistics(energy: np.ndarray, quantile: float = 0.99) -> dict[str, Any]:
    """The distribution of the training crops' energies and the per-crop cut-off (its ``quantile``)."""
    energy = np.asarray(energy, dtype=float)
    return {
        "score": SCORE,
        "crop_quantile": quantile,
        "energy_threshold": round(float(np.quantile(energy, quantile)), 4),
        "train_energy_percentiles": {str(q): round(float(np.percentile(energy, q)), 4) for q in PERCENTILES},
    }


def class_energy_thresholds(
    proba: np.ndarray, energy: np.ndarray, truth: Sequence[str], classes: Sequence[str], quantile: float
) -> dict[str, float]:
    """Per class, the ``quantile`` of the energies of the training crops of that class the model
    classifies correctly (top class = truth).

    Raises:
        ValueError: a class has fewer than :data:`MIN_CLASS_CROPS` such crops, or the quantile is
            outside (0, 1].
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"class quantile must be in (0, 1], got {quantile}")
    top = np.asarray(proba).argmax(axis=1)
    truth_arr = np.asarray(truth)
    energy = np.asarray(energy, dtype=float)
    out: dict[str, float] = {}
    for k, c in enumerate(classes):
        own = energy[(top == k) & (truth_arr == c)]
        if len(own) < MIN_CLASS_CROPS:
            raise ValueError(f"class {c!r}: {len(own)} correctly classified training crops, need {MIN_CLASS_CROPS}")
        out[c] = round(float(np.quantile(own, quantile)), 4)
    return out
