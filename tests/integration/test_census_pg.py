"""Census on PostgreSQL (foreign keys enforced, row locks real): "count all cells" replaces the slide's
ended job by a new census job and its outbox row in one transaction, the old results stay until the
census stores its own, and the census job's prepare stage is told to count every cell."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, select, text

from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.core.settings import Settings
from hematovision.service.slide_results import build_report
from hematovision.service.submission import NewSlide, add_batch
from hematovision.store.models import Cell, Job, OutboxMessage, Slide
from workers.job_store import claim_stage, store_analysis

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def pg_app(postgres_url: str, tmp_path: Path) -> Iterator[Flask]:
    from api.app import create_app, stop_app
    from hematovision.store.migrate import upgrade

    eng = create_engine(postgres_url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    (tmp_path / "import").mkdir()
    settings = Settings(
        var_dir=tmp_path / "var", database_url=postgres_url, broker_url="", import_root=tmp_path / "import"
    )
    upgrade(settings)
    app = create_app(settings)
    yield app
    stop_app(app)


def test_count_all_cells_on_postgres(pg_app: Flask) -> None:
    from hematovision.store.apikeys import create_key

    factory = pg_app.extensions["hv_sessions"]
    with factory() as s, s.begin():
        _, (job,) = add_batch(s, [NewSlide(filename="s.tiff", path="/nonexistent/s.tiff", mpp=0.25)], queue=True)
        old_job, slide_id = job.id, job.slide_id
        key = create_key(s, "middleware", "review")
    assert claim_stage(factory, old_job, "prepare").census is False
    cells = [CellResult("wbc", (10 * i, 10, 10 * i + 8, 18), 0.9, "neutrophil", 0.9) for i in range(3)]
    analysis = SlideAnalysis(
        mpp=0.25, width=64, height=64, model_name="m", model_version="1", classes=["neutrophil"], cells=cells
    )
    assert store_analysis(factory, old_job, analysis, build_report(analysis, slide_id=slide_id))

    client = pg_app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = key
    r = client.post(f"/api/v1/slides/{slide_id}/census")
    assert r.status_code == 202, r.get_json()
    new_job = r.get_json()["id"]
    with factory() as s:
        assert s.get(Job, old_job) is None
        assert s.get(Slide, slide_id).job.id == new_job
        assert s.get(Slide, slide_id).n_wbc == 3
        assert len(s.scalars(select(Cell).where(Cell.slide_id == slide_id)).all()) == 3
        assert s.scalars(select(OutboxMessage.stage).where(OutboxMessage.job_id == new_job)).all() == ["prepare"]
    assert client.post(f"/api/v1/slides/{slide_id}/census").status_code == 409
    ticket = claim_stage(factory, new_job, "prepare")
    assert ticket is not None and ticket.census is True
