"""Engines and transactions for the registry database (SQLite by default, any SQLAlchemy URL).

SQLite is shared by concurrent processes (several `add-task`s, a training run next to a
`tasks` listing), so its connections use WAL (readers never block the writer), a busy timeout
(a writer waits for the lock instead of failing) and `BEGIN IMMEDIATE` (a transaction takes
the write lock when it starts: two transactions that both read and then write would otherwise
deadlock, and SQLite reports that at once, without waiting). Whatever still reports "locked"
is retried a few times, the whole unit of work again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session

from unimmad_cl.errors import UserError

BUSY_TIMEOUT_S = 30.0
RETRIES = 5

T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """An engine for `url`, checked to be reachable; UserError names the URL otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"registry URL {url!r} is not a SQLAlchemy database URL") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise UserError(f"cannot open registry {shown}: folder {folder} does not exist")
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
            _configure_sqlite(engine)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot open registry {shown}: {exc}") from None
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        raise UserError(f"cannot open registry {shown}: {_first_line(exc.orig)}") from None
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN: pysqlite's own implicit BEGIN is issued
        # late (not before SELECT or DDL), which breaks transactional migrations and locking.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL is persistent in the file; switching needs an exclusive lock that a fresh
        # database being opened by several processes at once may not get on the first try.
        for attempt in range(RETRIES):
            try:
                if cursor.execute("PRAGMA journal_mode").fetchone()[0] not in ("wal", "memory"):
                    cursor.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or attempt == RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def transaction(engine: Engine, work: Callable[[Session], T]) -> T:
    """Run `work(session)` in one transaction: all of its writes are committed, or none.

    A UserError (or any other exception) raised by `work` rolls everything back. The unit of
    work is retried when the database reports it is locked (or, on PostgreSQL, a deadlock,
    a serialization failure, or a constraint that a concurrent writer got to first), so `work`
    must not have side effects outside the session. Other database failures (disk full,
    read-only file, server gone, permission denied) become a UserError naming the registry.
    """
    attempt = 0
    while True:
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return work(session)
        except OperationalError as exc:
            attempt += 1
            if _is_lock_error(exc) and attempt < RETRIES:
                time.sleep(0.1 * attempt)
                continue
            raise _registry_error(engine, exc) from None
        except IntegrityError as exc:
            # On a server shared by several machines two writers can pass the same check
            # (name free, next stage number) before either commits; the loser runs its unit
            # of work again, and its checks now see the winner's rows.
            attempt += 1
            if attempt < RETRIES:
                continue
            raise _registry_error(engine, exc) from None
        except DBAPIError as exc:  # e.g. PostgreSQL: permission denied, missing table
            raise _registry_error(engine, exc) from None


def _registry_error(engine: Engine, exc: DBAPIError) -> UserError:
    shown = engine.url.render_as_string(hide_password=True)
    return UserError(f"registry {shown}: {_first_line(exc.orig)}")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        sign in text
        for sign in ("database is locked", "database is busy",  # SQLite
                     "deadlock detected", "could not serialize access")  # PostgreSQL
    )


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc and str(exc).strip() else "connection failed"
