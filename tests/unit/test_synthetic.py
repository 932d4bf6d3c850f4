"""Synthetic smears: OpenSlide-readable pyramids, a truthful manifest, determinism, fallbacks, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import openslide
import pytest
from click.testing import CliRunner

from hematovision.cli import main
from hematovision.core.datasets import have_pbc
from hematovision.core.slides import open_slide
from hematovision.devtools import sample_build
from hematovision.devtools.slide_writer import write_pyramid
from hematovision.devtools.synthetic import (
    DEFAULT_WBC_MIX,
    WBC_MASK_UM,
    SmearRenderer,
    make_slide,
    manifest_path,
    plan_smear,
)

SIZE = 2048


def _check_manifest(m: dict, width: int, height: int) -> None:
    by_kind = {"wbc": 0, "rbc": 0, "platelet": 0}
    for c in m["cells"]:
        by_kind[c["kind"]] += 1
        x, y = c["center"]
        x0, y0, x1, y1 = c["bbox"]
        assert 0 <= x < width and 0 <= y < height
        assert 0 <= x0 <= x < x1 <= width and 0 <= y0 <= y < y1 <= height
        assert (c["class"] is None) == (c["kind"] != "wbc")
    assert m["counts"] == {"wbc": by_kind["wbc"], "rbc": by_kind["rbc"], "platelets": by_kind["platelet"]}
    assert sum(m["differential"].values()) == m["counts"]["wbc"]
    wbc_classes = [c["class"] for c in m["cells"] if c["kind"] == "wbc"]
    assert {k: wbc_classes.count(k) for k in set(wbc_classes)} == m["differential"]


@pytest.fixture(scope="module")
def pbc_slide(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "smear.tiff"
    source = "auto"
    m = make_slide(out, data_root, SIZE, SIZE, mpp=0.25, n_wbc=24, seed=3, fmt="tiff", source=source)
    return out, m


def test_tiff_slide_opens_in_openslide_with_manifest(pbc_slide: tuple[Path, dict]) -> None:
    out, m = pbc_slide
    osr = openslide.OpenSlide(str(out))
    assert osr.properties["openslide.vendor"] == "generic-tiff"
    assert osr.level_count > 1
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert osr.dimensions == (SIZE, SIZE)
    osr.close()

    on_disk = json.loads(manifest_path(out).read_text())
    assert manifest_path(out).name == "smear.tiff.manifest.json"
    for key in ("mpp", "width", "height", "format", "source", "seed", "cells", "counts", "differential"):
        assert on_disk[key] == m[key]
    assert on_disk["format"] == "tiff" and on_disk["mpp"] == 0.25
    assert on_disk["counts"]["wbc"] == 24 and on_disk["counts"]["rbc"] > 500
    assert on_disk["counts"]["platelets"] > 10
    _check_manifest(on_disk, SIZE, SIZE)


def test_white_cells_do_not_overlap_and_are_dark(pbc_slide: tuple[Path, dict]) -> None:
    out, m = pbc_slide
    wbcs = [c for c in m["cells"] if c["kind"] == "wbc"]
    min_gap = max(WBC_MASK_UM.values()) / 0.25
    for i, a in enumerate(wbcs):
        for b in wbcs[i + 1 :]:
            assert math.dist(a["center"], b["center"]) >= min_gap
    with open_slide(out) as slide:
        for c in wbcs:
            x0, y0, x1, y1 = c["bbox"]
            assert 20 <= x1 - x0 <= 100  # 5–25 µm at 0.25 µm/px
            px = slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0))
            assert px.min() < 150, c  # a stained nucleus inside every white-cell box
        glass = slide.read_region((0, 0), 0, (64, 64))  # corner: outside the smear ellipse
        assert glass.mean() > 235


def test_real_pbc_cells_used_when_available(pbc_slide: tuple[Path, dict], data_root: Path) -> None:
    """The shared PBC images where they are, else the packaged sample: real cells either way."""
    _, m = pbc_slide
    if have_pbc(data_root):
        assert m["source"] == "pbc" and m["source_root"] == str(data_root)
    else:
        assert m["source"] == "pbc-sample" and m["source_root"] == str(sample_build.sample_root())
    files = [c["source_file"] for c in m["cells"] if c["kind"] == "wbc"]
    assert all(f and (Path(m["source_root"]) / f).is_file() for f in files)
    assert len(set(files)) == len(files)  # each crop once before any repeat
    assert "Acevedo et al. 2020" in m["attribution"] and "CC BY 4.0" in m["attribution"]


def test_svs_slide_is_aperio(tmp_path: Path) -> None:
    out = tmp_path / "smear.svs"
    m = make_slide(out, tmp_path, SIZE, 1536, mpp=0.5, n_wbc=8, seed=1, fmt="svs", source="procedural")
    osr = openslide.OpenSlide(str(out))
    assert osr.properties["openslide.vendor"] == "aperio"
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert osr.properties["aperio.AppMag"] == "20"
    assert osr.level_count > 1
    osr.close()
    assert m["format"] == "svs" and m["counts"]["wbc"] == 8
    _check_manifest(json.loads(manifest_path(out).read_text()), SIZE, 1536)


def test_packaged_sample_when_the_data_root_is_empty(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    m = make_slide(tmp_path / "p.tiff", empty, 1536, 1536, n_wbc=10, seed=0)
    assert m["source"] == "pbc-sample"
    assert any("no real cell images under" in n and "packaged sample" in n for n in m["notes"])
    wbcs = [c for c in m["cells"] if c["kind"] == "wbc"]
    assert len(wbcs) == 10
    root = sample_build.sample_root()
    for c in wbcs:
        assert Path(c["source_file"]).parts[0] == c["class"] and (root / c["source_file"]).is_file()
    assert json.loads(manifest_path(tmp_path / "p.tiff").read_text())["source"] == "pbc-sample"
    assert "ATTRIBUTION.md" in m["attribution"]
    # the same slide when asked for by name, and nothing else changes with the data root
    again = make_slide(tmp_path / "q.tiff", None, 1536, 1536, n_wbc=10, seed=0, source="pbc-sample")
    assert again["cells"] == m["cells"] and again["notes"] == []
    with pytest.raises(ValueError, match="no real cell images under"):
        make_slide(tmp_path / "r.tiff", empty, 1024, 1024, n_wbc=6, source="pbc")


def test_procedural_cells_only_without_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last resort, for an install that lost its package data: drawn cells, and the notes say so."""
    monkeypatch.setattr(sample_build, "SAMPLE_DIR", tmp_path / "lost-sample")
    empty = tmp_path / "no-data"
    empty.mkdir()
    m = make_slide(tmp_path / "p.tiff", empty, 1024, 1024, n_wbc=6, seed=0)
    assert m["source"] == "procedural" and m["source_root"] is None
    assert any("no packaged sample" in n and "drew procedural cells" in n for n in m["notes"])
    assert all(c["source_file"] is None for c in m["cells"])
    with pytest.raises(ValueError, match="packaged sample of real cells is missing"):
        make_slide(tmp_path / "q.tiff", empty, 1024, 1024, n_wbc=6, source="pbc-sample")


