"""The Alembic revisions make exactly the schema the models describe (``alembic check``'s comparison),
and revision 0005 keeps the Idempotency-Keys stored before it."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from hematovision.store.migrate import alembic_config, upgrade
from hematovision.store.models import Base


def test_migrated_schema_matches_the_models(settings) -> None:  # type: ignore[no-untyped-def]
    upgrade(settings)
    engine = create_engine(settings.sqlalchemy_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_0005_scopes_old_keys_and_downgrades(settings) -> None:  # type: ignore[no-untyped-def]
    upgrade(settings, "0004")
    engine = create_engine(settings.sqlalchemy_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO batches (id, priority, idempotency_key, created_at) VALUES ('b1', 5, 'k1', '2026-01-01')")
        )
    upgrade(settings)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT idempotency_owner FROM batches")).scalar_one() == "legacy"
        # Two API keys may now use the same key.
        conn.execute(
            text(
                "INSERT INTO batches (id, priority, idempotency_key, idempotency_owner, created_at) "
                "VALUES ('b2', 5, 'k1', 'key:1', '2026-01-02')"
            )
        )
    command.downgrade(alembic_config(settings), "0004")
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT idempotency_key FROM batches ORDER BY id")).scalars().all()
    assert keys == ["k1", None]
    engine.dispose()


def test_0010_two_signatures_per_slide_and_back(settings) -> None:  # type: ignore[no-untyped-def]
    """0010 lets a slide hold a first signature and a pathologist's (and marks signed slides final);
    its downgrade keeps the latest signature, as the old one-per-slide schema holds one."""
    upgrade(settings, "0009")
    engine = create_engine(settings.sqlalchemy_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO batches (id, priority, created_at) VALUES ('b1', 5, '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO slides (id, batch_id, filename, path, created_at, verified_by, verified_at) "
                "VALUES ('s1', 'b1', 'a.tiff', '/x', '2026-01-01', 'U One', '2026-01-02')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO users (id, username, full_name, role, password_hash, created_at, failed_logins) "
                "VALUES (1, 'u1', 'U One', 'pathologist', 'x', '2026-01-01', 0)"
            )
        )
    upgrade(settings)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT review_state, report_version FROM slides")).one() == ("final", 1)
        conn.execute(
            text(
                "INSERT INTO signatures (slide_id, user_id, username, full_name, role, meaning, signed_at) "
                "VALUES ('s1', 1, 'u1', 'U One', 'technologist', 'first', '2026-01-02'), "
                "('s1', 1, 'u1', 'U One', 'pathologist', 'second', '2026-01-03')"
            )
        )
    command.downgrade(alembic_config(settings), "0009")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT meaning FROM signatures")).scalars().all() == ["second"]
    upgrade(settings)
    engine.dispose()
