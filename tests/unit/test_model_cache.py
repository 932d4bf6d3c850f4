"""The classify worker's classifiers, one network per SHA-256 (workers/model_cache.py): the same
weights are loaded once, a re-labelled copy shares the network under its own identity, and weights
that are not the registered ones are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hemato_model.classifier import ModelError
from hematovision.core.settings import SHIPPED_MODEL_DIR
from workers.model_cache import classifier_for

pytestmark = pytest.mark.slow


def test_one_network_per_sha_and_copies_keep_their_identity(tmp_path: Path) -> None:
    meta = json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())
    sha = meta["sha256"]
    v1 = classifier_for(SHIPPED_MODEL_DIR, sha)
    assert classifier_for(SHIPPED_MODEL_DIR, sha) is v1
    copy = tmp_path / "lab"
    shutil.copytree(SHIPPED_MODEL_DIR, copy)
    (copy / "model.json").write_text(json.dumps(meta | {"version": "1.0.0-lab", "threshold": 0.5}))
    lab = classifier_for(copy, sha)
    assert (lab.name, lab.version, lab.threshold, lab.model_dir) == (meta["name"], "1.0.0-lab", 0.5, copy)
    assert lab._model is v1._model and (v1.version, v1.threshold) == (meta["version"], meta["threshold"])
    with pytest.raises(ModelError, match="registered as"):
        classifier_for(copy, "0" * 64)
