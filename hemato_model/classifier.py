"""The white-cell classifier: a model directory loaded once per process.

A model is a directory holding ``model.keras`` (plain Keras 3 layers: the network takes float RGB
0..255 crops and ends in a softmax), ``model.json`` (``name``, ``version``, ``classes``,
``input_px``, ``crop_um``, ``threshold``, ``preprocessing``, ``sha256`` of ``model.keras``) and
``MODEL_CARD.md``. Crops come from :func:`hemato_model.preprocessing.crop_cell` at ``crop_um`` µm
and ``input_px`` pixels. A cell whose top probability is under ``threshold`` is reported as
``"unidentified"`` (the low-confidence bucket) rather than forced into a class.

Out of distribution: :meth:`Classifier.classify_scored` also gives each crop's energy score
``-logsumexp(logits)`` (Liu et al., "Energy-based out-of-distribution detection", NeurIPS 2020), the
logits being the final dense layer (``head``) applied to the penultimate features, from the same
forward pass. ``ood.json`` beside the model (optional; written by
``benchmarks/fit_ood_stats.py``) holds the energies' distribution on the model's own training
crops and the per-crop cut-off the domain gate uses (:attr:`Classifier.ood_stats`).

Per-class abstention: when ``ood.json`` also holds ``class_energy_thresholds`` (one energy cut-off
per class: a quantile of the energies of that class's correctly classified training crops), a crop
whose energy is above the cut-off of its top class is ``"unidentified"`` too, however confident its
softmax. A model without a blast class must not call a blast confidently "platelet" or "monocyte":
such crops look like no class's own training crops, and this rule keeps them out of the
differential (docs/validation.md, *Per-class energy abstention*).

Scale bands: a cell scanned at a coarse µm/px (a 20× slide, 0.5 µm/px) is up-sampled to the
network's input and its energy rises with the lost detail, so cut-offs fitted on PBC's 0.08 µm/px
crops would abstain on ordinary cells there. ``class_energy_bands`` in ``ood.json`` (optional) lists
cut-offs fitted on the same training crops re-sampled as a scan at ``scan_mpp``
(:func:`hemato_model.preprocessing.rescan`); a band applies to crops cut from an image at
``from_mpp`` µm/px or coarser (the labelling calls take the image's ``mpp``; without it, the base
cut-offs apply).

TensorFlow/Keras are imported only when a model is loaded.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hematovision.core.hashing import sha256_file

log = logging.getLogger(__name__)

UNIDENTIFIED = "unidentified"
MODEL_FILE = "model.keras"
META_FILE = "model.json"
OOD_FILE = "ood.json"
#: The scan scale of the crops being labelled: unknown, one for all, or one per crop (µm/px).
Mpp = float | Sequence[float] | np.ndarray | None
#: The layer whose input is the penultimate features and whose output is the softmax.
HEAD_LAYER = "head"


class ModelError(ValueError):
    """A model directory is missing, incomplete or corrupt."""


@dataclass
class ModelSpec:
    """What a model directory says of itself (``model.json``), read without loading the network:
    enough to cut crops for it (``crop_um``, ``input_px``) on a machine that never classifies."""

    model_dir: Path
    name: str
    version: str
    classes: list[str]
    input_px: int
    crop_um: float
    threshold: float
    meta: dict[str, Any]


def read_model_spec(model_dir: str | Path) -> ModelSpec:
    """Read and check ``model.json`` of a model directory.

    Raises:
        ModelError: missing files or a bad ``model.json``.
    """
    model_dir = Path(model_dir)
    meta_path, model_path = model_dir / META_FILE, model_dir / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise ModelError(f"{model_dir}: not a model directory (needs {MODEL_FILE} and {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path}: not valid JSON ({exc})") from exc
    required = ("name", "version", "classes", "input_px", "crop_um", "threshold")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ModelError(f"{meta_path}: missing {', '.join(missing)}")
    return ModelSpec(
        model_dir=model_dir,
        name=str(meta["name"]),
        version=str(meta["version"]),
        classes=list(meta["classes"]),
        input_px=int(meta["input_px"]),
        crop_um=float(meta["crop_um"]),
        threshold=float(meta["threshold"]),
        meta=meta,
    )


@dataclass
class Classifier(ModelSpec):
    """A loaded white-cell classifier: its spec plus the network (see the module docstring for the
    directory layout)."""

    preprocessing: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    #: ``ood.json`` of the model directory, when present (see the module docstring).
    ood_stats: dict[str, Any] | None = None
    _model: Any = field(default=None, repr=False)
    _predict: Any = field(default=None, repr=False)
    _head: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, model_dir: str | Path, verify_sha256: bool = True) -> Classifier:
        """Load a model directory (safe mode: no Lambda or custom layers are deserialised).

        Raises:
            ModelError: missing files, bad ``model.json``, a checksum mismatch, or per-class energy
                cut-offs in ``ood.json`` that do not cover every class.
        """
        spec = read_model_spec(model_dir)
        model_dir, meta = spec.model_dir, spec.meta
        model_path = model_dir / MODEL_FILE
        if verify_sha256 and meta.get("sha256") and sha256_file(model_path) != meta["sha256"]:
            raise ModelError(f"{model_path}: sha256 differs from {META_FILE}; the file is corrupt or was replaced")

        import keras

        model = keras.models.load_model(model_path, compile=False, safe_mode=True)
        n_out = int(model.outputs[0].shape[-1])
        if n_out != len(meta["classes"]):
            raise ModelError(f"{model_path}: {n_out} outputs but {len(meta['classes'])} classes in {META_FILE}")
        ood_path = model_dir / OOD_FILE
        ood = json.loads(ood_path.read_text()) if ood_path.is_file() else None
        clf = cls(**vars(spec), preprocessing=dict(meta.get("preprocessing", {})), ood_stats=ood)
        _ = clf._bands  # a bad ood.json fails here, at load, not at the first slide
        clf._model = model
        try:
            head = model.get_layer(HEAD_LAYER)
            kernel, bias = (np.asarray(w, dtype=np.float64) for w in head.get_weights())
            clf._head = (kernel, bias)
            # one forward pass gives the softmax and the penultimate features
            clf._model = keras.Model(model.inputs, [model.outputs[0], head.input])
        except ValueError:
            log.info("%s has no %r layer: no energy scores", model_dir, HEAD_LAYER)
        log.info("loaded classifier %s %s from %s", clf.name, clf.version, model_dir)
        return clf

    def _compiled(self) -> Any:
        """Batched inference compiled once for the active Keras backend: a ``tf.function`` on
        TensorFlow (CPU workers), ``jax.jit`` on JAX (GPU workers: ``KERAS_BACKEND=jax``)."""
        if self._predict is None:
            import keras

            model = self._model
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                spec = tf.TensorSpec((None, self.input_px, self.input_px, 3), tf.uint8)

                @tf.function(input_signature=[spec], reduce_retracing=True)
                def predict(x: Any) -> Any:
                    return model(tf.cast(x, tf.float32), training=False)

            elif keras.backend.backend() == "jax":
                import jax
                import jax.numpy as jnp

                @jax.jit
                def _jit(trainable: Any, non_trainable: Any, x: Any) -> Any:
                    y, _ = model.stateless_call(trainable, non_trainable, x.astype(jnp.float32), training=False)
                    return y

                def predict(x: Any) -> Any:
                    return _jit(
                        [v.value for v in model.trainable_variables],
                        [v.value for v in model.non_trainable_variables],
                        x,
                    )

            else:

                def predict(x: Any) -> Any:
                    return model.predict_on_batch(np.asarray(x, dtype=np.float32))

            self._predict = predict
        return self._predict

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of crops.

        Args:
            crops: uint8 (N, input_px, input_px, 3) RGB, cut by ``crop_cell`` at ``crop_um``.

        Returns:
            float32 (N, len(classes)); rows sum to 1.
        """
        return self.predict_scored(crops)[0]

    def predict_scored(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(class probabilities, energy score per crop or None) of a batch of crops (see
        :meth:`predict_proba` and the module docstring)."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        expected = (self.input_px, self.input_px, 3)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            raise ValueError(f"crops must be (N, {self.input_px}, {self.input_px}, 3), got {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32), np.zeros(0) if self._head else None
        if crops.dtype != np.uint8:
            crops = np.clip(crops, 0, 255).astype(np.uint8)
        predict = self._compiled()
        out = [predict(crops[i : i + self.batch_size]) for i in range(0, len(crops), self.batch_size)]
        if self._head is None:
            return np.concatenate([np.asarray(o) for o in out]).astype(np.float32), None
        proba = np.concatenate([np.asarray(o[0]) for o in out]).astype(np.float32)
        features = np.concatenate([np.asarray(o[1]) for o in out]).astype(np.float64)
        kernel, bias = self._head
        logits = features @ kernel + bias
        top = logits.max(axis=1)
        energy = -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))
        return proba, energy

    def _cutoffs(self, cut: dict[str, Any] | None) -> np.ndarray | None:
        if not cut:
            return None
        missing = [c for c in self.classes if c not in cut]
        if missing:
            raise ModelError(f"{self.model_dir}/{OOD_FILE}: class energy cut-offs lack {missing}")
        return np.array([float(cut[c]) for c in self.classes])

    @cached_property
    def _bands(self) -> list[tuple[float, np.ndarray | None]]:
        """(from µm/px, cut-offs in class order or None), finest first: the base cut-offs from 0, then
        ``class_energy_bands``; read once per instance (a bad ``ood.json`` raises ModelError)."""
        ood = self.ood_stats or {}
        bands = [(0.0, self._cutoffs(ood.get("class_energy_thresholds")))]
        for band in ood.get("class_energy_bands") or []:
            try:
                ok = float(band["from_mpp"]) > 0 and bool(band["class_energy_thresholds"])
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise ModelError(
                    f"{self.model_dir}/{OOD_FILE}: a class_energy_bands entry needs from_mpp > 0 and cut-offs"
                )
            bands.append((float(band["from_mpp"]), self._cutoffs(band["class_energy_thresholds"])))
        return sorted(bands, key=lambda b: b[0])

    @property
    def class_energy_max(self) -> np.ndarray | None:
        """The per-class energy cut-offs of ``ood.json`` (``class_energy_thresholds``) in class
        order, or None when the model has none (see the module docstring)."""
        return self.class_energy_cutoffs(None)

    def class_energy_cutoffs(self, mpp: float | None) -> np.ndarray | None:
        """The per-class cut-offs for crops cut from an image at ``mpp`` µm/px: those of the
        coarsest band whose ``from_mpp`` is at or under ``mpp`` (the base cut-offs when ``mpp`` is
        None or finer than every band), in class order; None when the model has none."""
        if mpp is None:
            return self._bands[0][1]
        return [cut for start, cut in self._bands if start <= float(mpp)][-1]

    def identified(self, proba: np.ndarray, energy: np.ndarray | None = None, mpp: Mpp = None) -> np.ndarray:
        """Which rows keep their top class: top probability at or above ``threshold`` and, for a
        model with per-class energy cut-offs, energy at or under the cut-off of the top class (for
        crops cut at ``mpp`` µm/px, :meth:`class_energy_cutoffs`; ``mpp`` is one scale for every
        row or one per row).

        Raises:
            ValueError: the model has per-class cut-offs and ``energy`` is None, or ``mpp`` is a
                sequence of the wrong length.
        """
        proba = np.asarray(proba)
        top = proba.argmax(axis=1)
        kept = proba.max(axis=1) >= self.threshold
        if all(cut is None for _, cut in self._bands):
            return kept
        if energy is None:
            raise ValueError(f"{self.name} {self.version} abstains on energy too: pass the energies")
        given = np.asarray(np.nan if mpp is None else mpp, dtype=float)
        scales = np.full(len(proba), float(given)) if given.ndim == 0 else given
        if scales.shape != (len(proba),):
            raise ValueError(f"mpp: one scale or one per row ({len(proba)}), got shape {given.shape}")
        cut = np.full(len(proba), np.inf)
        for s in np.unique(scales):  # NaN (unknown) once: np.unique keeps one NaN
            rows = np.isnan(scales) if np.isnan(s) else scales == s
            table = self.class_energy_cutoffs(None if np.isnan(s) else float(s))
            if table is not None:
                cut[rows] = table[top[rows]]
        return kept & (np.asarray(energy, float) <= cut)

    def labels_from_proba(
        self, proba: np.ndarray, energy: np.ndarray | None = None, mpp: Mpp = None
    ) -> list[tuple[str, float]]:
        """(label, top probability) per row; ``"unidentified"`` where :meth:`identified` is False."""
        top = proba.argmax(axis=1)
        kept = self.identified(proba, energy, mpp)
        return [(self.classes[k] if kept[i] else UNIDENTIFIED, float(proba[i, k])) for i, k in enumerate(top)]

    def classify(self, crops: np.ndarray, mpp: Mpp = None) -> list[tuple[str, float]]:
        """Label and top probability of each crop (cut from an image at ``mpp`` µm/px, when known);
        low-confidence crops are ``"unidentified"``."""
        proba, energy = self.predict_scored(crops)
        return self.labels_from_proba(proba, energy, mpp)

    def classify_scored(self, crops: np.ndarray, mpp: Mpp = None) -> tuple[list[tuple[str, float]], list[float | None]]:
        """:meth:`classify` and each crop's energy score (None without a ``head`` layer)."""
        proba, energy = self.predict_scored(crops)
        energies: list[float | None] = [None] * len(proba) if energy is None else [round(float(e), 5) for e in energy]
        return self.labels_from_proba(proba, energy, mpp), energies


_CACHE: dict[Path, Classifier] = {}
_LOCK = threading.Lock()


def load_classifier(model_dir: str | Path) -> Classifier:
    """The classifier of ``model_dir``, loaded once per process and then reused."""
    key = Path(model_dir).resolve()
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = Classifier.load(key)
        return _CACHE[key]
