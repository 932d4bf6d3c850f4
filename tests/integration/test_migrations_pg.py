"""The revision chain on PostgreSQL: 0001 → … → 0004 → 0005 (outbox) → 0006 (people) → 0007 (wide
cell ids), one head; a 0004 database with data is upgraded to a schema that matches the models
(0005 keeps old Idempotency-Keys as ``legacy``, 0006 cuts key fragments out of actors), downgraded
to 0004 and upgraded again (the SQLite side: tests/unit/test_migrations.py, test_schema_drift.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from hematovision.core.settings import Settings
from hematovision.store.migrate import alembic_config
from hematovision.store.models import Base


def test_the_revision_chain_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", database_url=postgres_url, broker_url="")
    settings.ensure_dirs()
    cfg = alembic_config(settings)
    script = ScriptDirectory.from_config(cfg)
    assert script.get_heads() == ["0011"]
    chain = [r.revision for r in script.walk_revisions("base", "heads")]
    assert chain == ["0011", "0010", "0009", "0007", "0006", "0005", "0004", "0003", "0002", "0001"]

    eng = create_engine(postgres_url)
    with eng.begin() as c:  # the session's database may hold other tests' rows: start from nothing
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))

    def drift() -> list[Any]:
        with eng.connect() as c:
            return compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)

    try:
        command.upgrade(cfg, "0004")
        with eng.begin() as c:
            c.execute(
                text("INSERT INTO batches (id, priority, idempotency_key, created_at) VALUES ('b1', 5, 'k1', now())")
            )
            c.execute(
                text(
                    "INSERT INTO audit_log (at, actor, action, resource, status) "
                    "VALUES (now(), 'key:lis:hv_1234567', 'submit', 'batch:b1', 202)"
                )
            )
            # 0009: a plausible per-litre WBC is carried over in 10^9/L; a unit error (25 per litre) is not.
            c.execute(
                text(
                    "INSERT INTO slides (id, batch_id, filename, path, created_at, wbc_per_l) VALUES "
                    "('s1', 'b1', 'a.tiff', '/x', now(), 7.5e9), ('s2', 'b1', 'b.tiff', '/y', now(), 25)"
                )
            )
        command.upgrade(cfg, "head")
        with eng.begin() as c:
            wbc = dict(c.execute(text("SELECT id, wbc_10e9_per_l FROM slides")).all())
            assert wbc == {"s1": 7.5, "s2": None}
        assert drift() == []
        with eng.begin() as c:
            assert c.execute(text("SELECT idempotency_owner FROM batches")).scalar_one() == "legacy"
            assert c.execute(text("SELECT actor, outcome FROM audit_log")).one() == ("key:lis", "allowed")
            # Another API key may use the same Idempotency-Key now.
            c.execute(
                text(
                    "INSERT INTO batches (id, priority, idempotency_key, idempotency_owner, created_at) "
                    "VALUES ('b2', 5, 'k1', 'key:1', now())"
                )
            )
        # 0010: two signatures per slide (a first one and a pathologist's); a downgrade keeps the latest.
        with eng.begin() as c:
            c.execute(
                text(
                    "INSERT INTO users (id, username, full_name, role, password_hash, created_at, failed_logins) "
                    "VALUES (1, 'u1', 'U One', 'pathologist', 'x', now(), 0)"
                )
            )
            c.execute(
                text(
                    "INSERT INTO signatures (slide_id, user_id, username, full_name, role, meaning, signed_at) "
                    "VALUES ('s1', 1, 'u1', 'U One', 'technologist', 'first', now()), "
                    "('s1', 1, 'u1', 'U One', 'pathologist', 'second', now())"
                )
            )
        command.downgrade(cfg, "0009")
        with eng.begin() as c:
            assert c.execute(text("SELECT meaning FROM signatures")).scalars().all() == ["second"]
        command.upgrade(cfg, "head")
        assert drift() == []
        command.downgrade(cfg, "0004")
        with eng.connect() as c:
            keys = c.execute(text("SELECT idempotency_key FROM batches ORDER BY id")).scalars().all()
            tables = set(c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        assert keys == ["k1", None]
        assert not {"outbox", "users", "signatures", "lis_outbox", "model_promotions"} & tables
        command.upgrade(cfg, "head")
        assert drift() == []
    finally:
        eng.dispose()
