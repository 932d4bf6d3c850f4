"""`hematovision process`: bad files end with one line each and a non-zero exit; good ones finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hematovision.cli import main

pytestmark = pytest.mark.slow  # analyses a slide with the Keras model


def test_process_reports_bad_files_and_finishes_good_ones(real_cells: Path, tmp_path: Path) -> None:
    from hematovision.devtools.sample_build import sample_root
    from hematovision.devtools.synthetic import make_slide

    good = tmp_path / "good.tiff"
    make_slide(good, real_cells, 1024, 1024, mpp=0.25, n_wbc=6, seed=3)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    text = tmp_path / "notes.svs"
    text.write_text("scanner log, not a slide\n" * 20)
    jpeg = next(sample_root().glob("lymphocyte/*.jpg")).read_bytes()  # a real JPEG, cut short below
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 3])
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        main, ["process", str(empty), str(good), str(text), str(truncated), "--mpp", "0.25", "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.output
    assert any("empty.svs" in e and "empty" in e for e in errors)
    assert any("notes.svs" in e and "text" in e for e in errors)
    assert any("cut.jpg" in e for e in errors)
    assert "3 of 4 slide(s) failed" in result.output
    report = json.loads((out / "good.tiff.report.json").read_text())
    assert report["counts"]["wbc"] >= 5 and report["model"]["version"]
    # the summary line gives the smear estimates with their unit, not raw red-cell/platelet object counts
    line = next(line for line in result.output.splitlines() if line.startswith("good.tiff:"))
    assert "x10^9/L" in line and "/100 RBC" in line and " RBC " + str(report["counts"]["rbc"]) not in line
    assert sorted(p.name for p in out.iterdir()) == ["good.tiff.report.json"]
