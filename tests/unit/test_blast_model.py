"""The blast data preparation (scale-bar mask, µm/px estimate) and the v2 blast model's guards.

Fast (well under a minute): a few ALL fields and the 82 held-out PBC lymphocytes. Tests that need
the shared data skip when it is absent (fail under CI); the model tests need only the shipped model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemato_model.detection import estimate_mpp
from hemato_model.training.blast_data import SCALE_BAR_BOX, mask_scale_bar, rebuild_field_crops
from hematovision.core.datasets import PBC_MPP
from hematovision.core.settings import load_settings

MODEL_DIR = Path(__file__).resolve().parents[2] / "hemato_model" / "models" / "wbc-blast-effnetlite0-v2"
DATA = Path(load_settings().data_root) / "data"
ALL_ROOT = DATA / "aria_all"
PBC_DIR = DATA / "pbc_subset" / "PBC_dataset_normal_DIB"

needs_all = pytest.mark.needs((ALL_ROOT / "images").is_dir(), f"the shared ALL data under {ALL_ROOT}")
needs_pbc = pytest.mark.needs(PBC_DIR.is_dir(), f"the shared PBC data under {PBC_DIR}")


def _all_fields(n_per_class: int) -> list[Path]:
    return [
        f
        for c in ("Benign", "Early", "Pre", "Pro")
        for f in sorted((ALL_ROOT / "images" / c).glob("*.jpg"))[:n_per_class]
    ]


def test_mask_scale_bar_replaces_the_corner_with_background() -> None:
    img = np.full((224, 224, 3), 240, dtype=np.uint8)
    img[100:140, 100:140] = (120, 60, 160)  # a cell elsewhere stays
    img[205:217, 192:220] = 0  # the scale-bar mark
    img[208:212, 196:216] = (255, 0, 0)
    out = mask_scale_bar(img)
    bw, bh = round(SCALE_BAR_BOX[0] * 224), round(SCALE_BAR_BOX[1] * 224)
    corner = out[224 - bh :, 224 - bw :]
    assert (corner == 240).all()  # filled with the glass colour, mark gone
    assert (out[100:140, 100:140] == (120, 60, 160)).all()
    assert (img[205:217, 192:220] == 0).any()  # the input is not modified


@needs_all
def test_mask_removes_the_real_scale_bar() -> None:
    for path in _all_fields(2):
        arr = np.asarray(Image.open(path).convert("RGB"))
        out = mask_scale_bar(arr)
        corner = out[-26:, -40:].reshape(-1, 3)
        assert (corner == corner[0]).all()  # one flat colour
        assert corner[0].mean() > 150  # glass-like, not the dark mark
        assert (out[:-26] == arr[:-26]).all()


@needs_all
def test_estimated_mpp_is_plausible_on_all_fields() -> None:
    estimates = []
    for path in _all_fields(3):
        arr = mask_scale_bar(np.asarray(Image.open(path).convert("RGB")))
        try:
            estimates.append(estimate_mpp(arr))
        except ValueError:
            continue
    assert len(estimates) >= 8
    # 224-px fields of a 100× camera image: red cells 10-40 px across -> about 0.18-0.75 µm/px.
    assert 0.18 <= float(np.median(estimates)) <= 0.75


@pytest.fixture(scope="module")
def clf():  # type: ignore[no-untyped-def]
    from hemato_model.classifier import Classifier

    return Classifier.load(MODEL_DIR)


@pytest.mark.slow
def test_v2_model_loads_with_a_blast_class(clf) -> None:  # type: ignore[no-untyped-def]
    assert "blast" in clf.classes and len(clf.classes) == 9
    assert clf.version.startswith("2.") and clf.crop_um == 24.0 and clf.input_px == 128
    for name in ("model.keras", "model.json", "split.json", "blast_split.json", "metrics.json", "MODEL_CARD.md"):
        assert (MODEL_DIR / name).is_file()
    assert (MODEL_DIR / "model.keras").stat().st_size < 25 * 2**20


@needs_all
@pytest.mark.slow
def test_v2_calls_most_held_out_blasts_blast(clf) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((MODEL_DIR / "blast_split.json").read_text())
    picked = []
    for cls in ("Early", "Pre", "Pro"):
        picked += [f for f in doc["fields"] if f["part"] == "test" and f["class"] == cls and f["crops"]][:3]
    sub = dict(doc, fields=picked)
    crops = np.concatenate([c for _, c in rebuild_field_crops(sub, ALL_ROOT, "test")])
    top = clf.predict_proba(crops).argmax(1)
    share = float((top == clf.classes.index("blast")).mean())
    assert len(crops) >= 9 and share >= 0.6, share


@needs_pbc
@pytest.mark.slow
def test_v2_false_blast_rate_on_pbc_lymphocytes_within_the_card(clf) -> None:  # type: ignore[no-untyped-def]
    from hemato_model.training.classifier_training import load_crops

    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    stated = metrics["blast"]["false_blast_pbc_lymphocytes"]["rate"]
    split = json.loads((MODEL_DIR / "split.json").read_text())
    files = [PBC_DIR / f for f in split["test"] if f.startswith("lymphocyte/")]
    crops = load_crops(files, PBC_MPP, clf.crop_um, clf.input_px)
    rate = float((clf.predict_proba(crops).argmax(1) == clf.classes.index("blast")).mean())
    assert len(files) == 82
    assert rate <= stated + 1e-9


def _folder(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int, px: int) -> None:
    rng = np.random.default_rng(len(colours))
    yy, xx = np.mgrid[0:px, 0:px]
    for cls, colour in colours.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((px, px, 3), 235, dtype=np.uint8)
            img[(xx - px / 2) ** 2 + (yy - px / 2) ** 2 <= (px / 4) ** 2] = colour
            img = np.clip(img.astype(int) + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls}_{i:02d}.png")


@pytest.mark.slow
def test_train_extra_data_adds_a_class_and_keeps_the_main_split(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hematovision.cli import main

    _folder(tmp_path / "main", {"alpha": (200, 60, 60), "beta": (60, 60, 200)}, 7, 80)
    _folder(tmp_path / "extra", {"blast": (120, 40, 160)}, 8, 32)  # already at model scale
    extra_split = {
        "crop_um": 6.0,
        "input_px": 32,
        "train": [f"blast/blast_{i:02d}.png" for i in range(5)],
        "val": ["blast/blast_05.png"],
        "test": ["blast/blast_06.png", "blast/blast_07.png"],
    }
    (tmp_path / "extra" / "split.json").write_text(json.dumps(extra_split))
    common = [
        "--data",
        str(tmp_path / "main"),
        "--epochs",
        "1",
        "--head-epochs",
        "3",
        "--input-px",
        "32",
        "--crop-um",
        "6",
        "--mpp",
        "0.1",
        "--seed",
        "3",
        "--quiet",
    ]
    runner = CliRunner()
    first = runner.invoke(main, ["train", "--out", str(tmp_path / "m1"), *common])
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        main,
        [
            "train",
            "--out",
            str(tmp_path / "m2"),
            "--init-from",
            str(tmp_path / "m1"),
            "--extra-data",
            str(tmp_path / "extra"),
            "--name",
            "x-blast",
            "--min-resolution",
            "0.4",
            *common,
        ],
    )
    assert second.exit_code == 0, second.output
    meta = json.loads((tmp_path / "m2" / "model.json").read_text())
    assert meta["name"] == "x-blast" and meta["classes"] == ["alpha", "beta", "blast"]
    s1 = json.loads((tmp_path / "m1" / "split.json").read_text())
    s2 = json.loads((tmp_path / "m2" / "split.json").read_text())
    assert all(s1[k] == s2[k] for k in ("train", "val", "test"))
    assert s2["extra"]["test"] == extra_split["test"] and s2["extra"]["train"] == extra_split["train"]


BCCD_DIR = DATA / "bccd"


@pytest.mark.slow
@pytest.mark.needs(BCCD_DIR.is_dir(), f"the shared BCCD data under {BCCD_DIR}")
def test_v2_false_blast_rate_on_bccd_lymphocytes_within_the_card(clf) -> None:  # type: ignore[no-untyped-def]
    """Another lab's normal lymphocytes: called blasts no more often than the model card states."""
    from hemato_model.preprocessing import crop_cell
    from hemato_model.training.evaluation import bccd_cells
    from hematovision.core.datasets import BCCD_MPP

    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    stated = metrics["blast"]["false_blast_bccd_lymphocytes"]["k"]  # of 33
    cells = [(jpg, centre) for jpg, centre, label in bccd_cells(BCCD_DIR) if label == "lymphocyte"]
    crops = np.stack(
        [
            crop_cell(np.asarray(Image.open(jpg).convert("RGB")), centre, BCCD_MPP, clf.crop_um, clf.input_px)
            for jpg, centre in cells
        ]
    )
    called_blast = int((clf.predict_proba(crops).argmax(1) == clf.classes.index("blast")).sum())
    assert len(cells) == 33
    assert called_blast <= stated, (called_blast, stated)
