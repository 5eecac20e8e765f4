"""The hardware profile and image checksum of a run; each system service's times per boot.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("hw", sa.String(60)))
        batch.add_column(sa.Column("image_checksum", sa.String(100)))
    op.create_table(
        "service_times",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("boot_id", sa.Integer, sa.ForeignKey("boots.id"), nullable=False, index=True),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("created", sa.Float),
        sa.Column("started", sa.Float),
        sa.Column("finished", sa.Float),
    )
