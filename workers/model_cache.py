"""The classifiers of a classify worker, one per set of weights (SHA-256 of ``model.keras``).

A slide is classified with the model it was assigned when it was prepared
(:func:`workers.job_store.assigned_model`), so a worker holds the models of the slides in flight:
the promoted one and, for a while after a promotion, the one before it. Each network is loaded once
and kept (the last :data:`MAX_MODELS` used); two registered versions with the same weights (e.g. a
re-labelled copy) share the network and differ only in what their ``model.json`` says (name,
version, classes' threshold, ``ood.json``). Slides with no assigned model use the worker's
configured directory (:func:`hemato_model.classifier.load_classifier`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from pathlib import Path

from hemato_model.classifier import OOD_FILE, Classifier, ModelError, read_model_spec, sha256_file

#: How many networks a worker keeps loaded.
MAX_MODELS = 3

_BY_SHA: OrderedDict[str, Classifier] = OrderedDict()
_LOCK = threading.Lock()


def classifier_for(model_dir: Path, sha256: str) -> Classifier:
    """The classifier of ``model_dir``, whose ``model.keras`` must have this SHA-256.

    Raises:
        ModelError: the directory is incomplete, or its weights are not the registered ones.
    """
    spec = read_model_spec(model_dir)
    with _LOCK:
        base = _BY_SHA.get(sha256)
        if base is None:
            base = Classifier.load(model_dir)  # checks model.keras against model.json's sha256
            actual = base.meta.get("sha256") or sha256_file(Path(model_dir) / "model.keras")
            if actual != sha256:
                raise ModelError(f"{model_dir}: model.keras is {actual[:12]}…, registered as {sha256[:12]}…")
            _BY_SHA[sha256] = base
            while len(_BY_SHA) > MAX_MODELS:
                _BY_SHA.popitem(last=False)
        else:
            _BY_SHA.move_to_end(sha256)
    if base.model_dir == spec.model_dir and base.meta == spec.meta:
        return base
    if len(spec.classes) != len(base.classes):
        raise ModelError(f"{model_dir}: {len(spec.classes)} classes for a network with {len(base.classes)} outputs")
    ood_path = spec.model_dir / OOD_FILE
    return dataclasses.replace(
        base,
        **vars(spec),
        preprocessing=dict(spec.meta.get("preprocessing", {})),
        ood_stats=json.loads(ood_path.read_text()) if ood_path.is_file() else None,
    )
