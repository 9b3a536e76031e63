"""The registry on a real PostgreSQL server (UNIMMAD_TEST_PG_URL; skipped with a reason
without it): every store test of tests/test_registry_store.py again, the migrations, the CLI
with `--db postgresql+psycopg://…`, and several processes sharing one registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect, text

import test_registry_store
from cli import main
from registry import migrate
from registry.db import make_engine, transaction
from registry.models import Base
from registry.store import open_registry
from test_postgres_support import PG_URL, SKIP_REASON, needs_pg, pg_url  # noqa: F401 (fixture)
from unimmad_cl.errors import UserError

pytestmark = needs_pg
REPO = Path(__file__).resolve().parents[1]
MODEL_TABLES = set(Base.metadata.tables)

# The store tests, re-run here with `registry` on PostgreSQL. The SQLite-only ones (pragmas,
# SQLite's message) stay in test_registry_store.py; their PostgreSQL forms are below.
SQLITE_ONLY = {
    "test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout",
    "test_database_failures_become_one_user_error",
}
for _name in dir(test_registry_store):
    if _name.startswith("test_") and _name not in SQLITE_ONLY:
        globals()[f"{_name}"] = getattr(test_registry_store, _name)
spec = test_registry_store.spec


@pytest.fixture
def registry(pg_url):  # noqa: F811 - replaces the SQLite fixture for the imported tests
    with open_registry(pg_url) as reg:
        yield reg


def tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_database_failures_become_one_user_error_on_postgres(registry):
    def work(session):
        session.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(UserError, match=r"registry postgresql\+psycopg://unimmad:\*\*\*@.*no_such_table"):
        transaction(registry.engine, work)


def test_models_and_migrations_agree_on_postgres(pg_url):
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    assert tables(engine) == MODEL_TABLES
    migrate.downgrade(engine, "base")
    assert tables(engine) == set() and migrate.current(engine) is None
    engine.dispose()


def test_cli_with_db_postgres_url(pg_url, tmp_path):
    from test_cli_tasks import make_tree

    make_tree(tmp_path / "data" / "light")

    def run(*args, code=0):
        result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "--db", pg_url, *args])
        assert result.exit_code == code, result.output
        return result.output

    out = run("init", "--data-root", str(tmp_path / "data"))
    assert "registry   postgresql+psycopg://unimmad:***@" in out and "unimmad:unimmad@" not in out
    run("add-task", "--name", "light", "--modality", "infrared")
    shown = json.loads(run("show-task", "light", "--json"))
    assert shown["classes"] == ["a", "b"] and shown["modalities"] == ["infrared"]
    assert [t["name"] for t in json.loads(run("tasks", "--json"))] == ["light"]
    assert "already registered" in run("add-task", "--name", "light", "--modality", "infrared", code=2)
    assert run("db", "current").strip() == f"{migrate.head()} (head)"
    run("db", "downgrade", "0001")
    assert json.loads(run("tasks", "--json"))[0]["name"] == "light"  # opening upgrades again
    assert json.loads(run("stages", "--json")) == []
    assert not (tmp_path / "ws" / "registry.db").exists()  # the registry is the server's
    run("remove-task", "light")


def test_unreachable_server_is_one_line(tmp_path):
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path), "--db", url, "tasks"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: cannot open registry postgresql+psycopg://nobody:***@127.0.0.1:1/none")
    assert "secret" not in result.output


def test_processes_sharing_one_registry(pg_url, tmp_path):
    """Several processes open a fresh shared registry at once (one migrates, under the
    advisory lock), then race to register the same task: exactly one wins, the others get
    the one-line "already registered" error."""
    from test_cli_tasks import make_tree

    make_tree(tmp_path / "data" / "same")
    code = (
        "import sys; from cli import main; "
        "main(['--workspace', sys.argv[1], '--db', sys.argv[2], 'add-task', '--name', 'same', "
        "'--modality', 'infrared', '--root', sys.argv[3]])"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"ws{i}"), pg_url, str(tmp_path / "data" / "same")],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2, 2, 2], results
    for code, out, err in results:
        if code:
            assert err.strip() == "error: a task named 'same' is already registered", err
    with open_registry(pg_url) as reg:
        assert migrate.current(reg.engine) == migrate.head()
