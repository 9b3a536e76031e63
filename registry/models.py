"""The registry's tables, all on one declarative Base.

Every constraint gets a name from the naming convention below: Alembic's batch mode on SQLite
recreates tables and must find constraints by name, and autogenerate compares them by name.
Schema changes go through a new revision in `migrations/versions/`; a test fails when these
models and the migrations disagree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LENGTH = 64


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Setting(Base):
    """Workspace-wide settings kept in the registry (e.g. `data_root` from `init`)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Task(Base):
    """A registered task: one dataset root, its classes and its ordered modalities.

    The sample counts are taken from the data when the task is registered, so that listing
    tasks never walks the data trees.
    """

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    format: Mapped[str] = mapped_column(String(32))
    root: Mapped[str] = mapped_column(Text)
    field: Mapped[str] = mapped_column(String(32))
    loss_weight: Mapped[float] = mapped_column(Float)
    n_train: Mapped[int] = mapped_column(Integer)
    n_test: Mapped[int] = mapped_column(Integer)
    n_test_anomalous: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    trained_in_stage: Mapped[int | None] = mapped_column(ForeignKey("stages.number"))
    # Where the dataset's own label file disagrees with the masks (MulSen-AD data.csv):
    # [{class, defect, stem, modality, csv_label, mask_label, mask}], see readers/mulsen.py.
    label_disagreements: Mapped[list[Any]] = mapped_column(default=list)

    modalities: Mapped[list[TaskModality]] = relationship(
        order_by="TaskModality.position", cascade="all, delete-orphan"
    )
    classes: Mapped[list[TaskClass]] = relationship(
        order_by="TaskClass.position", cascade="all, delete-orphan"
    )
    replay_buffer: Mapped[ReplayBuffer | None] = relationship(
        back_populates="task", cascade="all, delete-orphan"
    )


class TaskModality(Base):
    __tablename__ = "task_modalities"
    __table_args__ = (UniqueConstraint("task_id", "modality"),)

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    modality: Mapped[str] = mapped_column(String(32))


class TaskClass(Base):
    __tablename__ = "task_classes"
    __table_args__ = (UniqueConstraint("task_id", "name"),)

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))


class StageTask(Base):
    """Which tasks a stage trains, in the order the stage was given them."""

    __tablename__ = "stage_tasks"

    stage_number: Mapped[int] = mapped_column(
        ForeignKey("stages.number", ondelete="CASCADE"), primary_key=True
    )
    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer)

    task: Mapped[Task] = relationship()


class Stage(Base):
    """A training stage: 0 is the base stage, 1.. are incremental stages (one delta each)."""

    __tablename__ = "stages"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    parent_number: Mapped[int | None] = mapped_column(ForeignKey("stages.number"))
    trainable_params: Mapped[int | None] = mapped_column(Integer)
    total_params: Mapped[int | None] = mapped_column(Integer)
    trainable_names: Mapped[list[Any]] = mapped_column(default=list)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)

    stage_tasks: Mapped[list[StageTask]] = relationship(
        order_by="StageTask.position", cascade="all, delete-orphan", passive_deletes=True
    )
    artifact: Mapped[Artifact | None] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class Artifact(Base):
    """The file a stage wrote: full weights for the base stage (kind "base"), else a "delta"."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_number: Mapped[int] = mapped_column(
        ForeignKey("stages.number", ondelete="CASCADE"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)


class ReplayBuffer(Base):
    """The training samples kept for replay for one trained task, and how they were chosen."""

    __tablename__ = "replay_buffers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), unique=True
    )
    stage_number: Mapped[int | None] = mapped_column(
        ForeignKey("stages.number", ondelete="SET NULL")
    )
    policy: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    ratio: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    task: Mapped[Task] = relationship(back_populates="replay_buffer")
    samples: Mapped[list[ReplaySample]] = relationship(
        order_by="ReplaySample.position", cascade="all, delete-orphan", passive_deletes=True
    )


class ReplaySample(Base):
    """One kept sample, identified by class and stem; `paths` are its modality files."""

    __tablename__ = "replay_samples"
    __table_args__ = (UniqueConstraint("buffer_id", "cls", "stem"),)

    buffer_id: Mapped[int] = mapped_column(
        ForeignKey("replay_buffers.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    cls: Mapped[str] = mapped_column(String(255))
    stem: Mapped[str] = mapped_column(String(255))
    paths: Mapped[list[Any]] = mapped_column()


class Evaluation(Base):
    """One metric value of one class of one task after one stage."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("stage_number", "task_id", "cls", "metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_number: Mapped[int] = mapped_column(ForeignKey("stages.number", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    cls: Mapped[str] = mapped_column(String(255))
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
