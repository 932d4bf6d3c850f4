"""The whole path, on real components: HTTP upload -> queue -> worker process -> results DB -> report.

Runs twice: on PostgreSQL + Redis (127.0.0.1) and on the embedded defaults (SQLite + filesystem
queue). The slide is generated from real PBC cells with a ground-truth manifest.

Tolerances (stated here, checked below):
- white cells found: within 10 % of the white cells placed (erythroblasts and platelet-class cells
  are not white cells and are excluded on both sides);
- the low-confidence bucket (``unidentified``) holds at most 30 % of the white cells;
- differential of the identified cells (renormalised): every class within 15 percentage points of
  the truth, and the total variation distance between the two distributions at most 0.20 (the slide
  is scanned at 0.25 µm/px, three times coarser than the PBC crops the model was trained on).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from hematovision.core.flags import NON_WBC_CLASSES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WBC_TOLERANCE = 0.10
CLASS_POINTS = 15.0
MAX_TVD = 0.20
MAX_UNIDENTIFIED = 30.0


def truth_differential(manifest: dict) -> tuple[int, dict[str, float]]:
    labels = [c["class"] for c in manifest["cells"] if c["kind"] == "wbc" and c["class"] not in NON_WBC_CLASSES]
    n = len(labels)
    return n, {k: 100.0 * v / n for k, v in Counter(labels).items()}


def test_generated_slide_over_http_matches_ground_truth(stack, real_cells: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.devtools.synthetic import make_slide

    slide = tmp_path / "slide.tiff"
    manifest = make_slide(slide, real_cells, 3072, 3072, mpp=0.25, n_wbc=60, seed=7, fmt="tiff")
    client = stack.client()
    batch = client.submit([slide], name="integration")
    assert len(batch["job_ids"]) == 1
    assert batch["notices"] == []  # JPEG 85 at 0.25 µm/px: storage the default model was validated on
    final = client.wait_for_batch(batch["id"], timeout_s=900, poll_s=0.5)
    assert final["states"] == {"succeeded": 1}, (final, stack.log("worker"))
    job = final["jobs"][0]
    assert job["progress"] == 1.0 and job["duration_s"] > 0
    report = client.report(job["slide_id"])
    n_true, truth = truth_differential(manifest)
    n_found = report["counts"]["wbc_seen"]  # classified + unidentified (the differential's n is classified only)
    assert abs(n_found - n_true) <= WBC_TOLERANCE * n_true, (n_found, n_true)
    assert report["unidentified_percent"] <= MAX_UNIDENTIFIED, report["counts"]
    assert "unidentified" not in report["differential"]
    named = {k: v["count"] for k, v in report["differential"].items()}
    found = {k: 100.0 * v / sum(named.values()) for k, v in named.items()}
    for cls in set(truth) | set(found):
        assert abs(found.get(cls, 0.0) - truth.get(cls, 0.0)) <= CLASS_POINTS, (cls, found, truth)
    tvd = 0.5 * sum(abs(found.get(c, 0.0) - truth.get(c, 0.0)) for c in set(truth) | set(found)) / 100
    assert tvd <= MAX_TVD, (tvd, found, truth)
    assert report["model"]["name"] and report["model"]["version"]
    for entry in report["differential"].values():
        lo, hi = entry["ci95"]
        assert lo <= entry["percent"] <= hi
    csv_text = client.report(job["slide_id"], "csv")
    assert "class,count,percent,ci95_low,ci95_high" in csv_text
    # 60 white cells < 200: the differential is marked insufficient, and the flag report lists it.
    assert report["differential_sufficient"] is False
    flagged = client.flags(batch=batch["id"])
    assert flagged["count"] == 1 and flagged["slides"][0]["slide_id"] == job["slide_id"]


def test_the_intake_notice_is_the_flag_the_report_then_carries(stack, real_cells: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A 20x slide stored as JPEG 85 (no JPEG validated there for the default model): the 202 says so
    at submission, the slide is analysed all the same, and its report carries STORAGE_UNVALIDATED with
    the same evidence."""
    from hematovision.devtools.synthetic import make_slide

    slide = tmp_path / "x20.tiff"
    make_slide(slide, real_cells, 1536, 1536, mpp=0.5, n_wbc=6, seed=11, fmt="tiff", quality=85)
    client = stack.client()
    batch = client.submit([slide], name="storage notice")
    (notice,) = batch["notices"]
    assert notice["slide"] == "x20.tiff" and notice["outcome"] == "outside" and notice["code"] == "STORAGE_UNVALIDATED"
    final = client.wait_for_batch(batch["id"], timeout_s=900, poll_s=0.5)
    assert final["states"] == {"succeeded": 1}, (final, stack.log("worker"))
    report = client.report(final["jobs"][0]["slide_id"])
    (flag,) = [f for f in report["flags"] if f["code"] == "STORAGE_UNVALIDATED"]
    assert flag["severity"] == "critical" and report["differential_valid"] is False
    assert flag["evidence"] == notice["evidence"]
    assert report["model"]["version"] in notice["model"]


def test_garbage_is_rejected_with_a_clear_message(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli.api_client import ApiClientError

    client = stack.client()
    junk = tmp_path / "scan.svs"
    junk.write_text("<html>not a slide</html>")
    with pytest.raises(ApiClientError, match="422 invalid_slide: scan.svs"):
        client.submit([junk], mpp=0.25)
    with pytest.raises(ApiClientError, match="400 paths_disabled"):
        client.submit([], ["/data/x.svs"])
    with pytest.raises(ApiClientError, match="400 no_slides"):
        client.submit([])
