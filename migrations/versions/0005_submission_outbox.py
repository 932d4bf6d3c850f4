"""submission outbox, job heartbeats, idempotency keys scoped to the API key

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00

Written by hand and checked against the models (tests/unit/test_migrations.py):

- ``outbox``: one row per stage message to publish, written in the transaction that makes the job
  need it (the batch's rows at intake, the next stage when a stage finishes); a dispatcher publishes
  and marks it sent.
- ``jobs.heartbeat_at``: the last sign of life of a job's current stage (the reconciler re-queues
  running jobs whose heartbeat is too old).
- ``batches.idempotency_owner`` and ``batches.request_sha256``: an Idempotency-Key is unique per
  owner (the API key that used it), no longer across all clients, and remembers the submission it
  was used for. Keys stored before this revision get the owner ``legacy``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: SQLite keeps the 0001 unique constraint unnamed; batch mode names it with this convention.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _unique_name(columns: list[str]) -> str:
    """The name of the unique constraint of ``batches`` on ``columns`` (PostgreSQL names its own)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        for uc in sa.inspect(bind).get_unique_constraints("batches"):
            if uc["column_names"] == columns and uc["name"]:
                return str(uc["name"])
    return _NAMING["uq"] % {"table_name": "batches", "column_0_name": columns[0]}


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_sent_at"), ["sent_at"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))

    old = _unique_name(["idempotency_key"])
    with op.batch_alter_table("batches", schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.add_column(sa.Column("idempotency_owner", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch_op.drop_constraint(old, type_="unique")
        batch_op.create_unique_constraint("uq_batches_idempotency", ["idempotency_owner", "idempotency_key"])
    op.execute("UPDATE batches SET idempotency_owner = 'legacy' WHERE idempotency_key IS NOT NULL")


def downgrade() -> None:
    # A key may now be used by several API keys; the old global constraint keeps one of them.
    op.execute(
        "UPDATE batches SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND id NOT IN "
        "(SELECT MIN(b.id) FROM batches b WHERE b.idempotency_key IS NOT NULL GROUP BY b.idempotency_key)"
    )
    with op.batch_alter_table("batches", schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.drop_constraint("uq_batches_idempotency", type_="unique")
        batch_op.create_unique_constraint("uq_batches_idempotency_key", ["idempotency_key"])
        batch_op.drop_column("request_sha256")
        batch_op.drop_column("idempotency_owner")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_sent_at"))
        batch_op.drop_index(batch_op.f("ix_outbox_job_id"))
    op.drop_table("outbox")