@pytest.mark.parametrize("mpp", [1.0, 0.1])
def test_sample_cells_at_coarse_and_fine_scales(tmp_path: Path, mpp: float) -> None:
    """The sample's images are cut to the 26 µm a slide pastes; a sprite that reads past them (coarse
    slides read a square wider than the image) is padded with the image's background, not refused."""
    side = int(60 / mpp) * 4
    m = make_slide(tmp_path / "c.tiff", None, side, side, mpp=mpp, n_wbc=3, seed=1, source="pbc-sample")
    assert m["counts"]["wbc"] == 3
    with open_slide(tmp_path / "c.tiff") as slide:
        for c in (c for c in m["cells"] if c["kind"] == "wbc"):
            x0, y0, x1, y1 = c["bbox"]
            assert slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0)).min() < 150, c  # a stained nucleus


def test_deterministic_and_tiling_independent(tmp_path: Path) -> None:
    a = plan_smear(1024, 768, 0.25, 10, seed=5, data_root=tmp_path, source="procedural")
    b = plan_smear(1024, 768, 0.25, 10, seed=5, data_root=tmp_path, source="procedural")
    c = plan_smear(1024, 768, 0.25, 10, seed=6, data_root=tmp_path, source="procedural")
    assert np.array_equal(a.rbc_xy, b.rbc_xy) and [w.center for w in a.wbcs] == [w.center for w in b.wbcs]
    assert not np.array_equal(a.rbc_xy[:50], c.rbc_xy[:50])
    ra, rb = SmearRenderer(a), SmearRenderer(b)
    whole = ra(0, 0, 1024, 768)
    assert np.array_equal(whole, rb(0, 0, 1024, 768))
    pieces = np.concatenate(
        [np.concatenate([rb(x, y, 256, 256) for x in range(0, 1024, 256)], axis=1) for y in range(0, 768, 256)]
    )
    assert np.array_equal(whole, pieces)


