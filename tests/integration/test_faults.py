"""Faults: a worker killed mid-slide, a slide that always crashes, cancellation of a running job.

Each scenario runs once per test run (one trial each; the kill is timed by the job's progress).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_job(client, job_id: str, pred, timeout_s: float = 600) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.job(job_id)
        if pred(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stuck: {job}")
        time.sleep(0.3)


def cells(db_url: str, slide_id: str) -> list[tuple]:
    eng = create_engine(db_url)
    with eng.connect() as c:
        rows = c.execute(
            text("SELECT kind, x0, y0, x1, y1, label FROM cells WHERE slide_id = :s ORDER BY kind, x0, y0, x1, y1"),
            {"s": slide_id},
        ).all()
    eng.dispose()
    return [tuple(r) for r in rows]


@pytest.fixture(scope="module")
def slide(tmp_path_factory, real_cells: Path) -> Path:  # type: ignore[no-untyped-def]
    from hematovision.devtools.synthetic import make_slide

    out = tmp_path_factory.mktemp("faults") / "slide.tiff"
    make_slide(out, real_cells, 3072, 3072, mpp=0.25, n_wbc=60, seed=11, fmt="tiff")
    return out


def test_worker_killed_mid_slide_completes_exactly_once(pg_stack, slide: Path) -> None:  # type: ignore[no-untyped-def]
    client = pg_stack.client()
    db_url = pg_stack.env["HEMATOVISION_DATABASE_URL"]
    pg_stack.start_worker("w1")
    job = client.submit([slide])["jobs"][0]
    wait_job(client, job["id"], lambda j: j["state"] == "running" and j["progress"] >= 0.1)
    pg_stack.stop("w1", signal.SIGKILL)
    assert client.job(job["id"])["state"] == "running"
    assert cells(db_url, job["slide_id"]) == []  # nothing half-written
    pg_stack.start_worker("w2")
    done = wait_job(client, job["id"], lambda j: j["state"] in ("succeeded", "failed"))
    assert done["state"] == "succeeded", (done, pg_stack.log("w2"))
    assert done["attempts"] >= 2
    disturbed = cells(db_url, job["slide_id"])
    # An undisturbed run of the same slide stores the same cells, counts and labels.
    ref = client.submit([slide])["jobs"][0]
    ref_done = wait_job(client, ref["id"], lambda j: j["state"] in ("succeeded", "failed"))
    assert ref_done["state"] == "succeeded" and ref_done["attempts"] == 1
    assert disturbed == cells(db_url, ref["slide_id"])
    a, b = client.report(job["slide_id"]), client.report(ref["slide_id"])
    assert a["counts"] == b["counts"] and a["differential"] == b["differential"]


def test_always_crashing_slide_fails_after_retries_and_worker_keeps_serving(
    pg_stack, slide: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import tifffile

    # A valid pyramid whose level-0 tiles far from the centre hold garbage JPEG data: it passes
    # intake validation (lowest level and centre decode) and fails in the pipeline every time.
    bad = tmp_path / "corrupt-tiles.tiff"
    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as tf:
        page = tf.pages[0]
        for off, n in list(zip(page.dataoffsets, page.databytecounts, strict=True))[:3]:
            data[off + 20 : off + n] = b"\x00\xff" * ((n - 20) // 2) + b"\x00" * ((n - 20) % 2)
    bad.write_bytes(bytes(data))
    client = pg_stack.client()
    pg_stack.start_worker("w")
    batch = client.submit([bad, slide])
    final = client.wait_for_batch(batch["id"], timeout_s=600)
    by_name = {j["filename"]: j for j in final["jobs"]}
    crashed, good = by_name["corrupt-tiles.tiff"], by_name["slide.tiff"]
    assert crashed["state"] == "failed" and crashed["error"], crashed
    assert crashed["attempts"] == 3  # first try + HEMATOVISION_TASK_MAX_RETRIES=2
    assert good["state"] == "succeeded"
    assert pg_stack.procs["w"].poll() is None  # the worker is still serving


def test_cancel_a_running_job(pg_stack, slide: Path) -> None:  # type: ignore[no-untyped-def]
    client = pg_stack.client()
    pg_stack.start_worker("w")
    job = client.submit([slide])["jobs"][0]
    wait_job(client, job["id"], lambda j: j["state"] == "running" and j["progress"] > 0.05)
    assert client.cancel(job["id"])["state"] == "cancelled"
    time.sleep(5)
    after = client.job(job["id"])
    assert after["state"] == "cancelled"
    assert cells(pg_stack.env["HEMATOVISION_DATABASE_URL"], job["slide_id"]) == []
    # the worker moves on to the next slide
    nxt = client.submit([slide])["jobs"][0]
    assert wait_job(client, nxt["id"], lambda j: j["state"] in ("succeeded", "failed"))["state"] == "succeeded"
