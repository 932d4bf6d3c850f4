"""A simulated lab whose stain differs from PBC teaches the shipped model: ``train --base`` on the CPU,
then ``validate-model`` shows the gain on the lab's held-out cells without a loss on PBC (slow)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hematovision.cli import main
from hematovision.core.datasets import pbc_root
from hematovision.core.settings import MODELS_DIR, SHIPPED_MODEL_DIR, load_settings

pytestmark = pytest.mark.slow
PBC = pbc_root(load_settings().data_root)
#: The parent of the simulated lab's fine-tune: the 128 px v1. The gain asserted below (+0.03 on the
#: lab's held-out cells after 2 epochs) was set for it; the default v1.2 starts higher on this lab
#: (0.856) and gained +0.025 (0.856 -> 0.881, PBC test 0.9762 -> 0.9762; docs/validation.md,
#: *Per-class energy abstention*), so the workflow is tested on v1 and v1.2's figure is reported.
PARENT = MODELS_DIR / "wbc-effnetlite0-v1"


def test_grown_model_keeps_the_base_weights() -> None:
    import keras

    from hemato_model.training.lab_finetune import build_grown_model

    meta = json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())
    base = keras.models.load_model(SHIPPED_MODEL_DIR / "model.keras", compile=False, safe_mode=True)
    old = meta["classes"]
    model, backbone = build_grown_model(base, meta["backbone"], old, [*old, "blast"], meta["input_px"])
    k0, b0 = base.get_layer("head").get_weights()
    k1, b1 = model.get_layer("head").get_weights()
    assert k1.shape == (k0.shape[0], len(old) + 1)
    np.testing.assert_array_equal(k1[:, : len(old)], k0)
    np.testing.assert_array_equal(b1[: len(old)], b0)
    for w0, w1 in zip(base.get_layer(meta["backbone"]).get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(w0, w1)
    # the old classes' logits are unchanged: their softmax ratios are the base's
    px = meta["input_px"]
    x = np.random.default_rng(0).integers(0, 255, (2, px, px, 3)).astype("float32")
    p0, p1 = np.asarray(base(x)), np.asarray(model(x))
    np.testing.assert_allclose(p1[:, :2] / p1[:, 1:2], p0[:, :2] / p0[:, 1:2], rtol=1e-4)


@pytest.mark.needs(PBC.is_dir(), f"PBC images under {PBC}")
def test_stain_shifted_lab_gains_without_pbc_loss(tmp_path: Path) -> None:
    from hematovision.devtools.stain_lab import build_stain_lab

    lab = tmp_path / "lab"
    built = build_stain_lab(PBC, PARENT / "split.json", lab, per_class=20, fractions=(0.3, 0.25))
    assert built["lab_train"] == 160 and built["lab_held_out"] == 160
    runner = CliRunner()
    t0, c0 = time.time(), time.process_time()
    r = runner.invoke(
        main,
        [
            "train",
            "--data",
            str(lab / "lab_train"),
            "--base",
            str(PARENT),
            "--out",
            str(tmp_path / "new"),
            "--pbc-per-class",
            "25",
            "--epochs",
            "2",
            "--quiet",
        ],
    )
    train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    base_meta = json.loads((PARENT / "model.json").read_text())
    assert info["parent"]["sha256"] == base_meta["sha256"]
    manifest = (tmp_path / "new" / "training_data.csv").read_bytes()
    assert info["training_data_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert (tmp_path / "new" / "MODEL_CARD.md").is_file() and (tmp_path / "new" / "ood.json").is_file()

    pdf = tmp_path / "validation.pdf"
    r = runner.invoke(
        main,
        [
            "validate-model",
            str(tmp_path / "new"),
            "--against",
            str(PARENT),
            "--data",
            str(lab / "lab_held_out"),
            "--pbc-exclude",
            str(lab / "pbc_excluded.txt"),
            "--json",
            "--pdf",
            str(pdf),
        ],
    )
    doc = json.loads(r.stdout)
    assert r.exit_code == (0 if doc["promotable"] else 1)
    cur, new = doc["current_figures"], doc["candidate_figures"]
    print(
        f"train {train_s:.0f} s wall, {train_cpu_s:.0f} s CPU; "
        f"lab held-out accuracy {cur['lab_held_out']['accuracy']} -> {new['lab_held_out']['accuracy']}; "
        f"PBC test {cur['pbc_test']['accuracy']} -> {new['pbc_test']['accuracy']}"
    )
    assert doc["data"]["pbc_test"]["n"] == 656 - 320  # the lab's cells are left out of the PBC test
    assert new["lab_held_out"]["accuracy"] >= cur["lab_held_out"]["accuracy"] + 0.03  # the gain
    assert new["pbc_test"]["accuracy"] >= cur["pbc_test"]["accuracy"] - doc["verdict"]["margin"]  # no loss
    assert pdf.read_bytes().startswith(b"%PDF")
    # The budget: 5 minutes on 2 CPU cores. Wall time depends on what else the machine runs (the
    # shared development machine runs ~15 processes on 2 cores), so the check is on this process's
    # CPU seconds: at most 2 cores x 300 s.
    assert train_cpu_s < 600


def test_distillation_targets_keep_the_parent_on_pbc_and_the_labels_on_lab_cells() -> None:
    from hemato_model.training.lab_finetune import distillation_targets

    parent = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)  # 3 parent classes
    y_pbc = np.array([0, 1])  # the second PBC cell: the parent is wrong (says class 2)
    y_lab = np.array([3, 1])  # class 3 is new (the head grew)
    t = distillation_targets(parent, y_pbc, y_lab, repeat=2, n_classes=4, weight=0.5)
    assert t.shape == (2 + 2 * 2, 4)
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t[0], [0.85, 0.1, 0.05, 0.0], rtol=1e-6)
    np.testing.assert_allclose(t[1], [0.05, 0.55, 0.4, 0.0], rtol=1e-6)  # the label still leads
    np.testing.assert_array_equal(t[2:], np.eye(4)[[3, 1, 3, 1]])  # lab cells: their labels, repeated
    np.testing.assert_array_equal(distillation_targets(parent, y_pbc, y_lab, 1, 4, 0.0)[:2], np.eye(4)[[0, 1]])
    with pytest.raises(ValueError):
        distillation_targets(parent, y_pbc, y_lab, 1, 4, 1.5)


@pytest.mark.needs(PBC.is_dir(), f"PBC images under {PBC}")
def test_fine_tune_of_a_parent_with_cut_offs_refuses_thin_classes_before_training(tmp_path: Path) -> None:
    """The default v1.2 abstains on per-class energy cut-offs; a child needs its own, fitted on >= 20
    training cells per class, so too few cells is a clear error before any training, and no model
    folder is left behind."""
    from hematovision.devtools.stain_lab import build_stain_lab

    lab = tmp_path / "lab"
    build_stain_lab(PBC, SHIPPED_MODEL_DIR / "split.json", lab, per_class=4, fractions=(0.3, 0.25))
    args = ["train", "--data", str(lab / "lab_train"), "--base", str(SHIPPED_MODEL_DIR)]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "new"), "--pbc-per-class", "5", "--quiet"])
    assert r.exit_code != 0 and "per-class energy cut-offs" in r.output and "--pbc-per-class" in r.output, r.output
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
