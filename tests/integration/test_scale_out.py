"""Two worker processes on the same Redis queue and PostgreSQL database (issue 8): every slide is
processed once, no cell is stored twice, and both workers take a share of the work."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_share_the_queue(pg_stack_steady, real_data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.synthetic import make_slide

    slides = []
    for i in range(6):
        p = tmp_path / f"s{i}.tiff"
        make_slide(p, real_data, 1536, 1536, mpp=0.25, n_wbc=12, seed=40 + i, fmt="tiff")
        slides.append(p)
    pg_stack = pg_stack_steady
    pg_stack.start_worker("w1")
    pg_stack.start_worker("w2")
    client = pg_stack.client()
    batch = client.submit(slides)
    final = client.wait_for_batch(batch["id"], timeout_s=600)
    assert final["states"] == {"succeeded": 6}, (final, pg_stack.log("w1"), pg_stack.log("w2"))
    # one attempt each: in particular both workers registering the model version at the same moment
    # must not fail a slide (the unique constraint decides; workers.processing._model_version)
    assert all(j["attempts"] == 1 for j in final["jobs"]), [(j["attempts"], j["error"]) for j in final["jobs"]]
    eng = create_engine(pg_stack.env["HEMATOVISION_DATABASE_URL"])
    with eng.connect() as c:
        workers = {r[0] for r in c.execute(text("SELECT worker FROM jobs"))}
        dup = c.execute(text("SELECT count(*) FROM (SELECT slide_id, kind, x0, y0, x1, y1, count(*) n FROM cells "
                             "GROUP BY slide_id, kind, x0, y0, x1, y1 HAVING count(*) > 1) d")).scalar()
        per_slide = c.execute(text("SELECT count(DISTINCT slide_id) FROM cells")).scalar()
    eng.dispose()
    assert len(workers) == 2, workers  # hostname:pid of each worker process
    assert dup == 0
    assert per_slide == 6
