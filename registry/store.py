"""The registry's operations. Each public function is one transaction: it commits all of its
writes or, on any error (a UserError for bad input included), none of them.

Results are plain frozen dataclasses, detached from the session, so callers (the CLI, the
training engine, notebooks) never trigger lazy loads on a closed session.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, selectinload

from registry import migrate
from registry.db import make_engine, transaction
from registry.models import (
    Artifact,
    Evaluation,
    ReplayBuffer,
    ReplaySample,
    Setting,
    Stage,
    StageTask,
    Task,
    TaskClass,
    TaskModality,
    utcnow,
)
from unimmad_cl.errors import UserError

STAGE_KINDS = ("base", "incremental")
DATA_ROOT = "data_root"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SampleCounts:
    train: int
    test: int
    test_anomalous: int


@dataclass(frozen=True)
class TaskSpec:
    """A task definition checked against the data, ready to be registered."""

    name: str
    format: str
    root: str
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    field: str
    loss_weight: float
    samples: SampleCounts
    # (sample, modality) pairs whose label in the dataset's label file (MulSen-AD data.csv)
    # differs from their mask: {class, defect, stem, modality, csv_label, mask_label, mask}.
    label_disagreements: tuple[dict, ...] = ()


@dataclass(frozen=True)
class TaskInfo(TaskSpec):
    """A registered task."""

    trained_in_stage: int | None = None
    replay_samples: int = 0
    created_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The `show-task --json` object."""
        return {
            "name": self.name,
            "format": self.format,
            "root": self.root,
            "field": self.field,
            "modalities": list(self.modalities),
            "classes": list(self.classes),
            "loss_weight": self.loss_weight,
            "trained_in_stage": self.trained_in_stage,
            "samples": {
                "train": self.samples.train,
                "test": self.samples.test,
                "test_anomalous": self.samples.test_anomalous,
            },
            "replay_samples": self.replay_samples,
            "label_disagreements": [dict(d) for d in self.label_disagreements],
        }


