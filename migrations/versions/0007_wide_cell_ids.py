"""wide cell ids: ``cells.id`` and ``cell_reviews.cell_id`` become 64-bit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:00:00

Every detected cell, red cells included, gets a row, so a 32-bit ``cells.id`` is a ceiling (about
2.1 billion cells: a few thousand slides) and a client asking for cell 2**31 made PostgreSQL fail
(int4 out of range). On PostgreSQL the two columns become BIGINT and the ``cells.id`` sequence,
which ``SERIAL`` made ``AS integer``, becomes ``AS bigint`` (otherwise it would still stop at
2**31 - 1). On SQLite there is nothing to change: its INTEGER already holds 64 bits, and the models
keep INTEGER there (``BigInteger().with_variant(Integer(), "sqlite")``) because only an ``INTEGER
PRIMARY KEY`` autoincrements; rebuilding the tables (batch mode's copy) would change nothing.

Downgrading narrows the columns again and fails, as it should, when an id no longer fits.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (table, column) of the cell id and of every column referring to it.
CELL_ID_COLUMNS = (("cells", "id"), ("cell_reviews", "cell_id"))


def _set_width(wide: bool) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # INTEGER is 64-bit on SQLite already (see the module docstring)
    old, new = (sa.Integer(), sa.BigInteger()) if wide else (sa.BigInteger(), sa.Integer())
    for table, column in CELL_ID_COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, existing_type=old, type_=new, existing_nullable=False)
    seq = op.get_bind().execute(sa.text("SELECT pg_get_serial_sequence('cells', 'id')")).scalar()
    if seq:
        op.execute(f"ALTER SEQUENCE {seq} AS {'bigint' if wide else 'integer'}")


def upgrade() -> None:
    _set_width(wide=True)


def downgrade() -> None:
    _set_width(wide=False)
