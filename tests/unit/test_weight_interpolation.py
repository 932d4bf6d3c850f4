"""Weight-space interpolation between a parent and its fine-tuned model (lab fine-tuning, issue 18)."""

from __future__ import annotations

import numpy as np
import pytest

from hemato_model.training.weight_interpolation import choose_alpha, interpolate

CLASSES = ["a", "b"]


def test_interpolate_mixes_float_arrays_and_keeps_counters() -> None:
    w0 = [np.zeros((2, 2), np.float32), np.array([3], np.int64)]
    w1 = [np.ones((2, 2), np.float32), np.array([7], np.int64)]
    out = interpolate(w0, w1, 0.25)
    np.testing.assert_allclose(out[0], 0.25)
    assert out[0].dtype == np.float32 and out[1][0] == 7
    with pytest.raises(ValueError):
        interpolate(w0, w1[:1], 0.5)
    with pytest.raises(ValueError):
        interpolate([np.zeros(3, np.float32)], [np.zeros(4, np.float32)], 0.5)


def _onehot(calls: list[str]) -> np.ndarray:
    return np.eye(2)[[CLASSES.index(c) for c in calls]] * 0.98 + 0.01


def test_choose_alpha_takes_the_best_lab_gain_that_keeps_the_public_figures() -> None:
    # 25 public cells of each class; the fine-tuned end (α = 1) forgets class b on them, α = 0.6 loses
    # one b (4 points: beyond the 2-point margin), α ≤ 0.4 loses none. The lab gains with α.
    pub_truth = ["a"] * 25 + ["b"] * 25
    lab_truth = ["a"] * 5 + ["b"] * 5
    lost_b = {1.0: 20, 0.8: 10, 0.6: 1, 0.4: 0, 0.2: 0, 0.0: 0}
    lab_right = {1.0: 10, 0.8: 10, 0.6: 9, 0.4: 8, 0.2: 7, 0.0: 5}
    seen: list[float] = []

    def predict(alpha: float) -> dict[str, np.ndarray]:
        seen.append(alpha)
        pub = ["a"] * 25 + ["a"] * lost_b[alpha] + ["b"] * (25 - lost_b[alpha])
        lab = [t if i < lab_right[alpha] else ("b" if t == "a" else "a") for i, t in enumerate(lab_truth)]
        return {"pbc_val": _onehot(pub), "lab_val": _onehot(lab)}

    out = choose_alpha(
        predict,
        {"pbc_val": pub_truth, "lab_val": lab_truth},
        CLASSES,
        ["pbc_val"],
        "lab_val",
        current_classes=CLASSES,
        threshold=0.5,
        alphas=(1.0, 0.8, 0.6, 0.4, 0.2, 0.0),
    )
    assert out["alpha"] == 0.4
    assert sorted(seen) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    by = {t["alpha"]: t for t in out["tried"]}
    assert [d["figure"] for d in by[0.6]["dropped"]] == ["recall:b"] and not by[0.4]["dropped"]
    assert by[1.0]["accuracy"]["lab_val"] == 1.0 and by[0.0]["accuracy"]["lab_val"] == 0.5


def test_choose_alpha_falls_back_to_the_parent_when_every_mix_forgets() -> None:
    def predict(alpha: float) -> dict[str, np.ndarray]:
        calls = ["a"] * 50 if alpha > 0 else ["a"] * 25 + ["b"] * 25
        return {"pbc_val": _onehot(calls)}

    out = choose_alpha(
        predict,
        {"pbc_val": ["a"] * 25 + ["b"] * 25},
        CLASSES,
        ["pbc_val"],
        "lab_val",
        current_classes=CLASSES,
        threshold=0.5,
        alphas=(1.0, 0.5),
    )
    assert out["alpha"] == 0.0 and [t["alpha"] for t in out["tried"]] == [1.0, 0.5, 0.0]


def test_choose_alpha_says_when_nothing_keeps_the_parents_figures() -> None:
    from hemato_model.training.model_comparison import model_figures

    truth = ["a"] * 25 + ["b"] * 25
    parent = model_figures(truth, _onehot(truth), CLASSES, 0.5)  # the parent: all right

    def predict(alpha: float) -> dict[str, np.ndarray]:  # every mix (θ(0) has a refitted head) forgets b
        return {"pbc_val": _onehot(["a"] * 30 + ["b"] * 20)}

    out = choose_alpha(
        predict,
        {"pbc_val": truth},
        CLASSES,
        ["pbc_val"],
        "lab_val",
        current_classes=CLASSES,
        threshold=0.5,
        baseline={"pbc_val": parent},
        alphas=(1.0, 0.0),
    )
    assert out["alpha"] == 0.0 and out["within_margin"] is False
    assert all(t["dropped"] for t in out["tried"])