def test_mix_and_held_out_files(tmp_path: Path) -> None:
    m = make_slide(tmp_path / "l.tiff", tmp_path, 1024, 1024, n_wbc=5, source="procedural", wbc_mix={"lymphocyte": 1.0})
    assert m["differential"] == {"lymphocyte": 5}
    root = sample_build.sample_root()  # any folder laid out as PBC's: <class>/<file>.jpg
    held_out = sorted((root / "monocyte").glob("*.jpg"))[:2] + sorted((root / "basophil").glob("*.jpg"))[:2]
    assert len(held_out) == 4
    m = make_slide(tmp_path / "h.tiff", tmp_path, 1536, 1536, n_wbc=6, seed=2, wbc_files=held_out)
    used = {Path(c["source_file"]).name for c in m["cells"] if c["kind"] == "wbc"}
    assert used <= {f.name for f in held_out}
    assert set(m["differential"]) <= {"monocyte", "basophil"}
    assert m["source"] == "pbc-sample"  # the files are the packaged sample's
    with pytest.raises(ValueError, match="unknown white-cell class"):
        plan_smear(512, 512, 0.25, 2, data_root=tmp_path, source="procedural", wbc_mix={"blast": 1})


def test_default_mix_is_a_normal_differential(tmp_path: Path) -> None:
    assert sum(DEFAULT_WBC_MIX.values()) == pytest.approx(1.0)
    plan = plan_smear(6000, 6000, 0.5, 200, seed=0, data_root=tmp_path, source="procedural")
    counts: dict[str, int] = {}
    for w in plan.wbcs:
        counts[w.cls] = counts.get(w.cls, 0) + 1
    assert len(plan.wbcs) == 200
    assert counts["neutrophil"] == 110 and counts["lymphocyte"] == 60 and counts["monocyte"] == 14


def test_writer_edges_and_levels(tmp_path: Path) -> None:
    calls: list[tuple[int, int, int, int]] = []

    def tile_fn(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        calls.append((x0, y0, w, h))
        return np.full((h, w, 3), (x0 // 256 * 40) % 256, np.uint8)

    info = write_pyramid(tmp_path / "e.tiff", 1300, 1100, tile_fn, 1.0, tile_px=256, min_level_px=400)
    assert info["levels"] == [(1300, 1100), (650, 550), (325, 275)]
    assert (1280, 1024, 20, 76) in calls and len(calls) == 6 * 5
    osr = openslide.OpenSlide(str(tmp_path / "e.tiff"))
    assert osr.level_dimensions == ((1300, 1100), (650, 550), (325, 275))
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(1.0)
    osr.close()


def test_cli_make_slide(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.svs"
    res = runner.invoke(
        main,
        [
            "make-slide",
            str(out),
            "--width",
            "1536",
            "--height",
            "1536",
            "--wbc",
            "5",
            "--data-root",
            str(tmp_path),
            "--seed",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"slide:    {out}" in res.output and "manifest:" in res.output
    assert "5 white cells" in res.output and "the packaged sample" in res.output
    assert "no real cell images under" in res.output
    assert openslide.OpenSlide.detect_format(str(out)) == "aperio"
    assert json.loads(manifest_path(out).read_text())["counts"]["wbc"] == 5

    bad = runner.invoke(main, ["make-slide", str(tmp_path / "missing" / "x.tiff")])
    assert bad.exit_code != 0 and "does not exist" in bad.output
    bad = runner.invoke(main, ["make-slide", str(tmp_path / "x.tiff"), "--mpp", "0"])
    assert bad.exit_code != 0 and "--mpp must be a positive number" in bad.output
    bad = runner.invoke(
        main, ["make-slide", str(tmp_path / "x.tiff"), "--mix", "blast=5", "--data-root", str(tmp_path)]
    )
    assert bad.exit_code != 0 and "unknown white-cell class" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert "Usage" in runner.invoke(main, ["make-slide", "--help"]).output
