"""Several worker processes on the same Redis queues and PostgreSQL database (issue 8): every slide is
processed once, no cell is stored twice, work is shared, CPU and GPU roles split the stages between
them, and urgent slides overtake at every stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _slides(real_cells: Path, folder: Path, n: int, seed: int) -> list[Path]:
    from hematovision.devtools.synthetic import make_slide

    out = []
    for i in range(n):
        p = folder / f"s{seed + i}.tiff"
        make_slide(p, real_cells, 1536, 1536, mpp=0.25, n_wbc=12, seed=seed + i, fmt="tiff")
        out.append(p)
    return out


def _duplicate_cells(db_url: str) -> tuple[int, int]:
    eng = create_engine(db_url)
    with eng.connect() as c:
        dup = c.execute(
            text(
                "SELECT count(*) FROM (SELECT slide_id, kind, x0, y0, x1, y1, count(*) n FROM cells "
                "GROUP BY slide_id, kind, x0, y0, x1, y1 HAVING count(*) > 1) d"
            )
        ).scalar()
        per_slide = c.execute(text("SELECT count(DISTINCT slide_id) FROM cells")).scalar()
    eng.dispose()
    return int(dup), int(per_slide)


def test_two_workers_share_the_queues(pg_stack_steady, real_cells: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    slides = _slides(real_cells, tmp_path, 6, 40)
    pg_stack = pg_stack_steady
    pg_stack.start_worker("w1")
    pg_stack.start_worker("w2")
    client = pg_stack.client()
    batch = client.submit(slides)
    final = client.wait_for_batch(batch["id"], timeout_s=600)
    assert final["states"] == {"succeeded": 6}, (final, pg_stack.log("w1"), pg_stack.log("w2"))
    # one attempt each: in particular both workers registering the model version at the same moment
    # must not fail a slide (the unique constraint decides; workers.job_store._model_version)
    assert all(j["attempts"] == 1 for j in final["jobs"]), [(j["attempts"], j["error"]) for j in final["jobs"]]
    jobs = [client.job(j["id"]) for j in final["jobs"]]
    assert all(
        {k: v["runs"] for k, v in j["stages"].items()} == {"prepare": 1, "classify": 1, "report": 1} for j in jobs
    )
    workers = {v["worker"] for j in jobs for v in j["stages"].values()}
    assert len(workers) == 2, workers  # hostname:pid of each worker process: both took a share
    assert _duplicate_cells(pg_stack.env["HEMATOVISION_DATABASE_URL"]) == (0, 6)


def test_cpu_and_gpu_workers_split_the_stages(pg_stack_steady, real_cells: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A CPU worker on the prepare and report queues, a 'GPU' worker on the classify queue only:
    no slide finishes without both, and each stage runs where its queue is served."""
    slides = _slides(real_cells, tmp_path, 4, 60)
    stack = pg_stack_steady
    client = stack.client()
    stack.env["HEMATOVISION_LOG_FORMAT"] = "json"  # for the workers started below
    cpu = stack.start_worker("cpu", stages="prepare,report")
    batch = client.submit(slides)
    # Without a classify worker the slides are prepared and then wait in the classify queue.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        depth = client._call("GET", "/api/v1/queues").json()["stages"]
        if depth["classify"]["waiting"] == 4:
            break
        time.sleep(1)
    assert depth["classify"]["waiting"] == 4 and depth["prepare"]["demand"] == 0, (depth, stack.log("cpu"))
    assert {client.job(j)["stage"] for j in batch["job_ids"]} == {"classify"}
    gpu = stack.start_worker("gpu", stages="classify")
    final = client.wait_for_batch(batch["id"], timeout_s=600)
    assert final["states"] == {"succeeded": 4}, (final, stack.log("cpu"), stack.log("gpu"))
    for job_id in batch["job_ids"]:
        stages = client.job(job_id)["stages"]
        assert stages["prepare"]["worker"].endswith(f":{cpu.pid}")
        assert stages["report"]["worker"].endswith(f":{cpu.pid}")
        assert stages["classify"]["worker"].endswith(f":{gpu.pid}")
        assert stages["classify"]["cells"] >= 10 and stages["classify"]["cells_per_s"] > 0
    assert _duplicate_cells(stack.env["HEMATOVISION_DATABASE_URL"]) == (0, 4)
    # Structured logs: each stage's outcome is one JSON line carrying the job, slide and stage.
    done = {}
    for name in ("cpu", "gpu"):
        for line in stack.log(name, tail_chars=10**7).splitlines():
            if line.startswith("{") and '"stage"' in line:
                rec = json.loads(line)
                if rec.get("slide_id") and rec["message"].endswith((": done", ": succeeded")):
                    done[(rec["job_id"], rec["stage"])] = (name, rec["slide_id"])
    for j in batch["jobs"]:
        assert done[(j["id"], "prepare")] == ("cpu", j["slide_id"])
        assert done[(j["id"], "classify")] == ("gpu", j["slide_id"])
        assert done[(j["id"], "report")] == ("cpu", j["slide_id"])


def test_urgent_slides_overtake_at_every_stage(pg_stack_steady, real_cells: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Priority 0 (most urgent) submitted after a routine batch is finished first by one worker."""
    slides = _slides(real_cells, tmp_path, 4, 80)
    stack = pg_stack_steady
    client = stack.client()
    routine = client.submit(slides[:3], priority=9)
    urgent = client.submit(slides[3:], priority=0)
    stack.start_worker("w")
    client.wait_for_batch(routine["id"], timeout_s=600)
    done = client.wait_for_batch(urgent["id"], timeout_s=60)
    assert done["states"] == {"succeeded": 1}, (done, stack.log("w"))
    urgent_end = client.job(urgent["job_ids"][0])["finished_at"]
    routine_starts = sorted(client.job(j)["started_at"] for j in routine["job_ids"])
    # One worker, all stages: the urgent slide's prepare went first, and its classify and report
    # stages then went ahead of the routine slides' waiting prepare stages, so it was done before
    # any routine slide started.
    assert urgent_end <= routine_starts[0], (urgent_end, routine_starts)
