"""patient and order per slide; the LIS outbox

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01 13:30:00

Written by hand and checked against the models (tests/unit/test_schema_drift.py):

- ``slides``: accession (indexed: slides are found by it), patient id and its assigning authority,
  birth date or age, sex, collection time and the analyser's white-cell count in 10⁹/L. The old
  per-submission ``wbc_per_l`` (per litre, unchecked) is dropped; a plausible old value
  (10⁸..5·10¹¹ per litre) is carried over as ``wbc_10e9_per_l``, any other is dropped with it.
- ``slides.machine_report``: the report as the machine made it, kept unchanged beside the reviewed one
  (existing slides: copied from ``report`` where no cell was reviewed yet).
- ``lis_outbox``: HL7 result messages for the LIS, written at sign-off and sent over MLLP with
  retries (attempts, last error, sent time, the ACK).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.add_column(sa.Column("accession", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("patient_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("assigning_authority", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("birth_date", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("age_years", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("sex", sa.String(length=1), nullable=True))
        batch_op.add_column(sa.Column("collected_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("wbc_10e9_per_l", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("machine_report", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_slides_accession"), ["accession"], unique=False)
    op.execute("UPDATE slides SET wbc_10e9_per_l = wbc_per_l / 1e9 WHERE wbc_per_l >= 1e8 AND wbc_per_l <= 5e11")
    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.drop_column("wbc_per_l")
    op.execute(
        "UPDATE slides SET machine_report = report WHERE report IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM cell_reviews WHERE cell_reviews.slide_id = slides.id)"
    )

    op.create_table(
        "lis_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.String(length=32), nullable=False),
        sa.Column("control_id", sa.String(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("ack", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["slide_id"], ["slides.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("lis_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lis_outbox_slide_id"), ["slide_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lis_outbox_sent_at"), ["sent_at"], unique=False)


def downgrade() -> None:
    op.drop_table("lis_outbox")
    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wbc_per_l", sa.Double(), nullable=True))
    op.execute("UPDATE slides SET wbc_per_l = wbc_10e9_per_l * 1e9")
    with op.batch_alter_table("slides", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_slides_accession"))
        for column in (
            "machine_report",
            "wbc_10e9_per_l",
            "collected_at",
            "sex",
            "age_years",
            "birth_date",
            "assigning_authority",
            "patient_id",
            "accession",
        ):
            batch_op.drop_column(column)
