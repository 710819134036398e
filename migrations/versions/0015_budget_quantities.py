"""Budgets' limits and alerts' figures as exact decimals on SQLite too

On SQLite these columns held ``Money``'s integer count of 10⁻¹² (of USD, or of
tokens), which caps a value at about 9.2 million: a tokens budget of a billion
could not be set. They become decimal text (``Quantity``): each table is rebuilt
(SQLite's way to change a type) and every value rewritten exactly. PostgreSQL's
columns are NUMERIC(24, 12) already and do not change.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 17:00:00

"""

from decimal import Decimal

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_COLUMNS = {
    "budgets": ("limit_value", "customer_limit"),
    "budget_alerts": ("spent", "limit_value"),
}
_SCALE = Decimal(10) ** 12


def _convert(table: str, columns: tuple[str, ...], to_text: bool) -> None:
    bind = op.get_bind()
    values = bind.execute(sa.text(f"SELECT id, {', '.join(columns)} FROM {table}")).all()
    kind = sa.String(length=40) if to_text else sa.BigInteger()
    with op.batch_alter_table(table) as batch:
        for column in columns:
            batch.alter_column(column, type_=kind)
    for row_id, *stored in values:
        new = [
            None
            if value is None
            else (
                format(Decimal(int(value)) / _SCALE, "f")
                if to_text
                else int(Decimal(value) * _SCALE)
            )
            for value in stored
        ]
        assignments = ", ".join(f"{column} = :{column}" for column in columns)
        bind.execute(
            sa.text(f"UPDATE {table} SET {assignments} WHERE id = :id"),
            {"id": row_id, **dict(zip(columns, new, strict=True))},
        )


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, columns in _COLUMNS.items():
        _convert(table, columns, to_text=True)


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, columns in _COLUMNS.items():
        _convert(table, columns, to_text=False)
