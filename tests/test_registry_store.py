"""registry.store: tasks, stages, artifacts, replay buffers, evaluations; one transaction each."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from registry.db import transaction
from registry.models import Task, TaskModality
from registry.store import (
    ArtifactInfo,
    EvaluationRow,
    ReplayItem,
    SampleCounts,
    TaskSpec,
    add_tasks,
    complete_stage,
    evaluation_matrix,
    fail_stage,
    get_data_root,
    get_replay_buffer,
    get_stage,
    get_task,
    list_evaluations,
    list_stages,
    list_tasks,
    open_registry,
    record_evaluations,
    record_replay_buffer,
    remove_task,
    set_data_root,
    start_stage,
)
from unimmad_cl.errors import UserError


def spec(name: str, classes=("a", "b"), modalities=("rgb", "depth")) -> TaskSpec:
    return TaskSpec(
        name=name,
        format="folder",
        root=f"/data/{name}",
        modalities=tuple(modalities),
        classes=tuple(classes),
        field="industrial",
        loss_weight=1.0,
        samples=SampleCounts(10, 6, 3),
    )


@pytest.fixture
def registry(tmp_path):
    with open_registry(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        yield reg


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(registry):
    with registry.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_tasks_keep_order_of_modalities_and_classes(registry):
    add_tasks(registry, [spec("t1", classes=("z", "a")), spec("t2", modalities=("depth", "rgb"))])
    tasks = list_tasks(registry)
    assert [t.name for t in tasks] == ["t1", "t2"]
    assert tasks[0].classes == ("z", "a")
    assert tasks[1].modalities == ("depth", "rgb")
    assert get_task(registry, "t1").samples == SampleCounts(10, 6, 3)
    assert get_task(registry, "t1").created_at is not None


def test_add_tasks_is_all_or_nothing(registry):
    add_tasks(registry, [spec("t1")])
    with pytest.raises(UserError, match="'t1' is already registered"):
        add_tasks(registry, [spec("t2"), spec("t1")])
    with pytest.raises(UserError, match="'t3' is given more than once"):
        add_tasks(registry, [spec("t3"), spec("t3")])
    assert [t.name for t in list_tasks(registry)] == ["t1"]


def test_failed_transaction_leaves_no_rows(registry):
    def work(session):
        session.add(Task(name="x", format="folder", root="/x", field="f", loss_weight=1.0,
                         n_train=1, n_test=1, n_test_anomalous=0))
        session.flush()
        raise UserError("boom")

    with pytest.raises(UserError):
        transaction(registry.engine, work)
    assert list_tasks(registry) == []


def test_unknown_task_names_the_known_ones(registry):
    add_tasks(registry, [spec("t1")])
    with pytest.raises(UserError, match=r"no task named 'nope' \(known tasks: t1\)"):
        get_task(registry, "nope")


def test_remove_task_deletes_its_rows(registry):
    add_tasks(registry, [spec("t1"), spec("t2")])
    remove_task(registry, "t1")
    assert [t.name for t in list_tasks(registry)] == ["t2"]
    count = transaction(
        registry.engine, lambda s: s.scalar(select(func.count()).select_from(TaskModality))
    )
    assert count == 2  # only t2's


def test_data_root_setting(registry):
    assert get_data_root(registry) is None
    set_data_root(registry, "/data")
    set_data_root(registry, "/other")
    assert get_data_root(registry) == "/other"


def artifact(kind="base") -> ArtifactInfo:
    return ArtifactInfo(kind=kind, path=f"/ws/{kind}.safetensors", sha256="ab" * 32, bytes=1234)


def test_stage_lifecycle_marks_tasks_trained(registry):
    add_tasks(registry, [spec("t1"), spec("t2"), spec("t3")])
    base = start_stage(registry, "base", ["t1", "t2"], config={"lr": 0.1}, seed=3,
                       trainable_params=100, total_params=1000, trainable_names=["a.w"])
    assert (base.number, base.status, base.tasks) == (0, "running", ("t1", "t2"))
    assert get_task(registry, "t1").trained_in_stage is None
    done = complete_stage(registry, 0, artifact=artifact(), seconds=12.5)
    assert done.status == "completed" and done.artifact == artifact()
    assert [t.trained_in_stage for t in list_tasks(registry)] == [0, 0, None]
    with pytest.raises(UserError, match="already trained in stage 0"):
        start_stage(registry, "incremental", ["t1"], parent=0)

    inc = start_stage(registry, "incremental", ["t3"], parent=0)
    assert inc.number == 1 and inc.parent == 0
    fail_stage(registry, 1, "killed")
    assert get_stage(registry, 1).status == "failed"
    assert get_task(registry, "t3").trained_in_stage is None
    # a rerun restarts the failed stage under the same number
    again = start_stage(registry, "incremental", ["t3"], parent=0, number=1)
    assert again.status == "running" and again.error is None
    complete_stage(registry, 1, artifact=artifact("delta"), seconds=2.0, trainable_params=10)

    stages = list_stages(registry)
    assert [s.to_json() for s in stages] == [
        {"stage": 0, "kind": "base", "status": "completed", "tasks": ["t1", "t2"],
         "trainable_params": 100, "total_params": 1000, "artifact": "/ws/base.safetensors",
         "artifact_bytes": 1234, "sha256": "ab" * 32, "seconds": 12.5},
        {"stage": 1, "kind": "incremental", "status": "completed", "tasks": ["t3"],
         "trainable_params": 10, "total_params": None, "artifact": "/ws/delta.safetensors",
         "artifact_bytes": 1234, "sha256": "ab" * 32, "seconds": 2.0},
    ]
    assert stages[0].config == {"lr": 0.1} and stages[0].trainable_names == ("a.w",)


def test_stage_rules(registry):
    add_tasks(registry, [spec("t1"), spec("t2")])
    with pytest.raises(UserError, match="stage kind"):
        start_stage(registry, "weird", ["t1"])
    with pytest.raises(UserError, match="needs a parent"):
        start_stage(registry, "incremental", ["t1"])
    start_stage(registry, "base", ["t1"])
    with pytest.raises(UserError, match="parent stage 0 is running"):
        start_stage(registry, "incremental", ["t2"], parent=0)
    with pytest.raises(UserError, match="stage 0 exists and is running"):
        start_stage(registry, "base", ["t2"], number=0)
    with pytest.raises(UserError, match="no stage 7"):
        complete_stage(registry, 7, artifact=artifact(), seconds=1)
    with pytest.raises(UserError, match="no task named"):
        start_stage(registry, "base", ["missing"])
    assert [s.number for s in list_stages(registry)] == [0]


def test_remove_task_refuses_trained_and_running(registry):
    add_tasks(registry, [spec("t1"), spec("t2")])
    start_stage(registry, "base", ["t1"])
    with pytest.raises(UserError, match="stage 0, which is running"):
        remove_task(registry, "t1")
    complete_stage(registry, 0, artifact=artifact(), seconds=1)
    with pytest.raises(UserError, match="was trained in stage 0"):
        remove_task(registry, "t1")
    remove_task(registry, "t2")
    assert [t.name for t in list_tasks(registry)] == ["t1"]


def test_replay_buffer_is_recorded_and_replaced(registry):
    add_tasks(registry, [spec("t1")])
    start_stage(registry, "base", ["t1"])
    items = [ReplayItem("a", "001", ("/d/a/001_rgb.png", "/d/a/001.tiff")),
             ReplayItem("b", "007", ("/d/b/007_rgb.png", "/d/b/007.tiff"))]
    record_replay_buffer(registry, "t1", policy="class_balanced", seed=0, ratio=0.01,
                         samples=items, stage=0)
    buffer = get_replay_buffer(registry, "t1")
    assert buffer.samples == tuple(items) and buffer.policy == "class_balanced"
    assert buffer.stage == 0
    assert get_task(registry, "t1").replay_samples == 2
    record_replay_buffer(registry, "t1", policy="random", seed=1, ratio=0.02, samples=items[:1])
    assert get_replay_buffer(registry, "t1").samples == (items[0],)
    assert list_tasks(registry)[0].replay_samples == 1


def test_evaluations_upsert_list_and_matrix(registry):
    add_tasks(registry, [spec("t1"), spec("t2")])
    start_stage(registry, "base", ["t1"])
    complete_stage(registry, 0, artifact=artifact(), seconds=1)
    start_stage(registry, "incremental", ["t2"], parent=0)
    complete_stage(registry, 1, artifact=artifact("delta"), seconds=1)
    record_evaluations(registry, 0, [EvaluationRow("t1", "a", "i_auroc", 0.9),
                                     EvaluationRow("t1", "b", "i_auroc", 0.7),
                                     EvaluationRow("t1", "a", "p_auroc", 0.95)])
    record_evaluations(registry, 1, [EvaluationRow("t1", "a", "i_auroc", 0.8),
                                     EvaluationRow("t1", "b", "i_auroc", 0.6),
                                     EvaluationRow("t2", "a", "i_auroc", 0.5)])
    # a rerun of the evaluation replaces values
    assert record_evaluations(registry, 1, [EvaluationRow("t2", "a", "i_auroc", 0.75)]) == 1

    matrix = evaluation_matrix(registry, "i_auroc")
    assert matrix == {"t1": {0: pytest.approx(0.8), 1: pytest.approx(0.7)}, "t2": {1: 0.75}}
    assert list(matrix) == ["t1", "t2"]
    assert list_evaluations(registry, stage=0) == [
        {"stage": 0, "task": "t1", "class": "a", "i_auroc": 0.9, "p_auroc": 0.95},
        {"stage": 0, "task": "t1", "class": "b", "i_auroc": 0.7},
    ]
    assert [r["task"] for r in list_evaluations(registry, tasks=["t2"])] == ["t2"]
    with pytest.raises(ValueError, match="finite"):
        record_evaluations(registry, 0, [EvaluationRow("t1", "a", "i_auroc", float("nan"))])
    with pytest.raises(UserError, match="no task named"):
        record_evaluations(registry, 0, [EvaluationRow("zz", "a", "i_auroc", 0.1)])
    with pytest.raises(UserError, match="evaluations recorded|trained"):
        remove_task(registry, "t2")


def test_database_failures_become_one_user_error(registry):
    def work(session):
        session.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(UserError, match=r"registry sqlite:///.*registry.db: no such table"):
        transaction(registry.engine, work)


def test_locked_database_is_retried(registry, monkeypatch):
    monkeypatch.setattr("registry.db.time.sleep", lambda s: None)
    calls = []

    def work(session):
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return "done"

    assert transaction(registry.engine, work) == "done" and len(calls) == 3
