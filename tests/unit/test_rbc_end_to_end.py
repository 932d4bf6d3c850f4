"""End to end: a make-slide slide with a known red-cell mix (real Chula RBC-12 cells from the red-cell
model's test fields) -> ``hematovision process --rbc`` -> the reported red-cell percentages against
the manifest (issue 17).

Tolerances, stated from what was measured (docs/validation.md, "Red-cell morphology in the
pipeline"): the classifier's held-out recall is 0.83 (schistocyte) to 0.96 (target) on its own
camera fields, but on composed slides its normal cells are mostly *not* recognised (a normal-only
slide reports ~19 % schistocytes). So:

- :func:`test_mix_slide_runs_end_to_end_on_held_out_cells` checks the plumbing: cells from test
  fields only, 1,500 red cells classified, the section, size figures, SCHISTOCYTES raised (4.9 % were
  placed);
- :func:`test_reported_percentages_within_tolerance` states the tolerance a usable red-cell count
  needs — each placed abnormal finding reported at 0.5x to +15 points of its placed share (recall
  0.8-0.96 with a margin, plus spill-over of misread normal cells), ``normal`` not inflated — and is
  an expected failure (strict): measured, schistocytes 20.3 % for 4.9 % placed. When the model is
  fixed it passes, and the strict mark makes the suite say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hematovision.cli import main
from hematovision.core.datasets import have_pbc
from hematovision.core.settings import load_settings

ROOT = load_settings().data_root
CHULA = ROOT / "data" / "chula_rbc"
MIX = {"schistocyte": 5.0, "target": 10.0, "spherocyte": 10.0}


@pytest.fixture(scope="module")
def mix_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """(manifest, report) of a 4,096² px slide with the red-cell mix, processed with ``--rbc``."""
    tmp = tmp_path_factory.mktemp("rbc_mix")
    slide = tmp / "mix.tiff"
    runner = CliRunner()
    mix = ",".join(f"{k}={v:g}" for k, v in MIX.items())
    args = ["--width", "4096", "--height", "4096", "--wbc", "220", "--seed", "5", "--rbc-mix", mix]
    r = runner.invoke(main, ["make-slide", str(slide), *args])
    assert r.exit_code == 0, r.output
    manifest = json.loads(slide.with_name(slide.name + ".manifest.json").read_text())
    r = runner.invoke(main, ["process", str(slide), "--out", str(tmp / "out"), "--rbc"])
    assert r.exit_code == 0, r.output
    return manifest, json.loads((tmp / "out" / "mix.tiff.report.json").read_text())


NEEDS = pytest.mark.needs((CHULA / "labels").is_dir() and have_pbc(ROOT), f"Chula RBC-12 and PBC images under {ROOT}")


@pytest.mark.slow
@NEEDS
def test_mix_slide_runs_end_to_end_on_held_out_cells(mix_run: tuple[dict, dict]) -> None:  # type: ignore[type-arg]
    manifest, report = mix_run
    placed = manifest["rbc_mix"]["placed_pct"]
    assert abs(placed["schistocyte"] - 5.0) < 0.5 and set(placed) == {*MIX, "normal"}
    rbc = [c for c in manifest["cells"] if c["kind"] == "rbc"]
    assert all(c["class"] in placed and "chula_rbc/images/" in c["source_file"] for c in rbc)
    split = json.loads((Path(load_settings().rbc_model_dir) / "split.json").read_text())
    test_fields = {f"chula_rbc/images/{n}.jpg" for n in split["test"]}
    assert all(c["source_file"].split("@")[0] in test_fields for c in rbc)  # held-out fields only
    m = report["rbc_morphology"]
    assert m["status"] in ("ok", "insufficient"), m["reason"]
    assert m["context"]["cells_classified"] == 1500 and m["context"]["fields"]["thick"] == 0
    assert m["n_classified"] + m["unidentified"] == 1500
    assert 6.0 <= m["size"]["median_diameter_um"] <= 9.5
    assert any(f["code"] == "SCHISTOCYTES" and f["severity"] == "critical" for f in report["flags"])


@pytest.mark.slow
@NEEDS
@pytest.mark.xfail(
    strict=True,
    reason="the red-cell model does not recognise normal cells on composed slides (schistocytes 20.3 % "
    "reported for 4.9 % placed; docs/validation.md, 'Red-cell morphology in the pipeline')",
)
def test_reported_percentages_within_tolerance(mix_run: tuple[dict, dict]) -> None:  # type: ignore[type-arg]
    manifest, report = mix_run
    placed = manifest["rbc_mix"]["placed_pct"]
    reported = {k: v["percent"] for k, v in report["rbc_morphology"]["findings"].items()}
    for cls, share in placed.items():
        if cls == "normal":
            assert reported["normal"] <= share, (cls, reported, placed)
        else:
            assert 0.5 * share <= reported[cls] <= share + 15.0, (cls, reported, placed)
