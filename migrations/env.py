"""Alembic environment of the registry.

Normally run from code (`registry.migrate`), which passes its own connection, already in a
transaction and locked, in `config.attributes["connection"]`. Run from the alembic command line
(see alembic.ini), it opens the URL given as `-x db=URL`.
"""

from __future__ import annotations

from alembic import context

from registry.db import make_engine
from registry.models import Base

# SQLite cannot ALTER most things; batch mode rebuilds the table instead (no-op elsewhere).
OPTIONS = {"target_metadata": Base.metadata, "render_as_batch": True}


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("db")
    if not url:
        raise SystemExit("give the registry URL: alembic -c migrations/alembic.ini -x db=URL ...")
    return url


def _run_online(connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=_url(), literal_binds=True, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is None:
        with make_engine(_url()).begin() as connection:
            _run_online(connection)
    else:
        _run_online(connection)


run()
