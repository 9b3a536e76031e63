"""Migrations with data: a registry created and filled at the initial revision keeps every row
through the upgrade to head (where it is then used and filled further), and through the
downgrade back to the initial revision, on SQLite and on PostgreSQL (UNIMMAD_TEST_PG_URL)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from registry import migrate
from registry.db import make_engine
from registry.store import (
    ArtifactInfo,
    EvaluationRow,
    ReplayItem,
    SampleCounts,
    TaskSpec,
    add_tasks,
    complete_stage,
    get_data_root,
    get_task,
    list_evaluations,
    list_stages,
    list_tasks,
    open_registry,
    record_evaluations,
    record_replay_buffer,
    start_stage,
)
from test_postgres_support import PG_URL, SKIP_REASON, create_database, drop_database

INITIAL = "0001"
CREATED = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)

# The rows written at the initial revision, with the SQL of that revision (not today's models);
# ids come from the database, as they did from the code of that revision.
TASKS = [
    # (id: assigned), name, format, root, field, loss weight, train, test, anomalous, modalities, classes
    (1, "light", "folder", "/data/light", "industrial", 1.0, 30, 12, 6, ["infrared"], ["a", "b"]),
    (2, "bagel", "mvtec3d", "/data/mvtec3d", "industrial", 2.5, 244, 110, 88, ["rgb", "depth"],
     ["bagel", "cookie", "dowel"]),
    (3, "brain", "brats", "/data/brats", "medical", 0.5, 400, 200, 100,
     ["mri_flair", "mri_t1", "mri_t1ce", "mri_t2"], ["brain"]),
    (4, "üñí-cödé", "folder", "/data/ünï cödé", "industrial", 1.0, 1, 2, 1, ["rgb"], ["z", "ä"]),
]
SETTINGS = {"data_root": "/data", "note": "kept"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not PG_URL:
        pytest.skip(SKIP_REASON)
    made = create_database()
    yield made
    drop_database(made)


def fill_initial(engine) -> None:
    with engine.begin() as conn:
        for key, value in SETTINGS.items():
            conn.execute(text("INSERT INTO settings (key, value) VALUES (:k, :v)"), {"k": key, "v": value})
        for tid, name, fmt, root, field, weight, n_train, n_test, n_anom, modalities, classes in TASKS:
            conn.execute(
                text("INSERT INTO tasks (name, format, root, field, loss_weight, n_train, n_test, "
                     "n_test_anomalous, created_at) VALUES (:name, :format, :root, :field, :w, "
                     ":train, :test, :anom, :created)"),
                {"name": name, "format": fmt, "root": root, "field": field, "w": weight,
                 "train": n_train, "test": n_test, "anom": n_anom, "created": CREATED},
            )
            tid = conn.execute(text("SELECT id FROM tasks WHERE name = :n"), {"n": name}).scalar_one()
            for position, modality in enumerate(modalities):
                conn.execute(text("INSERT INTO task_modalities (task_id, position, modality) VALUES (:t, :p, :m)"),
                             {"t": tid, "p": position, "m": modality})
            for position, cls in enumerate(classes):
                conn.execute(text("INSERT INTO task_classes (task_id, position, name) VALUES (:t, :p, :n)"),
                             {"t": tid, "p": position, "n": cls})


def initial_rows(engine) -> dict:
    """Every row of the initial revision's tables, as plain tuples."""
    queries = {
        "settings": "SELECT key, value FROM settings ORDER BY key",
        "tasks": "SELECT id, name, format, root, field, loss_weight, n_train, n_test, "
                 "n_test_anomalous FROM tasks ORDER BY id",
        "task_modalities": "SELECT task_id, position, modality FROM task_modalities ORDER BY task_id, position",
        "task_classes": "SELECT task_id, position, name FROM task_classes ORDER BY task_id, position",
    }
    with engine.connect() as conn:
        rows = {table: [tuple(r) for r in conn.execute(text(sql))] for table, sql in queries.items()}
        created = [r[0] for r in conn.execute(text("SELECT created_at FROM tasks ORDER BY id"))]
    # SQLite hands back text or naive datetimes, PostgreSQL aware ones: compare the instant
    rows["created_at"] = [_instant(c) for c in created]
    return rows


