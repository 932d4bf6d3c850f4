"""Per-class energy abstention (issue 14): a crop that looks like no class's own training crops is
``unidentified`` however confident the softmax, so a model without a blast class keeps its blast
safety net (docs/validation.md, *Per-class energy abstention*)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemato_model.classifier import UNIDENTIFIED, Classifier, ModelError
from hemato_model.training.ood_stats import MIN_CLASS_CROPS, class_energy_thresholds
from hematovision.core.settings import MODELS_DIR, load_settings

V12 = MODELS_DIR / "wbc-effnetlite0-v1.2"
DATA = Path(load_settings().data_root) / "data"
ALL_ROOT = DATA / "aria_all"
PBC_DIR = DATA / "pbc_subset" / "PBC_dataset_normal_DIB"


def _one_hot(top: list[int], n: int, p: float = 0.99) -> np.ndarray:
    proba = np.full((len(top), n), (1.0 - p) / (n - 1))
    proba[np.arange(len(top)), top] = p
    return proba


def test_class_cut_offs_are_quantiles_of_each_class_correct_crops_only() -> None:
    classes = ["a", "b"]
    n = MIN_CLASS_CROPS
    energy = np.concatenate([np.arange(n, dtype=float), 100 + np.arange(n, dtype=float), [1000.0]])
    truth = ["a"] * n + ["b"] * n + ["a"]
    top = [0] * n + [1] * n + [1]  # the last crop is an "a" called "b": it must not count for b
    cut = class_energy_thresholds(_one_hot(top, 2), energy, truth, classes, 1.0)
    assert cut == {"a": float(n - 1), "b": 100.0 + n - 1}
    half = class_energy_thresholds(_one_hot(top, 2), energy, truth, classes, 0.5)
    assert half["a"] == pytest.approx(np.quantile(np.arange(n), 0.5))


def test_class_cut_offs_refuse_thin_classes_and_bad_quantiles() -> None:
    n = MIN_CLASS_CROPS
    proba, energy, truth = _one_hot([0] * n + [1] * (n - 1), 2), np.zeros(2 * n - 1), ["a"] * n + ["b"] * (n - 1)
    with pytest.raises(ValueError, match="'b': 19"):
        class_energy_thresholds(proba, energy, truth, ["a", "b"], 0.9)
    with pytest.raises(ValueError, match="quantile"):
        class_energy_thresholds(proba, energy, truth, ["a", "b"], 1.5)


def test_confident_crop_above_its_class_cut_off_is_unidentified() -> None:
    """v1.2's ood.json holds the cut-offs: a 0.99-confident "platelet" with an energy above the
    platelet cut-off is unidentified; the same call with a platelet-like energy is kept."""
    clf = Classifier.load(V12)
    cut = clf.class_energy_max
    assert cut is not None and json.loads((V12 / "ood.json").read_text())["class_quantile"] == 0.975
    k = clf.classes.index("platelet")
    proba = _one_hot([k, k], len(clf.classes))
    energy = np.array([cut[k] + 0.5, cut[k] - 0.5])
    assert [lab for lab, _ in clf.labels_from_proba(proba, energy)] == [UNIDENTIFIED, "platelet"]
    with pytest.raises(ValueError, match="energy"):
        clf.labels_from_proba(proba)


def test_model_without_cut_offs_keeps_the_threshold_rule(tmp_path: Path) -> None:
    v1 = Classifier.load(MODELS_DIR / "wbc-effnetlite0-v1")
    assert v1.class_energy_max is None
    proba = _one_hot([0, 1], len(v1.classes), p=0.95)
    assert [lab for lab, _ in v1.labels_from_proba(proba)] == v1.classes[:2]
    bad = tmp_path / "m"
    shutil.copytree(V12, bad)
    ood = json.loads((bad / "ood.json").read_text())
    del ood["class_energy_thresholds"]["ig"]
    (bad / "ood.json").write_text(json.dumps(ood))
    with pytest.raises(ModelError, match="ig"):  # at load, not at the first slide
        Classifier.load(bad)


@pytest.mark.needs((ALL_ROOT / "images").is_dir() and PBC_DIR.is_dir(), f"the shared ALL and PBC data under {DATA}")
@pytest.mark.slow
def test_v12_abstains_on_held_out_blasts_but_not_on_lymphocytes_and_igs() -> None:
    """Held-out B-ALL blasts (the blast model's test fields, never used to choose the quantile) go
    unidentified; PBC test lymphocytes and IGs do not drain into unidentified (v1: 4 % and 33 %;
    v1.2 with its cut-offs: 3.7 % and 9.8 %)."""
    from hemato_model.training.blast_data import rebuild_field_crops
    from hemato_model.training.classifier_training import load_crops
    from hematovision.core.datasets import PBC_MPP

    clf = Classifier.load(V12)
    doc = json.loads((MODELS_DIR / "wbc-blast-effnetlite0-v2" / "blast_split.json").read_text())
    fields = rebuild_field_crops({**doc, "input_px": clf.input_px}, ALL_ROOT, "test", ("Early", "Pre", "Pro"))
    labels = [lab for lab, _ in clf.classify(np.concatenate([c for _, c in fields]))]
    assert len(labels) == 421
    assert labels.count(UNIDENTIFIED) / len(labels) >= 0.90
    assert labels.count("platelet") / len(labels) <= 0.02
    split = json.loads((V12 / "split.json").read_text())
    for cls in ("lymphocyte", "ig"):
        files = [PBC_DIR / f for f in split["test"] if f.startswith(cls + "/")]
        got = [lab for lab, _ in clf.classify(load_crops(files, PBC_MPP, clf.crop_um, clf.input_px))]
        assert len(files) == 82 and got.count(UNIDENTIFIED) / len(got) <= 0.12, (cls, got.count(UNIDENTIFIED))
