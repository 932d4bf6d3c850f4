"""No white cell lost on whole slides (issue 14): per-class detection recall against the manifest of
synthetic slides made from real PBC cells, on both pipeline paths, at 0.25 and 0.5 µm/px, as tiled
TIFF and as Aperio SVS.

For every (path, µm/px, format) the slides of that configuration are pooled and every white-cell
class and erythroblasts must reach a detection recall of ``MIN_RECALL``: a placed cell counts as
found when a detected white-cell box has its centre within half a cell (6 µm) of it (see
:mod:`hematovision.devtools.wholeslide_recall`). Every class has at least 35 placed cells in every
configuration, so one miss is tolerated and two are not. Classification is reported (unidentified
per class, in the test's ``record_property`` and on stdout), not asserted. The larger measurement
is ``benchmarks/wholeslide_recall.py`` (docs/validation.md, "Whole-slide detection recall").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hematovision.devtools.wholeslide_recall import PATHS, measure, pooled

pytestmark = pytest.mark.slow

MIN_RECALL = 0.97
MIN_PER_CLASS = 35
EVERY_CLASS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "ig", "erythroblast", "basophil")

# (format, µm/px, width, height, white-cell mix, white cells, seed): several sizes and mixes; every
# configuration holds at least MIN_PER_CLASS cells of every class.
SLIDES: list[tuple[str, float, int, int, dict[str, float], int, int]] = [
    ("tiff", 0.25, 4096, 4096, dict.fromkeys(EVERY_CLASS, 1.0), 280, 1),
    ("tiff", 0.25, 3072, 3072, {"lymphocyte": 80, "neutrophil": 15, "monocyte": 5}, 120, 2),
    (
        "svs",
        0.25,
        3584,
        4608,
        {"lymphocyte": 4, "erythroblast": 2, "neutrophil": 1, "monocyte": 1, "eosinophil": 1, "ig": 1, "basophil": 1},
        385,
        3,
    ),
    ("tiff", 0.5, 2560, 3072, dict.fromkeys(EVERY_CLASS, 1.0), 280, 4),
    ("svs", 0.5, 3072, 3072, dict.fromkeys(EVERY_CLASS, 1.0), 280, 5),
    ("svs", 0.5, 2048, 2048, {"neutrophil": 52, "ig": 21, "lymphocyte": 18, "monocyte": 6, "eosinophil": 3}, 100, 6),
]
CONFIGS = sorted({(fmt, mpp) for fmt, mpp, *_ in SLIDES})


@pytest.fixture(scope="module")
def runs(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every slide down both paths, classified with the shipped model (made and run once)."""
    from hemato_model.classifier import load_classifier
    from hematovision.core.settings import load_settings
    from hematovision.devtools.synthetic import make_slide

    classifier = load_classifier(load_settings().model_dir)
    folder = tmp_path_factory.mktemp("wholeslides")
    out = []
    for fmt, mpp, width, height, mix, n_wbc, seed in SLIDES:
        path = folder / f"s{seed}.{fmt}"
        manifest = make_slide(path, real_cells, width, height, mpp=mpp, n_wbc=n_wbc, seed=seed, fmt=fmt, wbc_mix=mix)
        assert manifest["counts"]["wbc"] == n_wbc, manifest["notes"]
        out += [measure(path, p, classifier) for p in PATHS]
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("fmt", "mpp"), CONFIGS)
def test_every_white_cell_class_is_found(runs, path: str, fmt: str, mpp: float, record_property) -> None:  # type: ignore[no-untyped-def]
    mine = [r for r in runs if (r["path"], r["format"], r["mpp"]) == (path, fmt, mpp)]
    table = pooled(mine)
    record_property("per_class", table)
    print(f"\n{path} {fmt} {mpp} µm/px:")
    for cls, row in table.items():
        print(f"  {cls:13} found {row['found']}/{row['placed']}  unidentified {row['unidentified']}")
    assert set(table) == set(EVERY_CLASS)
    assert all(row["placed"] >= MIN_PER_CLASS for row in table.values()), table
    low = {cls: row["recall"] for cls, row in table.items() if row["recall"] < MIN_RECALL}
    assert not low, (low, table)


def test_both_paths_find_the_same_cells(runs) -> None:  # type: ignore[no-untyped-def]
    """Reading level 0 only around low-resolution candidates finds (nearly) what reading all of it
    finds: per slide, at most 2 % fewer placed cells."""
    by_slide: dict[str, dict[str, int]] = {}
    for r in runs:
        by_slide.setdefault(r["slide"], {})[r["path"]] = sum(v["found"] for v in r["per_class"].values())
    for slide, found in by_slide.items():
        assert found["two_pass"] >= 0.98 * found["full_resolution"], (slide, found)
