"""The red-cell morphology classifier: label files, overlay masking, the split by field, the CLI and
the shipped model on held-out Chula RBC-12 fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hemato_model.classifier import Classifier, sha256_file
from hemato_model.rbc.data import (
    RBC_CLASSES,
    RbcDataError,
    RbcField,
    cut_field_crops,
    list_fields,
    mask_overlay,
    read_labels,
    resolve_scale,
    split_fields,
)
from hematovision.cli import main
from hematovision.core.settings import RBC_MODEL_DIR, load_settings

CHULA = load_settings().data_root / "data" / "chula_rbc"
needs_chula = pytest.mark.needs((CHULA / "labels").is_dir(), f"Chula RBC-12 fields under {CHULA}")


def _folder(root: Path, labels: dict[str, str], size: tuple[int, int] = (120, 90)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, text in labels.items():
        Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(root / "images" / f"{name}.jpg")
        (root / "labels" / f"{name}.txt").write_text(text)
    return root


def test_read_labels_parses_and_rejects(tmp_path: Path) -> None:
    good = tmp_path / "1.txt"
    good.write_text("10 20 0\n\n30.5 40 12\n")
    assert read_labels(good) == [(10.0, 20.0, 0), (30.5, 40.0, 12)]
    for text, what in (("10 20\n", "expected 'x y class'"), ("1 2 13\n", "class 13"), ("a b c\n", "line 1")):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(RbcDataError, match=what):
            read_labels(bad)


def test_list_fields_needs_images_and_labels(tmp_path: Path) -> None:
    with pytest.raises(RbcDataError, match="images/ and labels/"):
        list_fields(tmp_path)
    root = _folder(tmp_path / "d", {"2": "5 5 1\n", "10": "6 6 0\n", "3": ""})
    fields = list_fields(root)
    assert [f.name for f in fields] == ["2", "10"]  # natural order; an empty label file is no field
    (root / "labels" / "99.txt").write_text("1 1 0\n")
    with pytest.raises(RbcDataError, match="99.txt has no image"):
        list_fields(root)


def test_mask_overlay_paints_out_the_green_scale_bar() -> None:
    img = np.full((40, 60, 3), (180, 120, 150), np.uint8)
    img[30:33, 10:50] = (40, 220, 40)  # a drawn green bar
    out = mask_overlay(img)
    green = out[..., 1].astype(int) - np.maximum(out[..., 0], out[..., 2])
    assert green.max() < 0 and (out[31, 30] == (180, 120, 150)).all()
    plain = np.full((8, 8, 3), (180, 120, 150), np.uint8)
    assert mask_overlay(plain) is plain


def test_crops_keep_physical_size_and_given_scale_is_used() -> None:
    img = np.full((200, 200, 3), 230, np.uint8)
    yy, xx = np.mgrid[0:200, 0:200]
    img[(xx - 100) ** 2 + (yy - 100) ** 2 <= 25**2] = (150, 60, 90)  # 50 px = 7.5 µm at 0.15 µm/px
    fields = [RbcField("a", Path("a.jpg"), ((100.0, 100.0, 0),))]
    scale = resolve_scale(fields, {"a": img}, mpp=0.15)
    assert scale.source == "given" and scale.per_field == {"a": 0.15}
    crop = cut_field_crops(img, fields[0].cells, scale.per_field["a"], crop_um=15.0, input_px=40)
    inside = float((crop[0, ..., 1] < 150).mean())
    assert abs(inside - np.pi * 3.75**2 / 15.0**2) < 0.02
    with pytest.raises(RbcDataError):
        resolve_scale(fields, {"a": img}, mpp=-1.0)


def test_split_is_by_field_stratified_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    fields = []
    for i in range(120):
        n = rng.integers(5, 30)
        classes = rng.choice(13, size=n, p=np.r_[0.4, np.full(12, 0.05)])
        if i % 10 == 0:  # a rare class that only 12 fields hold
            classes = np.r_[classes, [12] * 5]
        classes = np.where(classes == 12, 0, classes) if i % 10 else classes
        fields.append(RbcField(str(i), Path(f"{i}.jpg"), tuple((1.0, 1.0, int(c)) for c in classes)))
    a = split_fields(fields, seed=1, val_fraction=0.15, test_fraction=0.2)
    assert a == split_fields(fields, seed=1, val_fraction=0.15, test_fraction=0.2)
    names = [n for part in a.values() for n in part]
    assert sorted(names) == sorted(f.name for f in fields) and len(set(names)) == len(names)
    assert (len(a["test"]), len(a["val"])) == (24, 18)
    by_name = {f.name: f for f in fields}
    for part in ("train", "val", "test"):
        counts = sum(by_name[n].class_counts() for n in a[part])
        assert counts[12] > 0, f"the rare class is missing from {part}"


@pytest.mark.parametrize(
    "command,options",
    [("train-rbc", ["--data", "--out", "--context", "--init-model"]), ("evaluate-rbc", ["--data", "--json", "--mpp"])],
)
def test_cli_help_lists_the_contract_options(command: str, options: list[str]) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    for option in options:
        assert option in result.output


@pytest.mark.parametrize("command", ["train-rbc", "evaluate-rbc"])
def test_cli_bad_folder_or_labels_is_a_one_line_error(command: str, tmp_path: Path) -> None:
    extra = ["--out", str(tmp_path / "m")] if command == "train-rbc" else []
    result = CliRunner().invoke(main, [command, "--data", str(tmp_path / "nope"), *extra])
    assert result.exit_code == 2 and "data folder not found" in result.output
    root = _folder(tmp_path / "d", {"1": "10 10 0\n1 2\n"})
    extra = extra or ["--split", "all"]
    result = CliRunner().invoke(main, [command, "--data", str(root), *extra])
    assert result.exit_code == 2 and "1.txt line 2" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_train_rbc_refuses_a_missing_init_model_and_a_bad_shift(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"1": "10 10 0\n"})
    base = ["train-rbc", "--data", str(root), "--out", str(tmp_path / "m"), "--context"]
    result = CliRunner().invoke(main, [*base, "--init-model", str(tmp_path)])
    assert result.exit_code == 2 and "no model.keras there" in result.output
    result = CliRunner().invoke(main, [*base, "--shift", "0.7"])
    assert result.exit_code == 2 and "--shift" in result.output
    assert not (tmp_path / "m").exists()


# --- the shipped model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rbc_model() -> Classifier:
    if not (RBC_MODEL_DIR / "model.keras").is_file():
        pytest.fail(f"shipped red-cell model missing: {RBC_MODEL_DIR}")
    return Classifier.load(RBC_MODEL_DIR)  # checks model.keras against the sha256 of model.json


@pytest.mark.slow
def test_shipped_rbc_model_files(rbc_model: Classifier) -> None:
    meta = json.loads((RBC_MODEL_DIR / "model.json").read_text())
    assert meta["sha256"] == sha256_file(RBC_MODEL_DIR / "model.keras")
    assert rbc_model.classes == list(RBC_CLASSES) and rbc_model.name == "rbc-effnetlite0"
    assert rbc_model.input_px == meta["input_px"] and rbc_model.crop_um == meta["crop_um"]
    assert (RBC_MODEL_DIR / "MODEL_CARD.md").is_file()
    assert sum(p.stat().st_size for p in RBC_MODEL_DIR.iterdir()) < 8 * 2**20
    split = json.loads((RBC_MODEL_DIR / "split.json").read_text())
    assert split["unit"].startswith("field")
    parts = [set(split[p]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


@pytest.mark.slow
@needs_chula
def test_shipped_rbc_model_classifies_held_out_cells(rbc_model: Classifier) -> None:
    test_fields = set(json.loads((RBC_MODEL_DIR / "split.json").read_text())["test"])
    fields = [f for f in list_fields(CHULA) if f.name in test_fields][:6]
    mpp = rbc_model.meta["preprocessing"]["scale"]["mpp"]
    from hemato_model.rbc.data import read_field_image

    crops = np.concatenate(
        [
            cut_field_crops(read_field_image(f.image_path), f.cells, mpp, rbc_model.crop_um, rbc_model.input_px)
            for f in fields
        ]
    )
    truth = [RBC_CLASSES[c] for f in fields for _, _, c in f.cells]
    proba = rbc_model.predict_proba(crops)
    assert proba.shape == (len(truth), 13) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    accuracy = float(np.mean([RBC_CLASSES[k] == t for k, t in zip(proba.argmax(axis=1), truth, strict=True)]))
    assert accuracy >= 0.6, accuracy  # chance (the normal share) is ~0.3


@pytest.mark.slow
@needs_chula
def test_evaluate_rbc_cli_on_held_out_fields(tmp_path: Path) -> None:
    test_fields = json.loads((RBC_MODEL_DIR / "split.json").read_text())["test"][:4]
    root = tmp_path / "chula"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in test_fields:
        shutil.copy(CHULA / "images" / f"{name}.jpg", root / "images")
        shutil.copy(CHULA / "labels" / f"{name}.txt", root / "labels")
    result = CliRunner().invoke(main, ["evaluate-rbc", "--data", str(root), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output.strip().splitlines()[-1])
    assert doc["split"] == "test" and doc["n_fields"] == 4
    assert doc["scale"]["source"] == "estimated-folder-median" and 0.08 < doc["scale"]["mpp"] < 0.3
    assert set(doc["per_class"]["normal"]) >= {"precision", "recall", "n"}
    assert len(doc["confusion_matrix"]) == 13 and 0.0 <= doc["accuracy"] <= 1.0
    given = CliRunner().invoke(main, ["evaluate-rbc", "--data", str(root), "--json", "--mpp", "0.17", "--quiet"])
    assert json.loads(given.output.strip().splitlines()[-1])["scale"]["source"] == "given"
