"""``hematovision detect`` / ``evaluate-detection`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hematovision.cli import main
from hematovision.core.datasets import BCCD_DIR, CBC_DIR
from hematovision.core.settings import load_settings

DATA_ROOT = Path(load_settings().data_root)
BCCD_IMAGES = DATA_ROOT / BCCD_DIR / "BCCD" / "JPEGImages"
CBC_TEST = DATA_ROOT / CBC_DIR / "Testing"
SAMPLE = BCCD_IMAGES / "BloodImage_00339.jpg"

needs_bccd = pytest.mark.needs(SAMPLE.is_file(), f"BCCD images under {DATA_ROOT}")


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@needs_bccd
def test_detect_json_shape(runner):
    result = runner.invoke(main, ["detect", str(SAMPLE), "--json", "--mpp", "0.071"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"cells", "mpp", "mpp_source", "wbc_detector", "platelet_detector"}
    assert payload["platelet_detector"] == "learned"  # the default since 2026-12-01
    assert payload["wbc_detector"] == "classical"
    assert payload["mpp"] == 0.071 and payload["mpp_source"] == "given"
    assert payload["cells"]
    for cell in payload["cells"]:
        assert set(cell) == {"kind", "bbox", "score"}
        assert cell["kind"] in {"wbc", "rbc", "platelet"}
        x0, y0, x1, y1 = cell["bbox"]
        assert all(isinstance(v, int) for v in cell["bbox"])
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
        assert 0.0 <= cell["score"] <= 1.0
    assert sum(c["kind"] == "wbc" for c in payload["cells"]) == 1


@needs_bccd
def test_detect_estimates_scale_and_prints_summary(runner):
    result = runner.invoke(main, ["detect", str(SAMPLE), "--json", "--kinds", "wbc"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["mpp_source"] == "estimated" and 0.04 < payload["mpp"] < 0.12
    assert {c["kind"] for c in payload["cells"]} == {"wbc"}
    text = runner.invoke(main, ["detect", str(SAMPLE)])
    assert text.exit_code == 0 and "wbc:" in text.output and "estimated" in text.output


def test_detect_missing_file(runner, tmp_path):
    result = runner.invoke(main, ["detect", str(tmp_path / "nope.jpg"), "--json"])
    assert result.exit_code != 0
    assert "image not found" in result.stderr and "Traceback" not in result.output


def test_detect_not_an_image(runner, tmp_path):
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a picture")
    result = runner.invoke(main, ["detect", str(bogus)])
    assert result.exit_code != 0 and "not a readable image" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_detect_blank_image_without_scale(runner, tmp_path):
    from PIL import Image

    path = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (230, 230, 230)).save(path)
    result = runner.invoke(main, ["detect", str(path), "--json"])
    assert result.exit_code != 0 and "--mpp" in result.stderr


def test_detect_bad_kind(runner, tmp_path):
    result = runner.invoke(main, ["detect", str(tmp_path / "x.jpg"), "--kinds", "blast"])
    assert result.exit_code != 0 and "unknown kind" in result.stderr


def test_evaluate_missing_dir(runner, tmp_path):
    result = runner.invoke(main, ["evaluate-detection", "--data", str(tmp_path / "none"), "--format", "voc", "--json"])
    assert result.exit_code != 0 and "not found" in result.stderr


@needs_bccd
def test_evaluate_cbc_without_images_dir_says_so(runner):
    result = runner.invoke(main, ["evaluate-detection", "--data", str(CBC_TEST), "--format", "voc"])
    assert result.exit_code != 0 and "--images" in result.stderr


@needs_bccd
def test_evaluate_detection_json_on_a_small_voc_set(runner, tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    for name in sorted((CBC_TEST / "Annotations").glob("*.xml"))[:3]:
        (ann / name.name).write_bytes(name.read_bytes())
    result = runner.invoke(
        main,
        [
            "evaluate-detection",
            "--data",
            str(tmp_path),
            "--format",
            "voc",
            "--images",
            str(BCCD_IMAGES),
            "--mpp",
            "0.071",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["n_images"] == 3 and "IoU" in payload["matching_rule"]
    wbc = payload["per_kind"]["wbc"]
    assert set(wbc) >= {"precision", "recall", "count_error", "n_pred", "n_true"}
    assert wbc["recall"] == 1.0


@needs_bccd
def test_detect_with_the_learned_platelet_detector(runner, monkeypatch):
    """``HEMATOVISION_PLATELET_DETECTOR=learned`` reaches `detect` (and its JSON says so)."""
    monkeypatch.setenv("HEMATOVISION_PLATELET_DETECTOR", "learned")
    result = runner.invoke(main, ["detect", str(SAMPLE), "--json", "--mpp", "0.071", "--kinds", "platelet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["platelet_detector"] == "learned"


def test_unknown_platelet_detector_setting_is_refused(runner, monkeypatch):
    monkeypatch.setenv("HEMATOVISION_PLATELET_DETECTOR", "magic")
    result = runner.invoke(main, ["detect", str(SAMPLE), "--json", "--mpp", "0.071"])
    assert result.exit_code != 0
