"""Tasks record where the dataset's own label file disagrees with the masks.

`tasks.label_disagreements`: a JSON list, one entry per (sample, modality) whose label in
the dataset's label file (MulSen-AD `data.csv`) differs from what its mask says; empty for
every other format. Existing tasks get an empty list.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("label_disagreements", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("label_disagreements")