@dataclass(frozen=True)
class ArtifactInfo:
    kind: str  # "base" or "delta"
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class StageInfo:
    number: int
    kind: str
    status: str  # running | completed | failed
    parent: int | None
    tasks: tuple[str, ...]
    trainable_params: int | None
    total_params: int | None
    trainable_names: tuple[str, ...]
    config: dict[str, Any]
    seed: int | None
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None
    error: str | None
    artifact: ArtifactInfo | None

    def to_json(self) -> dict[str, Any]:
        """The `stages --json` object."""
        return {
            "stage": self.number,
            "kind": self.kind,
            "status": self.status,
            "tasks": list(self.tasks),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "artifact": self.artifact.path if self.artifact else None,
            "artifact_bytes": self.artifact.bytes if self.artifact else None,
            "sha256": self.artifact.sha256 if self.artifact else None,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class ReplayItem:
    """One training sample kept for replay: its class, stem and modality files."""

    cls: str
    stem: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class ReplayBufferSpec:
    """A replay buffer to record for `task` when its stage completes."""

    task: str
    policy: str
    seed: int
    ratio: float
    samples: tuple[ReplayItem, ...]


@dataclass(frozen=True)
class ReplayBufferInfo:
    task: str
    policy: str
    seed: int
    ratio: float
    stage: int | None
    samples: tuple[ReplayItem, ...]


@dataclass(frozen=True)
class EvaluationRow:
    task: str
    cls: str
    metric: str
    value: float


# --------------------------------------------------------------------------- registry


class Registry:
    """An open registry database, upgraded to the newest schema."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_registry(url: str, *, upgrade: bool = True) -> Registry:
    """Open the registry at `url`, running pending migrations unless `upgrade` is False."""
    engine = make_engine(url)
    if upgrade:
        try:
            migrate.ensure_head(engine)
        except BaseException:
            engine.dispose()
            raise
    return Registry(engine)


# --------------------------------------------------------------------------- settings


def get_data_root(registry: Registry) -> str | None:
    """The data root set by `init --data-root` (None when it was never set)."""

    def work(session: Session) -> str | None:
        setting = session.get(Setting, DATA_ROOT)
        return setting.value if setting else None

    return transaction(registry.engine, work)


def set_data_root(registry: Registry, path: str) -> None:
    transaction(registry.engine, lambda session: session.merge(Setting(key=DATA_ROOT, value=path)))


# --------------------------------------------------------------------------- tasks


def add_tasks(registry: Registry, specs: Sequence[TaskSpec]) -> list[TaskInfo]:
    """Register all of `specs` or, if any name is taken or repeated, none of them."""

    def work(session: Session) -> list[TaskInfo]:
        names = [spec.name for spec in specs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UserError(f"task name {repeated[0]!r} is given more than once")
        taken = session.scalars(select(Task.name).where(Task.name.in_(names))).all()
        if taken:
            raise UserError(f"a task named {sorted(taken)[0]!r} is already registered")
        tasks = [
            Task(
                name=spec.name,
                format=spec.format,
                root=spec.root,
                field=spec.field,
                loss_weight=spec.loss_weight,
                n_train=spec.samples.train,
                n_test=spec.samples.test,
                n_test_anomalous=spec.samples.test_anomalous,
                label_disagreements=[dict(d) for d in spec.label_disagreements],
                modalities=[
                    TaskModality(position=i, modality=m) for i, m in enumerate(spec.modalities)
                ],
                classes=[TaskClass(position=i, name=c) for i, c in enumerate(spec.classes)],
            )
            for spec in specs
        ]
        session.add_all(tasks)
        session.flush()
        return [_task_info(task, 0) for task in tasks]

    return transaction(registry.engine, work)


def list_tasks(registry: Registry) -> list[TaskInfo]:
    """All registered tasks, in registration order."""

    def work(session: Session) -> list[TaskInfo]:
        replay_counts = _replay_counts(session)
        tasks = session.scalars(_task_query().order_by(Task.id)).all()
        return [_task_info(task, replay_counts.get(task.id, 0)) for task in tasks]

    return transaction(registry.engine, work)


def get_task(registry: Registry, name: str) -> TaskInfo:
    def work(session: Session) -> TaskInfo:
        task = _get_task(session, name)
        return _task_info(task, _replay_counts(session, task.id).get(task.id, 0))

    return transaction(registry.engine, work)


def remove_task(registry: Registry, name: str) -> None:
    """Unregister a task that no stage has trained (or is training) and none evaluated."""

    def work(session: Session) -> None:
        task = _get_task(session, name)
        if task.trained_in_stage is not None:
            raise UserError(
                f"task {name!r} was trained in stage {task.trained_in_stage}; trained tasks are "
                "part of the model's history and cannot be removed"
            )
        running = session.scalars(
            select(Stage.number)
            .join(StageTask)
            .where(StageTask.task_id == task.id, Stage.status == "running")
        ).first()
        if running is not None:
            raise UserError(f"task {name!r} is being trained by stage {running}, which is running")
        if session.scalar(select(func.count()).where(Evaluation.task_id == task.id)):
            raise UserError(f"task {name!r} has evaluations recorded and cannot be removed")
        session.delete(task)

    transaction(registry.engine, work)


def _task_query():
    return select(Task).options(selectinload(Task.modalities), selectinload(Task.classes))


def _get_task(session: Session, name: str) -> Task:
    task = session.scalars(_task_query().where(Task.name == name)).one_or_none()
    if task is None:
        known = session.scalars(select(Task.name).order_by(Task.id)).all()
        listing = ", ".join(known) if known else "none registered"
        raise UserError(f"no task named {name!r} (known tasks: {listing})")
    return task


def _get_tasks(session: Session, names: Sequence[str]) -> list[Task]:
    return [_get_task(session, name) for name in names]


def _replay_counts(session: Session, task_id: int | None = None) -> dict[int, int]:
    query = (
        select(ReplayBuffer.task_id, func.count(ReplaySample.position))
        .join(ReplaySample)
        .group_by(ReplayBuffer.task_id)
    )
    if task_id is not None:
        query = query.where(ReplayBuffer.task_id == task_id)
    return {task_id: count for task_id, count in session.execute(query)}


def _task_info(task: Task, replay_samples: int) -> TaskInfo:
    return TaskInfo(
        name=task.name,
        format=task.format,
        root=task.root,
        modalities=tuple(m.modality for m in task.modalities),
        classes=tuple(c.name for c in task.classes),
        field=task.field,
        loss_weight=task.loss_weight,
        samples=SampleCounts(task.n_train, task.n_test, task.n_test_anomalous),
        label_disagreements=tuple(task.label_disagreements or ()),
        trained_in_stage=task.trained_in_stage,
        replay_samples=replay_samples,
        created_at=task.created_at,
    )


# --------------------------------------------------------------------------- stages


def start_stage(
    registry: Registry,
    kind: str,
    tasks: Sequence[str],
    *,
    parent: int | None = None,
    number: int | None = None,
    config: dict[str, Any] | None = None,
    seed: int | None = None,
    trainable_params: int | None = None,
    total_params: int | None = None,
    trainable_names: Sequence[str] = (),
) -> StageInfo:
    """Record a running stage that trains `tasks` (untrained, registered).

    `number` defaults to one past the highest stage (0 for the first). Giving the number of a
    failed stage restarts it: its old record (artifact, evaluations) is replaced.
    """

    def work(session: Session) -> StageInfo:
        if kind not in STAGE_KINDS:
            raise UserError(f"stage kind {kind!r} is not one of {', '.join(STAGE_KINDS)}")
        if not tasks:
            raise UserError("a stage needs at least one task")
        rows = _get_tasks(session, tasks)
        for task in rows:
            if task.trained_in_stage is not None:
                raise UserError(
                    f"task {task.name!r} was already trained in stage {task.trained_in_stage}"
                )
        if parent is not None:
            parent_stage = _get_stage(session, parent)
            if parent_stage.status != "completed":
                raise UserError(f"parent stage {parent} is {parent_stage.status}, not completed")
        elif kind == "incremental":
            raise UserError("an incremental stage needs a parent stage")
        stage_number = number
        if stage_number is None:
            highest = session.scalar(select(func.max(Stage.number)))
            stage_number = 0 if highest is None else highest + 1
        old = session.get(Stage, stage_number)
        if old is not None:
            if old.status != "failed":
                raise UserError(f"stage {stage_number} exists and is {old.status}")
            _purge_results(session, old)
            session.delete(old)
            session.flush()
        stage = Stage(
            number=stage_number,
            kind=kind,
            status="running",
            parent_number=parent,
            trainable_params=trainable_params,
            total_params=total_params,
            trainable_names=list(trainable_names),
            config=dict(config or {}),
            seed=seed,
            stage_tasks=[StageTask(task=task, position=i) for i, task in enumerate(rows)],
        )
        session.add(stage)
        session.flush()
        return _stage_info(stage)

    return transaction(registry.engine, work)


def complete_stage(
    registry: Registry,
    number: int,
    *,
    artifact: ArtifactInfo,
    seconds: float,
    trainable_params: int | None = None,
    total_params: int | None = None,
    trainable_names: Sequence[str] | None = None,
    evaluations: Iterable[EvaluationRow] = (),
    replay_buffers: Sequence[ReplayBufferSpec] = (),
) -> StageInfo:
    """Mark a running stage completed with the file it wrote, and its tasks trained by it.

    `evaluations` and `replay_buffers`, the stage's results, are recorded in the same
    transaction: a stage is either completed with all of its results or has none of them,
    whatever moment a crash comes.
    """
    evaluations = _checked_rows(evaluations)

    def work(session: Session) -> StageInfo:
        stage = _get_stage(session, number)
        if stage.status != "running":
            raise UserError(f"stage {number} is {stage.status}, not running")
        _record_evaluations(session, number, evaluations)
        for buffer in replay_buffers:
            _record_replay_buffer(session, buffer, number)
        stage.status = "completed"
        stage.finished_at = utcnow()
        stage.seconds = seconds
        stage.artifact = Artifact(
            kind=artifact.kind, path=artifact.path, sha256=artifact.sha256, bytes=artifact.bytes
        )
        if trainable_params is not None:
            stage.trainable_params = trainable_params
        if total_params is not None:
            stage.total_params = total_params
        if trainable_names is not None:
            stage.trainable_names = list(trainable_names)
        for link in stage.stage_tasks:
            link.task.trained_in_stage = number
        session.flush()
        return _stage_info(stage)

    return transaction(registry.engine, work)


def fail_stage(registry: Registry, number: int, error: str) -> StageInfo:
    """Mark a running stage failed; its tasks stay untrained and can be trained again.

    Results it recorded before it died (evaluation rows, replay buffers of its tasks) are
    removed: they are not part of the history."""

    def work(session: Session) -> StageInfo:
        stage = _get_stage(session, number)
        if stage.status != "running":
            raise UserError(f"stage {number} is {stage.status}, not running")
        stage.status = "failed"
        stage.finished_at = utcnow()
        stage.error = error
        _purge_results(session, stage)
        session.flush()
        return _stage_info(stage)

    return transaction(registry.engine, work)


def discard_stage(registry: Registry, number: int) -> None:
    """Delete a running stage as if it had never started (with anything it recorded): for a
    stage that stopped on bad input before it trained anything, so the command changes
    nothing."""

    def work(session: Session) -> None:
        stage = _get_stage(session, number)
        if stage.status != "running":
            raise UserError(f"stage {number} is {stage.status}, not running")
        _purge_results(session, stage)
        session.delete(stage)

    transaction(registry.engine, work)


def _purge_results(session: Session, stage: Stage) -> None:
    """Delete what an unfinished `stage` recorded: its evaluation rows and the replay
    buffers of its (still untrained) tasks."""
    session.execute(delete(Evaluation).where(Evaluation.stage_number == stage.number))
    for link in stage.stage_tasks:
        task = link.task
        if task.trained_in_stage is None and task.replay_buffer is not None:
            session.delete(task.replay_buffer)
            task.replay_buffer = None
    session.flush()


def list_stages(registry: Registry) -> list[StageInfo]:
    def work(session: Session) -> list[StageInfo]:
        stages = session.scalars(_stage_query().order_by(Stage.number)).all()
        return [_stage_info(stage) for stage in stages]

    return transaction(registry.engine, work)


def get_stage(registry: Registry, number: int) -> StageInfo:
    return transaction(registry.engine, lambda session: _stage_info(_get_stage(session, number)))


def _stage_query():
    return select(Stage).options(
        selectinload(Stage.stage_tasks).selectinload(StageTask.task),
        selectinload(Stage.artifact),
    )


def _get_stage(session: Session, number: int) -> Stage:
    stage = session.scalars(_stage_query().where(Stage.number == number)).one_or_none()
    if stage is None:
        raise UserError(f"no stage {number} in the registry")
    return stage


def _stage_info(stage: Stage) -> StageInfo:
    artifact = stage.artifact
    return StageInfo(
        number=stage.number,
        kind=stage.kind,
        status=stage.status,
        parent=stage.parent_number,
        tasks=tuple(link.task.name for link in stage.stage_tasks),
        trainable_params=stage.trainable_params,
        total_params=stage.total_params,
        trainable_names=tuple(stage.trainable_names),
        config=dict(stage.config),
        seed=stage.seed,
        started_at=stage.started_at,
        finished_at=stage.finished_at,
        seconds=stage.seconds,
        error=stage.error,
        artifact=ArtifactInfo(artifact.kind, artifact.path, artifact.sha256, artifact.bytes)
        if artifact
        else None,
    )


# --------------------------------------------------------------------------- replay buffers


def record_replay_buffer(
    registry: Registry,
    task: str,
    *,
    policy: str,
    seed: int,
    ratio: float,
    samples: Sequence[ReplayItem],
    stage: int | None = None,
) -> ReplayBufferInfo:
    """Store the samples kept for replay of `task`, replacing any earlier buffer of it."""

    spec = ReplayBufferSpec(task, policy, seed, ratio, tuple(samples))

    def work(session: Session) -> ReplayBufferInfo:
        if stage is not None:
            _get_stage(session, stage)
        return _buffer_info(_record_replay_buffer(session, spec, stage), task)

    return transaction(registry.engine, work)


def _record_replay_buffer(session: Session, spec: ReplayBufferSpec, stage: int | None) -> ReplayBuffer:
    row = _get_task(session, spec.task)
    if row.replay_buffer is not None:
        session.delete(row.replay_buffer)
        session.flush()
    row.replay_buffer = ReplayBuffer(
        policy=spec.policy,
        seed=spec.seed,
        ratio=spec.ratio,
        stage_number=stage,
        samples=[
            ReplaySample(position=i, cls=item.cls, stem=item.stem, paths=list(item.paths))
            for i, item in enumerate(spec.samples)
        ],
    )
    session.flush()
    return row.replay_buffer


def get_replay_buffer(registry: Registry, task: str) -> ReplayBufferInfo | None:
    def work(session: Session) -> ReplayBufferInfo | None:
        row = _get_task(session, task)
        return _buffer_info(row.replay_buffer, task) if row.replay_buffer else None

    return transaction(registry.engine, work)


def _buffer_info(buffer: ReplayBuffer, task: str) -> ReplayBufferInfo:
    return ReplayBufferInfo(
        task=task,
        policy=buffer.policy,
        seed=buffer.seed,
        ratio=buffer.ratio,
        stage=buffer.stage_number,
        samples=tuple(ReplayItem(s.cls, s.stem, tuple(s.paths)) for s in buffer.samples),
    )


# --------------------------------------------------------------------------- evaluations


def record_evaluations(registry: Registry, stage: int, rows: Iterable[EvaluationRow]) -> int:
    """Store metric values measured after `stage`; a value already there is replaced.

    Returns the number of rows written.
    """
    rows = _checked_rows(rows)

    def work(session: Session) -> int:
        _get_stage(session, stage)
        return _record_evaluations(session, stage, rows)

    return transaction(registry.engine, work)


def _checked_rows(rows: Iterable[EvaluationRow]) -> list[EvaluationRow]:
    rows = list(rows)
    for row in rows:
        if not math.isfinite(row.value):
            raise ValueError(f"evaluation value {row} is not a finite number")
    return rows


def _record_evaluations(session: Session, stage: int, rows: list[EvaluationRow]) -> int:
    task_ids = {name: _get_task(session, name).id for name in {row.task for row in rows}}
    existing = {
        (e.task_id, e.cls, e.metric): e
        for e in session.scalars(select(Evaluation).where(Evaluation.stage_number == stage))
    }
    for row in rows:
        key = (task_ids[row.task], row.cls, row.metric)
        if key in existing:
            existing[key].value = row.value
        else:
            existing[key] = Evaluation(
                stage_number=stage,
                task_id=key[0],
                cls=row.cls,
                metric=row.metric,
                value=row.value,
            )
            session.add(existing[key])
    return len(rows)


def list_evaluations(
    registry: Registry, *, stage: int | None = None, tasks: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One dict per (stage, task, class): `{stage, task, class, <metric>: value, ...}`, for
    completed stages only (the history)."""

    def work(session: Session) -> list[dict[str, Any]]:
        query = (
            select(Evaluation.stage_number, Task.name, Evaluation.cls, Evaluation.metric,
                   Evaluation.value)
            .join(Task)
            .join(Stage, Stage.number == Evaluation.stage_number)
            .where(Stage.status == "completed")
            .order_by(Evaluation.stage_number, Task.id, Evaluation.cls, Evaluation.metric)
        )
        if stage is not None:
            query = query.where(Evaluation.stage_number == stage)
        if tasks is not None:
            _get_tasks(session, tasks)
            query = query.where(Task.name.in_(tasks))
        grouped: dict[tuple[int, str, str], dict[str, Any]] = {}
        for number, task, cls, metric, value in session.execute(query):
            key = (number, task, cls)
            grouped.setdefault(key, {"stage": number, "task": task, "class": cls})[metric] = value
        return list(grouped.values())

    return transaction(registry.engine, work)


def evaluation_matrix(registry: Registry, metric: str) -> dict[str, dict[int, float]]:
    """R[task][stage] for `metric`: the mean over the task's classes, tasks in registration
    order, completed stages ascending; only (task, stage) pairs that were evaluated appear."""

    def work(session: Session) -> dict[str, dict[int, float]]:
        query = (
            select(Task.name, Evaluation.stage_number, func.avg(Evaluation.value))
            .join(Task)
            .join(Stage, Stage.number == Evaluation.stage_number)
            .where(Evaluation.metric == metric, Stage.status == "completed")
            .group_by(Task.id, Task.name, Evaluation.stage_number)
            .order_by(Task.id, Evaluation.stage_number)
        )
        matrix: dict[str, dict[int, float]] = defaultdict(dict)
        for task, number, value in session.execute(query):
            matrix[task][number] = float(value)
        return dict(matrix)

    return transaction(registry.engine, work)


def evaluation_matrices(registry: Registry) -> dict[str, dict[str, dict[int, float]]]:
    """`evaluation_matrix` of every metric at once (one query): metric -> task -> stage -> mean."""

    def work(session: Session) -> dict[str, dict[str, dict[int, float]]]:
        query = (
            select(Evaluation.metric, Task.name, Evaluation.stage_number, func.avg(Evaluation.value))
            .join(Task)
            .join(Stage, Stage.number == Evaluation.stage_number)
            .where(Stage.status == "completed")
            .group_by(Evaluation.metric, Task.id, Task.name, Evaluation.stage_number)
            .order_by(Evaluation.metric, Task.id, Evaluation.stage_number)
        )
        out: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for metric, task, number, value in session.execute(query):
            out[metric][task][number] = float(value)
        return {m: dict(rows) for m, rows in out.items()}

    return transaction(registry.engine, work)
