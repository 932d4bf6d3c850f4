"""Evaluation of a red-cell morphology model (``hematovision evaluate-rbc``).

Every labelled cell of the chosen fields is cropped at the model's ``crop_um``/``input_px`` and
scored by its top class (no reject option), like ``hematovision evaluate`` for white cells:
``accuracy``, ``macro_f1`` (over the classes present), ``per_class`` (precision, recall, f1, n) and
``confusion_matrix`` (rows true, columns predicted, in ``confusion_matrix_order``). Beside them the
low-confidence share under the model's threshold (``unidentified_rate``).

Fields: by default the held-out **test** fields of the model's ``split.json`` (split by field, so no
cell of those fields was seen in training); ``split=None`` scores every labelled field of the folder.

Glass: a model trained with the background/context augmentation (``preprocessing.relight_to_glass``
in its ``model.json``) sees every crop relit from its field's glass colour to ``glass_rgb``, as in
the pipeline (:func:`hemato_model.rbc.context.normalise_glass`); older models see the crops as cut.

Scale: ``mpp`` when given (source ``given``), else estimated from the red cells of the evaluated
fields themselves (the median of ``estimate_mpp`` over them; see :mod:`hemato_model.rbc.data`), never
taken from the training run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hemato_model.rbc.data import RBC_CLASSES, ProgressFactory, RbcDataError, list_fields, load_crops

if TYPE_CHECKING:
    from hemato_model.classifier import Classifier


def split_field_names(model_dir: str | Path, part: str) -> list[str]:
    """The field names of one part (``train``/``val``/``test``) of a model's ``split.json``.

    Raises:
        RbcDataError: no ``split.json`` or no such part in it.
    """
    path = Path(model_dir) / "split.json"
    if not path.is_file():
        raise RbcDataError(f"{path.parent}: the model has no split.json; evaluate the whole folder (--split all)")
    try:
        doc = json.loads(path.read_text())
        names = doc[part]
    except (ValueError, KeyError, TypeError):
        raise RbcDataError(f"{path}: no '{part}' list of field names") from None
    if not isinstance(names, list):
        raise RbcDataError(f"{path}: '{part}' is not a list of field names")
    return [str(n) for n in names]


def evaluate_rbc(
    clf: Classifier,
    data_dir: str | Path,
    mpp: float | None = None,
    split: str | None = "test",
    scale_mode: str = "folder",
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Score ``clf`` on the labelled fields of ``data_dir`` (one part of its split, or all of them).

    Raises:
        RbcDataError: bad folder or labels, none of the split's fields in the folder, or a model
            whose classes are not the 13 red-cell classes.
    """
    from hemato_model.training.evaluation import classification_metrics

    if list(clf.classes) != list(RBC_CLASSES):
        raise RbcDataError(f"{clf.model_dir}: not a red-cell model (its classes are {', '.join(clf.classes)})")
    fields = list_fields(data_dir)
    if split is not None:
        wanted = set(split_field_names(clf.model_dir, split))
        fields = [f for f in fields if f.name in wanted]
        if not fields:
            raise RbcDataError(f"none of the model's {split} fields is in {data_dir} (another data set?)")
    crops = load_crops(fields, clf.crop_um, clf.input_px, mpp, scale_mode, progress)
    prep = (getattr(clf, "meta", None) or {}).get("preprocessing") or {}
    relight = bool(prep.get("relight_to_glass")) and prep.get("glass_rgb") is not None
    x = crops.x
    if relight:
        from hemato_model.rbc.context import normalise_glass

        x = normalise_glass(crops.x, crops.crop_glass(), prep["glass_rgb"])
    proba = clf.predict_proba(x)
    y_true = [RBC_CLASSES[i] for i in crops.y]
    y_pred = [RBC_CLASSES[i] for i in proba.argmax(axis=1)]
    metrics = classification_metrics(y_true, y_pred, RBC_CLASSES)
    for scores in metrics["per_class"].values():
        scores["n"] = scores.pop("support")
    unidentified = proba.max(axis=1) < clf.threshold
    return {
        "model": {"name": clf.name, "version": clf.version, "dir": str(clf.model_dir)},
        "data": str(data_dir),
        "split": split or "all",
        "n_fields": len(fields),
        "scale": crops.scale.summary(),
        "crop_um": clf.crop_um,
        "input_px": clf.input_px,
        "glass_normalised": relight,
        **metrics,
        "unidentified_rate": round(float(unidentified.mean()), 4) if len(unidentified) else 0.0,
        "accuracy_identified": round(
            float((np.asarray(y_true)[~unidentified] == np.asarray(y_pred)[~unidentified]).mean()), 4
        )
        if (~unidentified).any()
        else 0.0,
    }
