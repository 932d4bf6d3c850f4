"""cell reviews and slide sign-off

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 02:50:00

Written by hand and checked against ``alembic check`` on a scratch SQLite database: the
``cell_reviews`` table (who reclassified which cell, when, from which label to which) and the
slide's sign-off columns ``verified_by`` / ``verified_at``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cell_reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.String(length=32), nullable=False),
        sa.Column("from_label", sa.String(length=50), nullable=True),
        sa.Column("to_label", sa.String(length=50), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["cell_id"], ["cells.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["slide_id"], ["slides.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cell_reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cell_reviews_cell_id"), ["cell_id"], unique=False)
        batch_op.create_index("ix_cell_reviews_slide_at", ["slide_id", "at"], unique=False)

    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verified_by", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.drop_column("verified_at")
        batch_op.drop_column("verified_by")

    with op.batch_alter_table("cell_reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_cell_reviews_slide_at")
        batch_op.drop_index(batch_op.f("ix_cell_reviews_cell_id"))

    op.drop_table("cell_reviews")
