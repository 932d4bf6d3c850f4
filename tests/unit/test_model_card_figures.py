"""The default classifier's published figures are what the code measures now.

The model card, README and docs/validation.md quote the default model's held-out PBC test accuracy
and its out-of-domain BCCD accuracy from its ``metrics.json``. Here both are measured again with the
same functions ``hematovision evaluate`` calls, on the real data (a CI run without the data fails),
and must agree with ``metrics.json`` to within two cells, so a change that moved them cannot land
while the card still quotes the old figures. Every per-class recall is checked the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hematovision.core.datasets import BCCD_DIR, PBC_MPP, pbc_root
from hematovision.core.settings import SHIPPED_MODEL_DIR

pytestmark = pytest.mark.slow

#: Two cells of the smaller set (339 BCCD cells): room for float round-off near a cut-off, no more.
CELLS = 2


@pytest.fixture(scope="module")
def published() -> dict:  # type: ignore[type-arg]
    return json.loads((SHIPPED_MODEL_DIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def clf():  # type: ignore[no-untyped-def]
    from hemato_model.classifier import Classifier

    return Classifier.load(SHIPPED_MODEL_DIR)


def _agrees(got: dict, want: dict, n: int) -> None:  # type: ignore[type-arg]
    tol = CELLS / n + 1e-4
    for key in ("accuracy", "macro_recall", "unidentified_rate"):
        assert abs(got[key] - want[key]) <= tol, (key, got[key], want[key])
    for cls, row in want["per_class"].items():
        k = row.get("support") or n
        assert abs(got["per_class"][cls]["recall"] - row["recall"]) <= CELLS / k + 1e-4, (cls, got["per_class"][cls])


def test_pbc_held_out_test_figure_is_reproduced(clf, published, data_root: Path, require) -> None:  # type: ignore[no-untyped-def]
    from hemato_model.training.evaluation import evaluate_folder

    root = pbc_root(data_root)
    require(root.is_dir(), f"PBC images at {root}")
    got = evaluate_folder(clf, root, mpp=PBC_MPP, split="test")
    want = published["pbc_test"]
    assert got["n"] == want["n"] == 656
    _agrees(got, want, got["n"])
    assert got["accuracy"] < 0.98  # the card says the 0.98 target is not met: it must not claim it


def test_bccd_out_of_domain_figure_is_reproduced(clf, published, data_root: Path, require) -> None:  # type: ignore[no-untyped-def]
    from hemato_model.training.evaluation import evaluate_bccd

    root = data_root / BCCD_DIR
    require(root.is_dir(), f"BCCD at {root}")
    got = evaluate_bccd(clf, root, mpp=0.071)
    want = published["bccd"]
    assert got["n"] == want["n"] == 339
    _agrees(got, want, got["n"])
