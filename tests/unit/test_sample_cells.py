"""The sample of real PBC cells packaged with HematoVision: what it holds, where it comes from, how it
is rebuilt, and that a slide made from it alone (no shared data) is analysed like a slide of the full
data: real cells, few of them unidentified."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hematovision.cli import main
from hematovision.core.datasets import PBC_CLASSES, PBC_MPP, have_pbc
from hematovision.core.settings import SHIPPED_MODEL_DIR
from hematovision.devtools.sample_build import (
    PER_CLASS,
    have_sample,
    read_sample,
    sample_root,
    sample_size_bytes,
)

#: The slide pastes a 26 µm disc around each cell: every image must still cover it.
NEEDED_PX = 26.0 / PBC_MPP
MAX_UNIDENTIFIED_PERCENT = 15.0


def test_sample_holds_the_advertised_cells() -> None:
    root = sample_root()
    assert have_sample()
    cells = read_sample()
    assert Counter(c.cls for c in cells) == dict.fromkeys(PBC_CLASSES, PER_CLASS)  # 40 × 8 = 320
    assert len(cells) == 320
    # the manifest lists exactly the images there, each in its class's folder, named as in PBC
    assert sorted(c.path for c in cells) == sorted(root.glob("*/*.jpg"))
    for c in cells:
        assert c.path.parent.name == c.cls
        assert c.pbc_file == f"PBC_dataset_normal_DIB/{c.cls}/{c.path.name}"
    # PBC's scale kept: the images are cut to a bit more than the 26 µm a slide uses, not resized
    for c in cells:
        with Image.open(c.path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert min(im.size) >= NEEDED_PX and max(im.size) <= 340, (c.path, im.size)
    size = sample_size_bytes()
    assert 2 * 2**20 < size < 5 * 2**20, size  # a few MB: 4.2 MiB when built


def test_sample_is_from_the_training_split_and_attributed() -> None:
    split = json.loads((SHIPPED_MODEL_DIR / "split.json").read_text())
    used = {f"{c.cls}/{c.path.name}" for c in read_sample()}
    assert used <= set(split["train"])
    assert not used & (set(split["test"]) | set(split["val"]))
    text = (sample_root() / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for needed in ("CC BY 4.0", "Acevedo", "Data in Brief", "doi:10.1016/j.dib.2020.105474", "cropped", "re-encoded"):
        assert needed in text, needed
    assert "| neutrophil | 40 |" in text


def test_read_sample_rejects_a_broken_sample(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sample of real cells"):
        read_sample(tmp_path)
    (tmp_path / "manifest.csv").write_text("file,class,pbc_file\nlymphocyte/LY_1.jpg,lymphocyte,x\n")
    with pytest.raises(ValueError, match="1 image"):
        read_sample(tmp_path)
    assert not have_sample(tmp_path)


def test_make_sample_rebuilds_the_packaged_sample(data_root: Path, tmp_path: Path, require) -> None:  # type: ignore[no-untyped-def]
    require(have_pbc(data_root), f"the shared PBC images under {data_root} (the sample is cut from them)")
    out = tmp_path / "sample"
    res = CliRunner().invoke(main, ["make-sample", "--data-root", str(data_root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "320 images" in res.output and "neutrophil 40" in res.output
    packaged = sample_root()
    assert (out / "manifest.csv").read_text() == (packaged / "manifest.csv").read_text()
    assert (out / "ATTRIBUTION.md").read_text() == (packaged / "ATTRIBUTION.md").read_text()
    with (packaged / "manifest.csv").open() as fh:
        files = [row["file"] for row in csv.DictReader(fh)]
    for rel in files[::16]:
        with Image.open(out / rel) as a, Image.open(packaged / rel) as b:
            assert a.size == b.size
            diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
            assert diff.mean() < 0.5, rel  # same pick, same cut (byte-equal with the same Pillow)


def test_make_sample_bad_input_writes_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "sample"
    res = runner.invoke(main, ["make-sample", "--data-root", str(tmp_path / "nothing"), "--out", str(out)])
    assert res.exit_code != 0 and "no PBC images under" in res.output
    assert "Traceback" not in res.output and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary folder left behind
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = runner.invoke(main, ["make-sample", "--data-root", str(tmp_path), "--out", str(out)])
    assert res.exit_code != 0 and "exists and is not empty" in res.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    res = runner.invoke(main, ["make-sample", "--out", str(tmp_path / "x"), "--split", str(tmp_path / "none.json")])
    assert res.exit_code != 0 and "Error" in res.output and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_slide_from_the_sample_alone_is_analysed_with_few_unidentified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No shared data (HEMATOVISION_DATA_ROOT is an empty folder): the slide is made of the packaged
    real cells, and the shipped model calls them as it calls the full data's (the demo's figure with
    the full data: 10-17 % unidentified)."""
    from hemato_model.classifier import load_classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.settings import load_settings
    from hematovision.core.slides import open_slide
    from hematovision.devtools.synthetic import make_slide
    from hematovision.service.slide_results import build_report

    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("HEMATOVISION_DATA_ROOT", str(empty))
    settings = load_settings()
    assert settings.data_root == empty
    slide_path = tmp_path / "sample.tiff"
    manifest = make_slide(slide_path, settings, 3072, 3072, mpp=0.25, n_wbc=60, seed=7)
    assert manifest["source"] == "pbc-sample" and manifest["counts"]["wbc"] == 60
    with open_slide(slide_path) as slide:
        analysis = analyze_slide(slide, load_classifier(settings.model_dir), PipelineParams())
    report = build_report(analysis, slide_id="sample")
    diff = report["differential"]
    assert report["counts"]["wbc_seen"] >= 50, report["counts"]
    # Unidentified cells are reported beside the differential, as a share of all white cells seen.
    assert report["unidentified_percent"] < MAX_UNIDENTIFIED_PERCENT, report["unidentified_percent"]
    placed = Counter(c["class"] for c in manifest["cells"] if c["kind"] == "wbc")
    assert diff["neutrophil"]["count"] >= 0.6 * placed["neutrophil"], (diff, placed)
    assert diff["lymphocyte"]["count"] >= 0.5 * placed["lymphocyte"], (diff, placed)