def _instant(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def test_filled_initial_registry_upgrades_to_head_and_back_with_every_row(url):
    engine = make_engine(url)
    migrate.upgrade(engine, INITIAL)
    fill_initial(engine)
    before = initial_rows(engine)
    assert len(before["tasks"]) == len(TASKS) and before["created_at"] == [CREATED] * len(TASKS)

    # opening runs the pending migrations; every row is there and usable
    with open_registry(url) as registry:
        assert migrate.current(registry.engine) == migrate.head()
        assert initial_rows(registry.engine) == before
        tasks = list_tasks(registry)
        assert [(t.name, t.modalities, t.classes, t.loss_weight, t.samples, t.trained_in_stage) for t in tasks] == [
            (name, tuple(mods), tuple(classes), weight, SampleCounts(n_train, n_test, n_anom), None)
            for _, name, _, _, _, weight, n_train, n_test, n_anom, mods, classes in TASKS
        ]
        assert get_data_root(registry) == "/data"
        # the upgraded registry takes new rows of every kind next to the old ones; the new
        # task gets an id after the highest old one (sequences survive the migration)
        new = TaskSpec("later", "folder", "/data/later", ("rgb",), ("x",), "industrial", 1.0, SampleCounts(4, 2, 1))
        add_tasks(registry, [new])
        assert [t.name for t in list_tasks(registry)][-1] == "later"
        start_stage(registry, "base", ["light", "bagel"], config={"lr": 0.001}, seed=3)
        complete_stage(registry, 0, artifact=ArtifactInfo("base", "models/base.safetensors", "ab" * 32, 123),
                       seconds=2.0, evaluations=[EvaluationRow("light", "a", "i_auroc", 0.75)])
        record_replay_buffer(registry, "light", policy="p", seed=0, ratio=0.01,
                             samples=[ReplayItem("a", "000", ("/data/light/a/000.png",))], stage=0)
        assert get_task(registry, "light").trained_in_stage == 0
        assert list_evaluations(registry) == [{"stage": 0, "task": "light", "class": "a", "i_auroc": 0.75}]
        assert [s.status for s in list_stages(registry)] == ["completed"]

        # back to the initial revision: the history goes (it did not exist there); every
        # task, modality, class and setting stays, the one added at head included
        migrate.downgrade(registry.engine, INITIAL)
        assert migrate.current(registry.engine) == INITIAL
        after = initial_rows(registry.engine)
        for table in ("settings", "task_modalities", "task_classes"):
            assert set(before[table]) <= set(after[table]), table
        assert after["tasks"][: len(TASKS)] == before["tasks"]
        assert after["tasks"][-1][1] == "later"
        assert after["created_at"][: len(TASKS)] == before["created_at"]

        # and up again: the same rows, and the registry works
        migrate.upgrade(registry.engine)
        assert initial_rows(registry.engine) == after
        assert all(t.trained_in_stage is None for t in list_tasks(registry))
        assert start_stage(registry, "base", ["light"]).number == 0
    engine.dispose()


def test_every_step_down_and_up_keeps_the_rows(url):
    """Each revision in turn, one step at a time, on a registry filled at head."""
    with open_registry(url) as registry:
        add_tasks(registry, [TaskSpec("t", "folder", "/d/t", ("rgb", "depth"), ("a", "b"), "industrial", 1.0,
                                      SampleCounts(5, 4, 2))])
        revisions = [r.revision for r in migrate.script().walk_revisions()]  # head first
        snapshots = {}
        for revision in revisions[:-1]:
            snapshots[revision] = initial_rows(registry.engine)
            migrate.downgrade(registry.engine, "-1")
        for revision in reversed(revisions[:-1]):
            migrate.upgrade(registry.engine, "+1")
            assert migrate.current(registry.engine) == revision
            assert initial_rows(registry.engine) == snapshots[revision]
        assert get_task(registry, "t").classes == ("a", "b")
