"""Training history: stages, their tasks and artifacts, replay buffers, evaluations.

Adds `tasks.trained_in_stage`, a foreign key that SQLite can only add by rebuilding the table
(batch mode), which keeps the tasks' rows and the rows that refer to them.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stages",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parent_number", sa.Integer(), nullable=True),
        sa.Column("trainable_params", sa.Integer(), nullable=True),
        sa.Column("total_params", sa.Integer(), nullable=True),
        sa.Column("trainable_names", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["parent_number"], ["stages.number"], name="fk_stages_parent_number_stages"
        ),
        sa.PrimaryKeyConstraint("number", name="pk_stages"),
    )
    op.create_table(
        "stage_tasks",
        sa.Column("stage_number", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stage_number"],
            ["stages.number"],
            name="fk_stage_tasks_stage_number_stages",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_stage_tasks_task_id_tasks", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("stage_number", "task_id", name="pk_stage_tasks"),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stage_number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stage_number"],
            ["stages.number"],
            name="fk_artifacts_stage_number_stages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
        sa.UniqueConstraint("stage_number", name="uq_artifacts_stage_number"),
    )
    op.create_table(
        "replay_buffers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("stage_number", sa.Integer(), nullable=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("ratio", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["stage_number"],
            ["stages.number"],
            name="fk_replay_buffers_stage_number_stages",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_replay_buffers_task_id_tasks", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_replay_buffers"),
        sa.UniqueConstraint("task_id", name="uq_replay_buffers_task_id"),
    )
    op.create_table(
        "replay_samples",
        sa.Column("buffer_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("cls", sa.String(255), nullable=False),
        sa.Column("stem", sa.String(255), nullable=False),
        sa.Column("paths", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["buffer_id"],
            ["replay_buffers.id"],
            name="fk_replay_samples_buffer_id_replay_buffers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("buffer_id", "position", name="pk_replay_samples"),
        sa.UniqueConstraint(
            "buffer_id", "cls", "stem", name="uq_replay_samples_buffer_id_cls_stem"
        ),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stage_number", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("cls", sa.String(255), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stage_number"],
            ["stages.number"],
            name="fk_evaluations_stage_number_stages",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_evaluations_task_id_tasks"),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.UniqueConstraint(
            "stage_number",
            "task_id",
            "cls",
            "metric",
            name="uq_evaluations_stage_number_task_id_cls_metric",
        ),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("trained_in_stage", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_tasks_trained_in_stage_stages", "stages", ["trained_in_stage"], ["number"]
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint("fk_tasks_trained_in_stage_stages", type_="foreignkey")
        batch.drop_column("trained_in_stage")
    op.drop_table("evaluations")
    op.drop_table("replay_samples")
    op.drop_table("replay_buffers")
    op.drop_table("artifacts")
    op.drop_table("stage_tasks")
    op.drop_table("stages")

