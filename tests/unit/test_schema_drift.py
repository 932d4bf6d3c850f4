"""The Alembic revisions make exactly the schema the models describe (``alembic check``'s comparison),
and revision 0006 cuts the key fragments earlier versions wrote into actors."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from hematovision.core.settings import Settings
from hematovision.store.db import make_engine
from hematovision.store.migrate import upgrade
from hematovision.store.models import Base


def test_models_match_the_migrations(settings: Settings) -> None:
    upgrade(settings)
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        engine.dispose()


def test_0006_cuts_key_fragments_out_of_old_records(settings: Settings) -> None:
    upgrade(settings, "0004")
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO batches (id, priority, created_at) VALUES ('b1', 5, '2026-11-27')"))
            conn.execute(
                text(
                    "INSERT INTO slides (id, batch_id, filename, path, created_at, verified_by, verified_at, report) "
                    "VALUES ('s1', 'b1', 'a.tiff', '/x', '2026-11-27', 'key:night:shift:hv_AbC-d_9', "
                    "'2026-11-27', :report)"
                ),
                {"report": '{"slide_id": "s1", "verified_by": "key:night:shift:hv_AbC-d_9"}'},
            )
            conn.execute(
                text(
                    "INSERT INTO cells (id, slide_id, kind, x0, y0, x1, y1, score) "
                    "VALUES (1, 's1', 'wbc', 0, 0, 1, 1, 0.9)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO cell_reviews (cell_id, slide_id, to_label, actor, at) "
                    "VALUES (1, 's1', 'monocyte', 'key:night:shift:hv_AbC-d_9', '2026-11-27')"
                )
            )
            for actor, status in [("key:lis:hv_1234567", 202), ("anonymous", 401), ("key:x:hv_zzzzzzz", 409)]:
                conn.execute(
                    text(
                        "INSERT INTO audit_log (at, actor, action, resource, status) "
                        "VALUES ('2026-11-27', :actor, 'read', '/r', :status)"
                    ),
                    {"actor": actor, "status": status},
                )
        upgrade(settings)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT actor, outcome FROM audit_log ORDER BY id")).all() == [
                ("key:lis", "allowed"),
                ("anonymous", "refused"),
                ("key:x", "failed"),
            ]
            assert conn.execute(text("SELECT actor FROM cell_reviews")).scalar_one() == "key:night:shift"
            verified_by, report = conn.execute(text("SELECT verified_by, report FROM slides")).one()
            assert verified_by == "key:night:shift" and "hv_" not in report and "key:night:shift" in report
    finally:
        engine.dispose()
