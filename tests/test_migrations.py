"""The Alembic environment: models == migrations, round trips, upgrade on open, packaging."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from registry import migrate
from registry.db import make_engine
from registry.models import Base
from registry.store import (
    ArtifactInfo,
    EvaluationRow,
    SampleCounts,
    TaskSpec,
    add_tasks,
    complete_stage,
    get_task,
    list_stages,
    list_tasks,
    open_registry,
    record_evaluations,
    start_stage,
)
from unimmad_cl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MODEL_TABLES = set(Base.metadata.tables)


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


def tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def fill(registry) -> None:
    spec = TaskSpec("t1", "folder", "/d/t1", ("rgb", "depth"), ("a", "b"), "industrial", 2.0,
                    SampleCounts(5, 4, 2))
    add_tasks(registry, [spec, TaskSpec(**{**spec.__dict__, "name": "t2"})])
    start_stage(registry, "base", ["t1"])
    complete_stage(registry, 0, artifact=ArtifactInfo("base", "/w/b", "0" * 64, 9), seconds=1)
    record_evaluations(registry, 0, [EvaluationRow("t1", "a", "i_auroc", 0.9)])


def test_models_and_migrations_agree(tmp_path):
    engine = make_engine(url(tmp_path))
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    assert tables(engine) == MODEL_TABLES


def test_round_trip_on_an_empty_registry(tmp_path):
    engine = make_engine(url(tmp_path))
    migrate.upgrade(engine)
    migrate.downgrade(engine, "base")
    assert migrate.current(engine) is None and tables(engine) == set()
    migrate.upgrade(engine, "0001")
    assert migrate.current(engine) == "0001"
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head() and tables(engine) == MODEL_TABLES


def test_round_trip_on_a_filled_registry_keeps_the_tasks(tmp_path):
    with open_registry(url(tmp_path)) as registry:
        fill(registry)
        before = list_tasks(registry)
        # 0002 rebuilds `tasks` in batch mode: the tasks' modality and class rows, which
        # cascade on delete, must survive the rebuild in both directions
        migrate.downgrade(registry.engine, "0001")
        assert tables(registry.engine) == {"settings", "tasks", "task_modalities", "task_classes"}
        migrate.upgrade(registry.engine)
        after = list_tasks(registry)
        assert [t.modalities for t in after] == [t.modalities for t in before]
        assert [t.classes for t in after] == [t.classes for t in before]
        assert all(t.trained_in_stage is None for t in after)  # the history went with 0002
        assert list_stages(registry) == []
        fill_again_ok = start_stage(registry, "base", ["t1"])
        assert fill_again_ok.number == 0
        migrate.downgrade(registry.engine, "base")
        assert tables(registry.engine) == set()


def test_opening_upgrades_an_older_registry(tmp_path):
    engine = make_engine(url(tmp_path))
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO tasks (id, name, format, root, field, loss_weight, n_train, n_test, "
            "n_test_anomalous, created_at) VALUES (1, 'old', 'mvtec', '/d', 'industrial', 1.0, "
            "3, 2, 1, '2024-01-01 00:00:00')"
        )
        conn.exec_driver_sql("INSERT INTO task_modalities VALUES (1, 0, 'rgb')")
        conn.exec_driver_sql("INSERT INTO task_classes VALUES (1, 0, 'bottle')")
    engine.dispose()
    with open_registry(url(tmp_path)) as registry:
        assert migrate.current(registry.engine) == migrate.head()
        old = get_task(registry, "old")
        assert (old.modalities, old.classes, old.trained_in_stage) == (("rgb",), ("bottle",), None)


def test_opening_a_fresh_registry_creates_it(tmp_path):
    with open_registry(url(tmp_path)) as registry:
        assert migrate.current(registry.engine) == migrate.head()
        assert tables(registry.engine) == MODEL_TABLES


def test_a_registry_from_a_newer_version_is_refused(tmp_path):
    engine = make_engine(url(tmp_path))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dfeed'")
    with pytest.raises(UserError, match="revision f00dfeed, which this version"):
        open_registry(url(tmp_path))


def test_unknown_revision_is_a_user_error(tmp_path):
    engine = make_engine(url(tmp_path))
    with pytest.raises(UserError, match="migration failed"):
        migrate.upgrade(engine, "nope")


def test_an_installed_copy_migrates_without_the_source_tree(tmp_path):
    """Build the wheel, unpack it elsewhere and open a registry from there, cwd elsewhere."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in ("unimmad_cl", "registry", "migrations"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("migrations/__init__.py", "migrations/env.py", "migrations/script.py.mako",
                    "migrations/alembic.ini", "migrations/versions/0001_task_registry.py",
                    "migrations/versions/0002_training_history.py"):
        assert shipped in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "from registry import migrate; from registry.store import open_registry; "
        "r = open_registry('sqlite:///reg.db'); "
        "print(migrate.MIGRATIONS_DIR); print(migrate.current(r.engine))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(site)}, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    location, revision = done.stdout.split()
    assert Path(location) == (site / "migrations").resolve()
    assert revision == migrate.head()
