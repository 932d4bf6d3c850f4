"""The learned platelet filter: a small multilayer perceptron that scores platelet candidates
(:mod:`hemato_model.detection.platelet_candidates`) from their features.

A model is a folder holding ``model.json`` (feature names, standardisation, weights, decision
threshold, provenance) and ``MODEL_CARD.md``; the shipped one is ``hemato_model/models/platelet-filter-v1``,
trained by :mod:`hemato_model.training.platelet_filter`. Pure NumPy: scoring a field's candidates
costs microseconds, and no deep-learning framework is loaded for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from hemato_model.detection.platelet_candidates import FEATURES

META_FILE = "model.json"
#: The shipped filter.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "platelet-filter-v1"


class PlateletFilterError(RuntimeError):
    """A platelet-filter folder that is missing, incomplete or for other features."""


@dataclass(frozen=True)
class PlateletFilter:
    """An MLP ``features -> tanh hidden layer -> sigmoid``, with its decision threshold."""

    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float
    threshold: float
    version: str

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Probability-like score in 0..1 per row of ``features`` (columns: ``FEATURES``)."""
        if features.shape[0] == 0:
            return np.zeros(0)
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        h = np.tanh(z @ self.w1 + self.b1)
        out: np.ndarray = 1.0 / (1.0 + np.exp(-(h @ self.w2 + self.b2)))
        return out

    def to_json(self, extra: dict[str, object]) -> dict[str, object]:
        return {
            "kind": "platelet-filter-mlp",
            "version": self.version,
            "features": list(FEATURES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "w1": self.w1.tolist(),
            "b1": self.b1.tolist(),
            "w2": self.w2.tolist(),
            "b2": self.b2,
            "threshold": self.threshold,
            **extra,
        }


def from_json(doc: dict[str, object]) -> PlateletFilter:
    if doc.get("kind") != "platelet-filter-mlp":
        raise PlateletFilterError(f"not a platelet filter: kind {doc.get('kind')!r}")
    if list(doc.get("features", [])) != list(FEATURES):  # type: ignore[call-overload]
        raise PlateletFilterError("the filter was trained on other candidate features than this code computes")

    def arr(key: str) -> np.ndarray:
        return np.asarray(doc[key], np.float64)

    return PlateletFilter(
        arr("mean"),
        arr("scale"),
        arr("w1"),
        arr("b1"),
        arr("w2"),
        float(doc["b2"]),  # type: ignore[arg-type]
        float(doc["threshold"]),  # type: ignore[arg-type]
        str(doc["version"]),
    )


@lru_cache(maxsize=4)
def load_filter(model_dir: Path = DEFAULT_MODEL_DIR) -> PlateletFilter:
    """The filter in ``model_dir`` (read once per process)."""
    path = Path(model_dir) / META_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlateletFilterError(f"cannot read the platelet filter {path}: {exc}") from exc
    return from_json(doc)
