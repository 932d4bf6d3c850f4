"""``hematovision train`` / ``evaluate`` end to end on a tiny synthetic image folder (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hemato_model.classifier import Classifier
from hematovision.cli import main

COLOURS = {"alpha": (200, 60, 60), "beta": (60, 60, 200), "gamma": (60, 170, 60)}


def _make_folder(root: Path, per_class: int = 7) -> Path:
    rng = np.random.default_rng(0)
    for cls, colour in COLOURS.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((80, 80, 3), 235, dtype=np.uint8)
            yy, xx = np.mgrid[0:80, 0:80]
            r = 18 + rng.integers(-3, 4)
            img[(xx - 40) ** 2 + (yy - 40) ** 2 <= r * r] = colour
            img = np.clip(img.astype(int) + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("train")
    data = _make_folder(base / "data")
    out = base / "model"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--head-epochs",
            "5",
            "--input-px",
            "32",
            "--crop-um",
            "6",
            "--mpp",
            "0.1",
            "--seed",
            "3",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    return data, out, summary


@pytest.mark.slow
def test_train_writes_a_loadable_model_dir(trained: tuple[Path, Path, dict]) -> None:
    data, out, summary = trained
    assert summary["classes"] == ["alpha", "beta", "gamma"]
    for name in ("model.keras", "model.json", "split.json"):
        assert (out / name).is_file()
    meta = json.loads((out / "model.json").read_text())
    assert meta["input_px"] == 32 and meta["crop_um"] == 6.0
    assert 0.5 <= meta["threshold"] <= 1.0
    assert meta["training"]["fine_tune"]["epochs"] == 1
    split = json.loads((out / "split.json").read_text())
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 21 and not (parts[0] & parts[1] or parts[0] & parts[2])
    assert all(any(p.startswith(c + "/") for p in parts[2]) for c in COLOURS)  # stratified
    clf = Classifier.load(out)
    proba = clf.predict_proba(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert proba.shape == (2, 3)


@pytest.mark.slow
def test_train_is_reproducible_split(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    from hemato_model.training.classifier_training import list_image_folder, split_files

    data, out, _ = trained
    _, labels = list_image_folder(data)
    again = split_files(labels, 3, 0.15, 0.15)
    assert again == split_files(labels, 3, 0.15, 0.15)
    assert len(again["test"]) == len(json.loads((out / "split.json").read_text())["test"])


@pytest.mark.slow
def test_evaluate_prints_one_json_and_skips_unknown_folders(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, out, _ = trained
    junk = data / "not_a_class"
    junk.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(junk / "x.png")
    png = tmp_path / "cm.png"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data",
            str(data),
            "--model",
            str(out),
            "--mpp",
            "0.1",
            "--json",
            "--quiet",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    for key in (
        "accuracy",
        "macro_f1",
        "n",
        "per_class",
        "confusion_matrix",
        "confusion_matrix_order",
        "unidentified_rate",
        "skipped_folders",
        "threshold",
    ):
        assert key in doc
    assert doc["skipped_folders"] == ["not_a_class"]
    assert doc["n"] == 21
    assert set(doc["per_class"]) == set(COLOURS)
    assert set(doc["per_class"]["alpha"]) == {"precision", "recall", "f1", "support"}
    assert np.asarray(doc["confusion_matrix"]).sum() == 21
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"

    test_only = CliRunner().invoke(
        main,
        ["evaluate", "--data", str(data), "--model", str(out), "--mpp", "0.1", "--split", "test", "--json", "--quiet"],
    )
    assert test_only.exit_code == 0, test_only.output
    split = json.loads((out / "split.json").read_text())
    assert json.loads(test_only.output)["n"] == len(split["test"])


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_missing_data_folder_is_a_one_line_error(command: str, tmp_path: Path) -> None:
    args = [command, "--data", str(tmp_path / "nope")]
    if command == "train":
        args += ["--out", str(tmp_path / "m")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "data folder not found" in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.slow
def test_evaluate_with_a_non_model_dir_fails_cleanly(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, _, _ = trained
    result = CliRunner().invoke(main, ["evaluate", "--data", str(data), "--model", str(tmp_path)])
    assert result.exit_code != 0
    assert "not a model directory" in result.output
    assert "Traceback" not in result.output


def test_metrics_are_computed_correctly() -> None:
    from hemato_model.training.evaluation import classification_metrics

    m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["per_class"]["b"]["precision"] == 0.6667
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]


def test_scored_reports_the_unidentified_rate_per_true_class() -> None:
    from hemato_model.training.evaluation import scored

    # Two lymphocytes (one under the threshold), two neutrophils (both kept).
    proba = np.array([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9], [0.02, 0.98]])
    out = scored(
        ["lymphocyte", "lymphocyte", "neutrophil", "neutrophil"],
        proba,
        ["lymphocyte", "neutrophil"],
        0.8,
        ["lymphocyte", "neutrophil"],
    )
    assert out["unidentified_rate"] == 0.25
    assert out["unidentified_rate_per_class"] == {"lymphocyte": 0.5, "neutrophil": 0.0}


@pytest.mark.slow
def test_domain_augmenter_widens_the_colour_range_and_keeps_the_crop() -> None:
    import tensorflow as tf

    from hemato_model.preprocessing import make_augmenter
    from hemato_model.training.stain_augmentation import make_domain_augmenter

    rng = np.random.default_rng(0)
    x = np.full((32, 48, 48, 3), (230, 200, 215), dtype=np.float32)
    x[:, 14:34, 14:34] = (90, 40, 140)  # a purple "nucleus" on a pink background
    x += rng.normal(0, 3, x.shape).astype(np.float32)
    dom = np.asarray(make_domain_augmenter(5)(tf.constant(x)))
    std = np.asarray(make_augmenter(5)(tf.constant(x)))
    assert dom.shape == x.shape and np.isfinite(dom).all()
    assert dom.min() >= 0.0 and dom.max() <= 255.0
    # Per-crop mean colours spread much wider across the batch than with the standard jitter.
    assert dom.mean(axis=(1, 2)).std(axis=0).mean() > 1.5 * std.mean(axis=(1, 2)).std(axis=0).mean()
    # Same seed, same data order: the same crops.
    again = np.asarray(make_domain_augmenter(5)(tf.constant(x)))
    assert np.allclose(dom, again)


@pytest.mark.slow
def test_train_with_the_domain_profile_records_it(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data", per_class=5)
    out = tmp_path / "model"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--head-epochs", "3"]
    args += ["--input-px", "32", "--crop-um", "6", "--mpp", "0.1", "--aug-profile", "domain", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["config"]["aug_profile"] == "domain"
    assert "JPEG" in meta["preprocessing"]["augmentation"]
    bad = CliRunner().invoke(main, [*args[:-2], "--aug-profile", "stainy", "--quiet"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


@pytest.mark.slow
def test_train_with_scan_storage_records_it_and_refuses_a_finer_scan(tmp_path: Path) -> None:
    """``--scan-storage`` runs through the real tf.data pipeline (a numpy step inside the graph) and
    is recorded; a scan finer than the simulated range is refused with a message, not a traceback."""
    data = _make_folder(tmp_path / "data", per_class=5)
    out = tmp_path / "model"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--head-epochs", "3"]
    args += ["--input-px", "32", "--crop-um", "6", "--mpp", "0.1", "--quiet"]
    result = CliRunner().invoke(main, [*args, "--scan-storage", "0.5"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["config"]["scan_storage_mpp"] == 0.5
    assert "0.2-0.5 um/px stored as JPEG 60-95" in meta["preprocessing"]["augmentation"]
    assert meta["training"]["fine_tune"]["epochs"] == 1
    bad = CliRunner().invoke(main, [*args, "--scan-storage", "0.1"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output and "0.1" in bad.output
