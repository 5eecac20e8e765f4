"""Alembic's environment for the results database: roslab hands it an open connection
(reports/results_db.py upgrade), inside the transaction that holds the migration lock."""

from __future__ import annotations

from alembic import context

from reports.results_db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: roslab opens the database itself
    raise SystemExit("open the results database with roslab (reports/results_db.py), "
                     "which migrates it in place")
# SQLite cannot ALTER most things: batch mode copies the table (0002 adds only columns)
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
