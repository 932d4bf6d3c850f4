"""people, electronic signatures and a fuller audit log

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00

Written by hand and checked against the models by ``tests/unit/test_schema_drift.py`` (Alembic's
``compare_metadata`` after an upgrade):

- ``users``: the people who log in to the review UI (username, full name, role, scrypt password
  hash, disabled time, failed-login counter and lock);
- ``signatures``: one electronic signature per signed-off slide (who, when, meaning);
- ``audit_log``: ``outcome`` (allowed / refused / failed), ``slide_id`` (a slide's history, indexed
  with the time) and ``detail`` (JSON).

Data: earlier versions wrote ``key:<name>:<first 10 characters of the key>`` as the actor of audit
entries, reclassifications and sign-offs (and into the slide's report). Part of a secret does not
belong in a record that is printed and exported, so the key part is cut off here, leaving
``key:<name>``. Existing audit entries get ``refused`` for 401/403 and ``failed`` for other errors.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: ``key:<name>:hv_XXXXXXX``: the old actor, with the key's first 10 characters at the end.
_OLD_KEY_ACTOR = re.compile(r"^(key:.*):hv_[A-Za-z0-9_-]{7}$")


def _scrub(actor: Any) -> Any:
    if not isinstance(actor, str):
        return actor
    m = _OLD_KEY_ACTOR.match(actor)
    return m.group(1) if m else actor


def _scrub_key_prefixes() -> None:
    bind = op.get_bind()
    meta = sa.MetaData()
    audit = sa.Table("audit_log", meta, sa.Column("id", sa.Integer), sa.Column("actor", sa.String(100)))
    reviews = sa.Table("cell_reviews", meta, sa.Column("id", sa.Integer), sa.Column("actor", sa.String(100)))
    slides = sa.Table(
        "slides",
        meta,
        sa.Column("id", sa.String(32)),
        sa.Column("verified_by", sa.String(100)),
        sa.Column("report", sa.JSON),
    )
    for table in (audit, reviews):
        rows = bind.execute(sa.select(table.c.id, table.c.actor).where(table.c.actor.like("key:%"))).all()
        for row_id, actor in rows:
            if _scrub(actor) != actor:
                bind.execute(table.update().where(table.c.id == row_id).values(actor=_scrub(actor)))
    rows = bind.execute(
        sa.select(slides.c.id, slides.c.verified_by, slides.c.report).where(slides.c.verified_by.like("key:%"))
    ).all()
    for slide_id, verified_by, report in rows:
        values: dict[str, Any] = {"verified_by": _scrub(verified_by)}
        if isinstance(report, dict) and "verified_by" in report:
            values["report"] = {**report, "verified_by": _scrub(report["verified_by"])}
        bind.execute(slides.update().where(slides.c.id == slide_id).values(**values))


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("full_name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.Column("failed_logins", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("full_name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("meaning", sa.String(length=200), nullable=False),
        sa.Column("signed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["slide_id"], ["slides.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slide_id"),
    )
    with op.batch_alter_table("signatures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signatures_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("outcome", sa.String(length=20), server_default=sa.text("'allowed'"), nullable=False)
        )
        batch_op.add_column(sa.Column("slide_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("detail", sa.JSON(), nullable=True))
        batch_op.create_index("ix_audit_log_slide_at", ["slide_id", "at"], unique=False)

    audit = sa.table("audit_log", sa.column("status", sa.Integer), sa.column("outcome", sa.String))
    op.execute(audit.update().where(audit.c.status.in_([401, 403])).values(outcome="refused"))
    op.execute(audit.update().where(audit.c.status >= 400, audit.c.status.not_in([401, 403])).values(outcome="failed"))
    _scrub_key_prefixes()


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_slide_at")
        batch_op.drop_column("detail")
        batch_op.drop_column("slide_id")
        batch_op.drop_column("outcome")

    with op.batch_alter_table("signatures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signatures_user_id"))

    op.drop_table("signatures")
    op.drop_table("users")
