"""``validate-model``'s verdict: promotable, refused beyond the margin, overridden with a reason; and
the head growth of ``train --base`` (old classes keep their weights)."""

from __future__ import annotations

import numpy as np
import pytest

from hemato_model.training.classifier_training import DataError
from hemato_model.training.lab_finetune import grow_head, split_by_group
from hemato_model.training.model_comparison import (
    compare_models,
    flag_change_summary,
    mcnemar_one_sided,
    model_figures,
)

CLASSES = ["lymphocyte", "neutrophil"]


def _figs(acc: float, recall_l: float, recall_n: float, n: int = 100, blast: float | None = None) -> dict:
    f = {
        "n": n,
        "accuracy": acc,
        "unidentified_rate": 0.05,
        "per_class_recall": {"lymphocyte": recall_l, "neutrophil": recall_n},
        "support": {"lymphocyte": n // 2, "neutrophil": n // 2},
    }
    if blast is not None:
        f["blast_sensitivity"] = blast
    return f


def test_promotable_when_nothing_drops_beyond_the_margin() -> None:
    cur = {"lab": _figs(0.80, 0.80, 0.80), "pbc": _figs(0.96, 0.97, 0.95)}
    new = {"lab": _figs(0.95, 0.96, 0.94), "pbc": _figs(0.945, 0.96, 0.94)}  # PBC -1.5 points: within 2
    v = compare_models(cur, new, CLASSES, margin=0.02)
    assert v["promotable"] and not v["refused"] and v["dropped"] == []
    assert v["changes"]["lab"]["accuracy"]["change"] == pytest.approx(0.15)
    assert v["changes"]["pbc"]["recall:neutrophil"] == {"current": 0.95, "candidate": 0.94, "change": -0.01}


def test_refused_when_a_protected_figure_drops() -> None:
    cur = {"lab": _figs(0.80, 0.80, 0.80), "pbc": _figs(0.96, 0.97, 0.95)}
    new = {"lab": _figs(0.95, 0.96, 0.94), "pbc": _figs(0.95, 0.90, 0.99)}  # lymphocyte recall -7 points
    v = compare_models(cur, new, CLASSES, margin=0.02)
    assert not v["promotable"] and v["refused"] and not v["overridden"]
    assert [(d["data"], d["figure"]) for d in v["dropped"]] == [("pbc", "recall:lymphocyte")]
    assert v["dropped"][0]["drop"] == pytest.approx(0.07)
    # a wider margin accepts it; a drop of exactly the margin is accepted
    assert compare_models(cur, new, CLASSES, margin=0.07)["promotable"]


def test_override_needs_a_reason_and_is_recorded() -> None:
    cur = {"pbc": _figs(0.96, 0.97, 0.95, blast=0.9)}
    new = {"pbc": _figs(0.96, 0.97, 0.95, blast=0.7)}
    assert compare_models(cur, new, CLASSES)["dropped"][0]["figure"] == "blast_sensitivity"
    assert not compare_models(cur, new, CLASSES, override_reason="   ")["promotable"]
    v = compare_models(cur, new, CLASSES, override_reason="blast class re-validated by hand, see SOP-12")
    assert v["promotable"] and v["refused"] and v["overridden"]
    assert v["override_reason"] == "blast class re-validated by hand, see SOP-12"


def test_small_classes_and_new_classes_are_not_protected() -> None:
    cur = {"lab": _figs(0.9, 0.9, 0.9, n=20)}  # 10 cells per class < min_support 20
    new = {"lab": _figs(0.9, 0.5, 0.9, n=20)}
    assert compare_models(cur, new, CLASSES)["promotable"]
    assert not compare_models(cur, new, CLASSES, min_support=5)["promotable"]
    cur["lab"]["per_class_recall"]["blast"] = 0.0
    new["lab"]["per_class_recall"]["blast"] = 0.0
    assert "recall:blast" not in compare_models(cur, new, CLASSES, min_support=5)["changes"]["lab"]


def test_model_figures_blast_sensitivity_and_specificity() -> None:
    classes = ["blast", "lymphocyte"]
    truth = ["blast", "blast", "blast", "blast", "lymphocyte", "lymphocyte"]
    proba = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9], [0.97, 0.03], [0.02, 0.98]])
    f = model_figures(truth, proba, classes, threshold=0.8)
    assert f["blast_sensitivity"] == 0.5  # the 0.6 call is unidentified, the 0.1 one missed
    assert f["blast_specificity"] == 0.5
    assert f["per_class_recall"] == {"blast": 0.75, "lymphocyte": 0.5}
    assert f["unidentified_rate"] == round(1 / 6, 4)
    # a model without a blast class misses every blast
    g = model_figures(truth, proba[:, 1:] * 0 + 1.0, ["lymphocyte"], threshold=0.8)
    assert g["blast_sensitivity"] == 0.0 and g["per_class_recall"]["blast"] == 0.0


