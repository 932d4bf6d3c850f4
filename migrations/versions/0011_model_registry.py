"""the model registry: model versions' provenance, validation and status; the promotion history

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 15:00:00

Written by hand and checked against the models (tests/unit/test_schema_drift.py):

- ``model_versions``: the model directory's path, the parent model (name:version and SHA-256), the
  training data manifest's SHA-256, the validation report (path and JSON), ``status``
  (registered/promoted/retired; existing rows, made by the workers for the models that labelled
  slides, are ``registered``), who registered and promoted it and when, and the reason; a partial
  unique index keeps at most one version ``promoted``.
- ``model_promotions``: the append-only history of promotions and rollbacks.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PROMOTED = sa.text("status = 'promoted'")


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("parent_name", sa.String(length=160), nullable=True))
        batch_op.add_column(sa.Column("parent_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("data_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("validation_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("validation", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("status", sa.String(length=20), server_default=sa.text("'registered'"), nullable=False)
        )
        batch_op.add_column(sa.Column("registered_by", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("registered_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("promoted_by", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("promoted_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.create_index(
            "uq_model_versions_one_promoted",
            ["status"],
            unique=True,
            sqlite_where=PROMOTED,
            postgresql_where=PROMOTED,
        )

    op.create_table(
        "model_promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("override_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["from_version_id"], ["model_versions.id"]),
        sa.ForeignKeyConstraint(["to_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_promotions_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_promotions_to_version_id"), ["to_version_id"], unique=False)


def downgrade() -> None:
    op.drop_table("model_promotions")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index("uq_model_versions_one_promoted")
        for column in (
            "reason",
            "promoted_at",
            "promoted_by",
            "registered_at",
            "registered_by",
            "status",
            "validation",
            "validation_path",
            "data_sha256",
            "parent_sha256",
            "parent_name",
            "path",
        ):
            batch_op.drop_column(column)
