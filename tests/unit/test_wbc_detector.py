"""The learned white-cell detector (issue 14 item 2): YOLO ``data.yaml`` reading in
``evaluate-detection``, target/decoding round trip, the shipped model on CBC Testing images, and
the leave-one-source-out script (``benchmarks/wbc_detector_loso.py``) printing JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hemato_model.detection.learned import decode
from hemato_model.training.annotations import AnnotationError, read_yolo_data_yaml, read_yolo_split
from hematovision.cli import main
from hematovision.core.datasets import BCCD_DIR, CBC_DIR, TXL_DIR
from hematovision.core.settings import WBC_DETECTOR_DIR, load_settings

DATA_ROOT = Path(load_settings().data_root)
BCCD_IMAGES = DATA_ROOT / BCCD_DIR / "BCCD" / "JPEGImages"
CBC_TEST = DATA_ROOT / CBC_DIR / "Testing" / "Annotations"
REPO = Path(__file__).resolve().parents[2]


def _yolo_set(root: Path, splits: dict[str, int], yaml_text: str | None = None) -> Path:
    """A tiny YOLO set: ``n`` 64×48 images per split, each with one WBC and one RBC box."""
    for split, n in splits.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / "classes.txt").write_text("WBC\nRBC\nPC\n")
        for i in range(n):
            Image.fromarray(np.full((48, 64, 3), 230, np.uint8)).save(root / "images" / split / f"{split}{i}.jpg")
            (root / "labels" / split / f"{split}{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n1 0.2 0.2 0.1 0.1\n")
    text = yaml_text or "".join(f"{s}: ./images/{s}/\n" for s in splits) + "nc: 3\nnames: ['WBC', 'RBC', 'Platelets']\n"
    (root / "data.yaml").write_text(text)
    return root / "data.yaml"


def test_data_yaml_split_entries_resolve_beside_the_file(tmp_path):
    data_yaml = _yolo_set(tmp_path, {"train": 1, "val": 1, "test": 2})
    splits = read_yolo_data_yaml(data_yaml)
    assert splits == {k: (tmp_path / "images" / k).resolve() for k in ("test", "val", "train")}
    name, items = read_yolo_split(data_yaml)
    assert name == "test" and len(items) == 2
    assert all([b.kind for b in it.boxes] == ["wbc", "rbc"] for it in items)
    name, items = read_yolo_split(data_yaml, "train")
    assert name == "train" and len(items) == 1


def test_data_yaml_prefers_val_without_test_and_honours_path_key(tmp_path):
    sub = tmp_path / "set"
    sub.mkdir()
    data_yaml = _yolo_set(sub, {"train": 1, "val": 3}, f"path: {sub}\ntrain: images/train\nval: images/val\n")
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(data_yaml.read_text())
    name, items = read_yolo_split(moved)
    assert name == "val" and len(items) == 3


def test_data_yaml_errors_are_clear(tmp_path):
    bad = tmp_path / "data.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(AnnotationError, match="not a YOLO data.yaml"):
        read_yolo_data_yaml(bad)
    bad.write_text("nc: 3\n")
    with pytest.raises(AnnotationError, match="names no train/val/test"):
        read_yolo_data_yaml(bad)
    bad.write_text("test: ./images/test/\n")
    with pytest.raises(AnnotationError, match="image folder not found"):
        read_yolo_split(bad)
    with pytest.raises(AnnotationError, match="no 'val' entry"):
        read_yolo_split(bad, "val")


def test_evaluate_detection_reads_data_yaml_without_split(tmp_path):
    data_yaml = _yolo_set(tmp_path, {"train": 1, "test": 2})
    runner = CliRunner()
    for data in (tmp_path, data_yaml):  # the folder holding data.yaml, or the file itself
        result = runner.invoke(
            main, ["evaluate-detection", "--data", str(data), "--format", "yolo", "--mpp", "0.1", "--json"]
        )
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert payload["split"] == "test" and payload["n_images"] == 2
        assert payload["per_kind"]["wbc"]["n_true"] == 2 and payload["per_kind"]["rbc"]["n_true"] == 2
        assert payload["wbc_detector"] == "classical"
    result = runner.invoke(main, ["evaluate-detection", "--data", str(data_yaml), "--format", "yolo", "--split", "val"])
    assert result.exit_code == 1 and "no 'val' entry" in result.stderr and "Traceback" not in result.output


def test_heat_map_target_decodes_back_to_its_boxes():
    from hemato_model.training import wbc_detector as wd

    boxes = np.array([[20.0, 30.0, 60.0, 66.0], [70.0, 60.0, 102.0, 96.0]])
    t = wd.make_target(boxes, (120, 100))
    assert t[..., 5].sum() == 2 and t[..., 6].sum() == np.ceil(120 / 8) * np.ceil(100 / 8)
    pred = t[..., :5].copy()
    pred[..., 0] = np.where(t[..., 5] > 0, 4.0, -4.0)
    found = sorted(decode(pred, 0.5, wd.STRIDE, wd.WORK_MPP))
    assert len(found) == 2
    for (box, score), want in zip(found, boxes, strict=True):
        assert np.allclose(box, want, atol=1e-3) and score > 0.9


def test_setting_rejects_an_unknown_detector():
    with pytest.raises(ValueError, match="wbc_detector must be one of"):
        load_settings(wbc_detector="yolo")
    assert load_settings(wbc_detector="Learned").wbc_detector == "learned"


@pytest.mark.slow
@pytest.mark.needs(CBC_TEST.is_dir() and BCCD_IMAGES.is_dir(), f"CBC Testing and BCCD images under {DATA_ROOT}")
def test_learned_detector_finds_the_white_cells_of_cbc_testing_images(require):
    from hemato_model.detection import estimate_mpp
    from hemato_model.detection.border import margin_px, split_border
    from hemato_model.detection.learned import LearnedWbcDetector
    from hemato_model.training.annotations import read_voc_dir
    from hemato_model.training.detection_eval import DetectionScores

    require((WBC_DETECTOR_DIR / "model.keras").is_file(), f"the shipped detector in {WBC_DETECTOR_DIR}")
    detector = LearnedWbcDetector.load(WBC_DETECTOR_DIR)
    items = read_voc_dir(CBC_TEST, BCCD_IMAGES)[:16]
    scores = DetectionScores(kinds=("wbc",))
    for item in items:
        with Image.open(item.image_path) as im:
            rgb = np.asarray(im.convert("RGB"))
        mpp = estimate_mpp(rgb)
        cells = detector.detect(rgb, mpp)
        assert all(c.kind == "wbc" and 0 <= c.score <= 1 for c in cells)
        # border cells are not reported, and annotated ones are don't-care
        whole, cut = split_border([b.bbox for b in item.of_kind("wbc")], rgb.shape[:2], margin_px(0.5, mpp))
        scores.add_image([("wbc", c.bbox) for c in cells], [("wbc", b) for b in whole], [("wbc", b) for b in cut])
    t = scores.tallies["wbc"]
    assert detector.edge_margin_um == 0.5
    assert t.n_true >= 5 and t.n_ignored_true >= 5 and t.true_positives == t.n_true and t.n_pred <= t.n_true + 1


@pytest.mark.slow
@pytest.mark.needs((DATA_ROOT / TXL_DIR).is_dir() and CBC_TEST.is_dir(), f"CBC and TXL-PBC under {DATA_ROOT}")
def test_loso_script_prints_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "wbc_detector_loso.py"), "--data-root", str(DATA_ROOT / "data")]
    cmd += ["--work-dir", str(tmp_path), "--limit", "2", "--n-aug", "0", "--epochs", "1", "--no-classical"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert set(result["leave_one_source_out"]) == {"CBC", "Raabin", "BCD"}
    for held, fold in result["leave_one_source_out"].items():
        assert held not in fold["trained_on"]
        assert fold["learned_test"]["n_images"] == 2 and fold["learned_test"]["n_true"] >= 1
    assert set(result["all_sources"]) >= {"CBC", "Raabin", "BCD", "threshold"}


@pytest.mark.slow
@pytest.mark.needs(BCCD_IMAGES.is_dir(), f"BCCD images under {DATA_ROOT}")
def test_detect_cli_with_the_learned_detector(require):
    require((WBC_DETECTOR_DIR / "model.keras").is_file(), f"the shipped detector in {WBC_DETECTOR_DIR}")
    sample = BCCD_IMAGES / "BloodImage_00339.jpg"
    result = CliRunner().invoke(main, ["detect", str(sample), "--json", "--kinds", "wbc", "--detector", "learned"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["wbc_detector"].startswith("learned")
    assert [c["kind"] for c in payload["cells"]] == ["wbc"]


def test_focal_loss_still_pulls_up_a_centre_whose_logit_is_far_below():
    """The heat-map loss is computed from the logit: a clipped probability gave a centre whose
    logit fell below -9.2 no gradient at all, and the two-source heads never recovered."""
    import tensorflow as tf

    from hemato_model.training import wbc_detector as wd

    y = np.zeros((1, 4, 4, 7), np.float32)
    y[..., 6] = 1.0  # all valid
    y[0, 1, 1, 0] = y[0, 1, 1, 5] = 1.0  # one centre
    pred = tf.Variable(np.full((1, 4, 4, 5), -15.0, np.float32))
    with tf.GradientTape() as tape:
        loss = wd.detection_loss(tf.constant(y), pred)
    grad = tape.gradient(loss, pred).numpy()
    assert np.isfinite(float(loss)) and float(loss) > 14.0  # -log sigmoid(-15), not a clipped 9.2
    assert grad[0, 1, 1, 0] < -0.9  # raising the centre's logit lowers the loss
    assert abs(grad[0, 0, 0, 0]) < 1e-6  # a far-negative non-centre is already right


def test_fresh_head_starts_every_cell_at_the_prior():
    """CenterNet's bias prior (p = 0.1) only holds if the kernel's share starts small; the frozen
    features are not normalised (std 5-7 on real canvases)."""
    from scipy.special import expit

    from hemato_model.training import wbc_detector as wd

    rng = np.random.default_rng(0)
    f8 = rng.normal(0.0, 7.0, (2, 16, 16, 40)).astype(np.float32)
    f16 = rng.normal(0.0, 5.0, (2, 8, 8, 112)).astype(np.float32)
    p = expit(np.asarray(wd.build_head()([f8, f16]))[..., 0])
    assert p.min() > 0.08 and p.max() < 0.12
