"""Alembic, driven from code: the `migrations` package is found by import, not from the cwd.

Every migration runs in one transaction on the registry's own engine, under a lock, so that
several processes opening a fresh registry at once do not race to create it. On SQLite,
foreign keys are switched off around a migration (the way SQLite documents schema changes):
batch mode rebuilds a table by dropping it, and with foreign keys on, that drop would cascade
into the rows of the tables that refer to it. `PRAGMA foreign_key_check` then verifies the
result before it is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

import migrations
from unimmad_cl.errors import UserError

MIGRATIONS_DIR = Path(list(migrations.__path__)[0]).resolve()

# Any constant works: it only has to be the same in every process that migrates.
_PG_LOCK_KEY = 0x554E494D


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@cache
def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    return script().get_current_head()


def current(engine: Engine) -> str | None:
    """The registry's revision (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_head(engine: Engine) -> None:
    """Upgrade the registry to the newest revision unless it is there already."""
    target = head()
    if current(engine) == target:
        return
    _migrate(engine, lambda conn, config: _upgrade_if_behind(conn, config, target))


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, lambda conn, config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    _migrate(engine, lambda conn, config: command.downgrade(config, revision))


def _upgrade_if_behind(conn: Connection, config: Config, target: str) -> None:
    # Another process may have upgraded between the unlocked check and taking the lock.
    if MigrationContext.configure(conn).get_current_revision() != target:
        command.upgrade(config, "head")


def _migrate(engine: Engine, step: Callable[[Connection, Config], None]) -> None:
    with engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        _check_known(conn)
        try:
            step(conn, _config(conn))
        except CommandError as exc:
            raise UserError(f"migration failed: {exc}") from None
        if conn.dialect.name == "sqlite":
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise UserError(f"migration left broken foreign keys, rolled back: {broken[:3]}")


def _check_known(conn: Connection) -> None:
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is None:
        return
    try:
        script().get_revision(revision)
    except CommandError:
        raise UserError(
            f"the registry is at revision {revision}, which this version of unimmad-cl does "
            "not know (it was written by a newer version); upgrade unimmad-cl"
        ) from None


@contextmanager
def _foreign_keys_off(conn: Connection):
    if conn.dialect.name != "sqlite":
        yield
        return
    # The pragma is a no-op inside a transaction, so it goes to the driver connection
    # before SQLAlchemy begins one.
    raw = conn.connection.driver_connection
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")