def _proba_for(truth: list[str], right: np.ndarray) -> np.ndarray:
    """One-hot answers over CLASSES: the true class where ``right``, the other one elsewhere."""
    idx = np.array([CLASSES.index(t) for t in truth])
    return np.eye(2)[np.where(right, idx, 1 - idx)]


def test_a_drop_says_how_many_cells_were_lost_and_whether_chance_explains_it() -> None:
    truth = ["lymphocyte"] * 82 + ["neutrophil"] * 82
    right = np.ones(len(truth), bool)
    right[[0, 90]] = False  # the current model: one error a class
    few = right.copy()
    few[[1, 2, 3]] = False  # the candidate loses 3 lymphocytes, gains none: 4.9 points, p = 1/8
    many = right.copy()
    many[1:13] = False  # loses 12 lymphocytes ...
    many[0] = True  # ... and gains 1: p = 14/8192
    cur = {"pbc": model_figures(truth, _proba_for(truth, right), CLASSES, 0.5)}
    for cand, lost, gained, p, beyond in ((few, 3, 0, 0.125, False), (many, 12, 1, 0.0017, True)):
        v = compare_models(cur, {"pbc": model_figures(truth, _proba_for(truth, cand), CLASSES, 0.5)}, CLASSES)
        assert v["refused"]  # the margin decides; the paired figures are evidence beside it
        d = next(d for d in v["dropped"] if d["figure"] == "recall:lymphocyte")
        assert (d["n"], d["lost"], d["gained"], d["p_value"], d["beyond_chance"]) == (82, lost, gained, p, beyond)
        assert v["changes"]["pbc"]["recall:neutrophil"]["cells"] == {"n": 82, "lost": 0, "gained": 0, "p_value": 1.0}
    assert mcnemar_one_sided(0, 5) == 1.0 and mcnemar_one_sided(5, 0) == pytest.approx(1 / 32)
    # figures without per-cell records (older validation files) compare as before, without the counts
    old = {"pbc": _figs(0.96, 0.97, 0.95)}
    assert "lost" not in compare_models(old, {"pbc": _figs(0.9, 0.9, 0.9)}, CLASSES)["dropped"][0]


def test_blast_sensitivity_follows_the_models_own_abstention_rule() -> None:
    classes = ["blast", "lymphocyte"]
    truth = ["blast", "blast", "lymphocyte"]
    proba = np.array([[0.95, 0.05], [0.9, 0.1], [0.02, 0.98]])
    assert model_figures(truth, proba, classes, threshold=0.8)["blast_sensitivity"] == 1.0
    # an energy cut-off leaves the second blast unidentified: it is not a blast call
    kept = np.array([True, False, True])
    assert model_figures(truth, proba, classes, threshold=0.8, kept=kept)["blast_sensitivity"] == 0.5


def test_flag_change_summary() -> None:
    s = flag_change_summary(
        [
            {"slide": "a", "signed": ["BLASTS"], "current": [], "candidate": ["BLASTS"]},
            {"slide": "b", "signed": [], "current": ["NEUTROPHILIA"], "candidate": []},
            {"slide": "c", "signed": [], "current": [], "candidate": []},
        ]
    )
    assert s["slides"] == 3 and s["slides_with_changed_flags"] == 2
    assert s["flags_added"] == {"BLASTS": 1} and s["flags_removed"] == {"NEUTROPHILIA": 1}
    assert s["slides_matching_signed_off_flags"] == {"current": 1, "candidate": 3}


