"""the review workflow: flag acknowledgements, comments, two signatures, amended report versions

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 15:00:00

Written by hand and checked against the models (tests/unit/test_schema_drift.py):

- ``slides.review_state`` (None open, ``awaiting_pathologist``, ``final``) and ``slides.report_version``
  (1, one more per amendment); existing signed-off slides become ``final``.
- ``signatures``: no longer one per slide (a first signature and a pathologist's, and one set per
  report version): the unique constraint on ``slide_id`` becomes a plain index; ``reason`` (why an
  insufficient differential was released) and ``report_version``.
- ``flag_acks``: a reviewer's acknowledgement of each raised flag, with a comment.
- ``review_comments``: free-text comments on a slide or a cell.
- ``report_versions``: released reports superseded by an amendment, kept unchanged, with who
  amended them, when and why.

Downgrade keeps the latest signature of each slide (the old schema holds one) and drops the rest,
the acknowledgements, comments and superseded versions.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: Names the unnamed unique constraint of ``signatures.slide_id`` when SQLite's table is rebuilt.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _unique_name() -> str:
    return "signatures_slide_id_key" if op.get_bind().dialect.name == "postgresql" else "uq_signatures_slide_id"


def upgrade() -> None:
    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review_state", sa.String(length=30), nullable=True))
        batch_op.add_column(sa.Column("report_version", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.execute("UPDATE slides SET review_state = 'final' WHERE verified_at IS NOT NULL")

    with op.batch_alter_table("signatures", schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.drop_constraint(_unique_name(), type_="unique")
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("report_version", sa.Integer(), server_default=sa.text("1"), nullable=False))
        batch_op.create_index(batch_op.f("ix_signatures_slide_id"), ["slide_id"], unique=False)

    op.create_table(
        "flag_acks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.String(length=32), nullable=False),
        sa.Column("report_version", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=50), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("full_name", sa.String(length=100), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["slide_id"], ["slides.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flag_acks", schema=None) as batch_op:
        batch_op.create_index("ix_flag_acks_slide_version", ["slide_id", "report_version"], unique=False)

    wide_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "review_comments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.String(length=32), nullable=False),
        sa.Column("cell_id", wide_id, nullable=True),
        sa.Column("report_version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("full_name", sa.String(length=100), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["cell_id"], ["cells.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["slide_id"], ["slides.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("review_comments", schema=None) as batch_op:
        batch_op.create_index("ix_review_comments_slide_at", ["slide_id", "at"], unique=False)

    op.create_table(
        "report_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("result_status", sa.String(length=30), nullable=False),
        sa.Column("verified_by", sa.String(length=100), nullable=True),
        sa.Column("verified_at", sa.DateTime(), nullable=True),
        sa.Column("amended_by", sa.String(length=100), nullable=False),
        sa.Column("amended_at", sa.DateTime(), nullable=False),
        sa.Column("amend_reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["slide_id"], ["slides.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slide_id", "version", name="uq_report_versions_slide_version"),
    )


def downgrade() -> None:
    op.drop_table("report_versions")
    with op.batch_alter_table("review_comments", schema=None) as batch_op:
        batch_op.drop_index("ix_review_comments_slide_at")
    op.drop_table("review_comments")
    with op.batch_alter_table("flag_acks", schema=None) as batch_op:
        batch_op.drop_index("ix_flag_acks_slide_version")
    op.drop_table("flag_acks")

    op.execute("DELETE FROM signatures WHERE id NOT IN (SELECT MAX(s2.id) FROM signatures s2 GROUP BY s2.slide_id)")
    with op.batch_alter_table("signatures", schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signatures_slide_id"))
        batch_op.drop_column("report_version")
        batch_op.drop_column("reason")
        batch_op.create_unique_constraint(_unique_name(), ["slide_id"])

    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.drop_column("report_version")
        batch_op.drop_column("review_state")
