"""A fresh PostgreSQL database per test, on the server named by UNIMMAD_TEST_PG_URL.

Without the variable the PostgreSQL tests are skipped with a visible reason (`pytest -ra`
lists it); `.ci/run` installs and starts a server and sets the variable, so CI runs them.
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("UNIMMAD_TEST_PG_URL")
SKIP_REASON = (
    "UNIMMAD_TEST_PG_URL is not set: no PostgreSQL server to run the registry tests against "
    "(.ci/run installs one and sets it, e.g. postgresql+psycopg://user:pw@127.0.0.1/db)"
)
needs_pg = pytest.mark.skipif(not PG_URL, reason=SKIP_REASON)


def _admin():
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def create_database() -> str:
    """The URL of a new, empty database on the test server."""
    name = f"unimmad_test_{uuid.uuid4().hex[:12]}"
    engine = _admin()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    engine = _admin()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


@pytest.fixture
def pg_url():
    if not PG_URL:
        pytest.skip(SKIP_REASON)
    url = create_database()
    yield url
    drop_database(url)
