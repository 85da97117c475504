"""Alembic environment: migrations run programmatically from chattune.serve.schema.migrate.

Several processes may open one fresh database at once (two servers, a server and an export),
and each runs ``upgrade head``. Unguarded, both would see no tables and both create them;
one fails with "table already exists". So they take turns, and the second finds the schema
at head and does nothing:

- PostgreSQL: a transaction-scoped advisory lock, taken before Alembic reads the current
  revision. DDL is transactional there, so the lock is held until the whole upgrade commits.
- SQLite: an exclusive ``flock`` on a file beside the database (``chat.db.migrate-lock``),
  held around the whole upgrade. Never on the database file itself: closing any descriptor
  of that file would drop SQLite's own locks. Where ``fcntl`` is missing (Windows) there is
  no lock; start one process first there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from alembic import context
from sqlalchemy import URL, engine_from_config, pool, text

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

# Any fixed 64-bit number, the same in every process: ASCII "chattune".
MIGRATION_LOCK_KEY = int.from_bytes(b"chattune", "big") >> 1


@contextlib.contextmanager
def sqlite_file_lock(url: URL) -> Iterator[None]:
    """Hold an exclusive lock on ``DATABASE.migrate-lock`` if ``url`` is a SQLite file."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield
        return
    if fcntl is None:
        log.warning("no fcntl here: migrations of %s are not serialized", url.database)
        yield
        return
    with open(f"{url.database}.migrate-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # blocks while another process migrates
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


config = context.config
connectable = engine_from_config(
    config.get_section(config.config_ini_section)
    or {"sqlalchemy.url": config.get_main_option("sqlalchemy.url")},
    prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with sqlite_file_lock(connectable.url), connectable.connect() as connection:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()
