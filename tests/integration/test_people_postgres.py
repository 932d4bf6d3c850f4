"""People, signatures and the audit log on PostgreSQL: the schema matches the models, a person
reclassifies and signs off in a session, and an audit insert the database refuses fails the change."""

from __future__ import annotations

import re
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.core.settings import Settings
from hematovision.service.slide_results import build_report
from hematovision.service.submission import NewSlide, add_batch
from hematovision.store.migrate import upgrade
from hematovision.store.models import AuditEntry, Base, Cell
from hematovision.store.users import create_user
from workers.job_store import store_analysis

PASSWORD = "postgres person pw"


def test_people_and_signatures_on_postgresql(postgres_url: str, tmp_path: Path, login_form) -> None:  # type: ignore[no-untyped-def]
    from api.app import create_app, stop_app

    settings = Settings(var_dir=tmp_path / "var", database_url=postgres_url, broker_url="")
    upgrade(settings)
    app = create_app(settings)
    engine, factory = app.extensions["hv_engine"], app.extensions["hv_sessions"]
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
        with factory() as s, s.begin():
            create_user(s, "pat", "Pat O'Logist", "pathologist", PASSWORD)
            _, (job,) = add_batch(
                s, [NewSlide(filename="a.tiff", path="/nonexistent/a.tiff", mpp=0.25)], name="pg", queue=False
            )
            job.state = "running"
            job_id, slide_id = job.id, job.slide_id
        cells = [CellResult("wbc", (10 * i, 0, 10 * i + 8, 8), 0.9, "neutrophil", 0.95) for i in range(4)]
        cells[0].label = None
        analysis = SlideAnalysis(
            mpp=0.25, width=64, height=16, model_name="m", model_version="1", classes=["neutrophil"], cells=cells
        )
        assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
        with factory() as s:
            open_cell = s.execute(select(Cell.id).where(Cell.slide_id == slide_id, Cell.label.is_(None))).scalar_one()

        c = app.test_client()
        assert login_form(c, "pat", PASSWORD).status_code == 302
        token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/ui/").get_data(as_text=True)).group(1)  # type: ignore[union-attr]
        headers = {"X-CSRFToken": token}

        # The database refuses audit inserts: the reclassification is not kept.
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_log ADD CONSTRAINT audit_closed CHECK (false) NOT VALID"))
        r = c.post(f"/api/v1/cells/{open_cell}/label", json={"label": "neutrophil"}, headers=headers)
        assert r.status_code == 500 and r.json["error"]["code"] == "audit_failed"
        with factory() as s:
            assert s.get(Cell, open_cell).label is None
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_log DROP CONSTRAINT audit_closed"))

        r = c.post(f"/api/v1/cells/{open_cell}/label", json={"label": "neutrophil"}, headers=headers)
        assert r.status_code == 200, r.json
        r = c.post(f"/api/v1/slides/{slide_id}/signoff", json={"password": "wrong password"}, headers=headers)
        assert r.status_code == 403
        codes = [f["code"] for f in c.get(f"/api/v1/slides/{slide_id}/report").json["flags"]]
        for code in dict.fromkeys(codes):
            r = c.post(f"/api/v1/slides/{slide_id}/flags/{code}/ack", json={"comment": "seen"}, headers=headers)
            assert r.status_code == 201, r.json
        body = {"password": PASSWORD, "reason": "a four-cell test slide"}
        r = c.post(f"/api/v1/slides/{slide_id}/signoff", json=body, headers=headers)
        assert r.status_code == 200, r.json
        report = c.get(f"/api/v1/slides/{slide_id}/report").json
        assert report["verified_by"] == "Pat O'Logist" and report["verified_by_id"] == "pat"
        hl7 = c.get(f"/api/v1/slides/{slide_id}/report?format=hl7").get_data(as_text=True)
        assert "|pat^O'Logist^Pat|" in hl7
        with factory() as s:
            rows = s.execute(select(AuditEntry).where(AuditEntry.slide_id == slide_id).order_by(AuditEntry.id))
            got = [(e.actor, e.action, e.outcome) for e in rows.scalars()]
        assert got == [
            ("user:pat", "reclassify", "allowed"),
            ("user:pat", "signoff", "refused"),
            ("user:pat", "read", "allowed"),
            *[("user:pat", "acknowledge", "allowed")] * len(set(codes)),
            ("user:pat", "signoff", "allowed"),
            ("user:pat", "read", "allowed"),
            ("user:pat", "export", "allowed"),
        ]
    finally:
        stop_app(app)