def test_grow_head_keeps_old_class_weights() -> None:
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    old = ["basophil", "lymphocyte", "neutrophil"]
    new = [*old, "blast", "smudge"]
    k, b = grow_head(kernel, bias, old, new)
    assert k.shape == (16, 5) and b.shape == (5,)
    np.testing.assert_array_equal(k[:, :3], kernel)  # identical, not close
    np.testing.assert_array_equal(b[:3], bias)
    np.testing.assert_allclose(k[:, 3], kernel.mean(axis=1), rtol=1e-6)
    # a reordered class list keeps each class's own column
    k2, _ = grow_head(kernel, bias, old, ["neutrophil", "blast", "basophil", "lymphocyte"])
    np.testing.assert_array_equal(k2[:, 0], kernel[:, 2])
    with pytest.raises(DataError, match="missing"):
        grow_head(kernel, bias, old, ["basophil", "blast"])


def test_lab_split_keeps_a_slide_on_one_side() -> None:
    groups = [f"s{i // 5}" for i in range(50)]  # 10 slides of 5 cells
    labels = ["a", "b"] * 25
    parts = split_by_group(groups, labels, seed=1, val_fraction=0.2)
    assert sorted(parts["train"] + parts["val"]) == list(range(50))
    assert {groups[i] for i in parts["train"]}.isdisjoint({groups[i] for i in parts["val"]})
    assert len(parts["val"]) == 10


def test_validation_report_pdf(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.exports.validation_pdf import validation_report_pdf

    cur = {"lab": _figs(0.80, 0.80, 0.80), "pbc": _figs(0.96, 0.97, 0.95, blast=0.9)}
    new = {"lab": _figs(0.95, 0.96, 0.94), "pbc": _figs(0.95, 0.90, 0.99, blast=0.8)}
    for figs in (*cur.values(), *new.values()):
        figs["accuracy_unidentified_as_error"] = figs["accuracy"]
    verdict = compare_models(cur, new, CLASSES, override_reason="accepted by the director <b>for</b> a trial")
    model = {"name": "wbc-x", "version": "1", "sha256": "ab" * 32, "parent": {"name": "p", "version": "0"}}
    doc = {
        "candidate": {**model, "training_data_sha256": "cd" * 32},
        "current": model,
        "current_figures": cur,
        "candidate_figures": new,
        "verdict": verdict,
        "flag_changes": flag_change_summary(
            [{"slide": "a", "signed": ["BLASTS"], "current": [], "candidate": ["BLASTS"]}]
        ),
    }
    out = tmp_path / "v.pdf"
    validation_report_pdf(doc, out, invariant=1)
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 2000


def test_validation_report_pdf_shows_the_cells_behind_a_drop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import io

    from pypdf import PdfReader

    from hematovision.exports.validation_pdf import validation_report_pdf

    truth = ["lymphocyte"] * 82 + ["neutrophil"] * 82
    right = np.ones(len(truth), bool)
    cand = right.copy()
    cand[[1, 2, 3]] = False
    cur = {"pbc_test": model_figures(truth, _proba_for(truth, right), CLASSES, 0.5)}
    new = {"pbc_test": model_figures(truth, _proba_for(truth, cand), CLASSES, 0.5)}
    model = {"name": "wbc-x", "version": "1", "sha256": "ab" * 32}
    doc = {
        "candidate": model,
        "current": model,
        "current_figures": cur,
        "candidate_figures": new,
        "verdict": compare_models(cur, new, CLASSES),
    }
    buf = io.BytesIO()
    validation_report_pdf(doc, buf, invariant=1)
    text = " ".join(" ".join(pg.extract_text() for pg in PdfReader(io.BytesIO(buf.getvalue())).pages).split())
    assert "NOT PROMOTABLE" in text and "recall:lymphocyte" in text
    assert "3 / 0 of 82" in text and "0.125" in text and "McNemar" in text


def test_cli_bad_input_is_a_message_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from hematovision.cli import main
    from hematovision.core.settings import SHIPPED_MODEL_DIR

    data = tmp_path / "data"
    (data / "blast").mkdir(parents=True)
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--data", str(data), "--base", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--base" in r.output and "not a model directory" in r.output
    assert not (tmp_path / "o").exists()
    args = ["validate-model", str(SHIPPED_MODEL_DIR), "--against", str(SHIPPED_MODEL_DIR)]
    r = runner.invoke(main, [*args, "--data", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "--data" in r.output
    r = runner.invoke(main, [*args, "--data", str(data), "--override-reason", " "])
    assert r.exit_code == 2 and "--override-reason" in r.output
