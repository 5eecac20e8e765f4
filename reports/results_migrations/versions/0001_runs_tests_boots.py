"""Runs, their tests and their boots' milestones.

Revision ID: 0001
Revises:
Create Date: 2025-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uid", sa.String(200), nullable=False, unique=True),
        sa.Column("lab_run_id", sa.String(100), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False, index=True),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("started", sa.DateTime, nullable=False, index=True),
        sa.Column("finished", sa.DateTime),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("image", sa.Text),
        sa.Column("image_version", sa.String(100)),
        sa.Column("platform", sa.String(40)),
        sa.Column("arch", sa.String(20)),
        sa.Column("board", sa.String(40)),
        sa.Column("accel", sa.String(20)),
        sa.Column("cell", sa.String(100), index=True),
        sa.Column("host", sa.String(200)),
        sa.Column("options", sa.Text),
        sa.Column("interrupted", sa.Boolean, nullable=False),
    )
    op.create_table(
        "tests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("nodeid", sa.String(500), nullable=False, index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("cause", sa.Text),
        sa.Column("last_milestone", sa.String(100)),
        sa.Column("evidence", sa.Text),
    )
    op.create_table(
        "boots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("machine", sa.String(100)),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("blame", sa.String(10)),
        sa.Column("console_log", sa.Text),
    )
    op.create_table(
        "milestones",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("boot_id", sa.Integer, sa.ForeignKey("boots.id"), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False, index=True),
        sa.Column("seconds", sa.Float, nullable=False),
    )
