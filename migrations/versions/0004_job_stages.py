"""job stages: the stage a job is in and what each stage's last run did

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 04:40:00

Written by hand and checked with ``alembic check`` against the models: ``jobs.stage`` (prepare,
classify or report: the stage running or queued next) and ``jobs.stages`` (JSON: per stage, runs,
worker and seconds of its last run).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("stages", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("stages")
        batch_op.drop_column("stage")
