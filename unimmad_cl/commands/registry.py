"""Registry commands: init, add-task, tasks, show-task, remove-task, db.

They import sqlalchemy, alembic, yaml and the readers, never torch: they must start fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from registry import migrate, store
from registry.definitions import load_definitions, parse_definition, resolve
from unimmad_cl.data.readers import FORMATS
from unimmad_cl.errors import UserError
from unimmad_cl.workspace import Workspace


def _workspace(obj: dict) -> Workspace:
    return Workspace.resolve(obj["workspace"], obj["db_url"])


@click.command("init")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding the datasets; a task's root defaults to <data-root>/<name>.",
)
@click.pass_obj
def init(obj: dict, data_root: Path | None) -> None:
    """Create the workspace and its registry (or upgrade it); optionally set the data root."""
    workspace = _workspace(obj)
    if data_root is not None:
        data_root = data_root.expanduser().resolve()
        if not data_root.is_dir():
            raise UserError(f"--data-root {data_root} does not exist or is not a folder")
    with workspace.open_registry() as registry:
        if data_root is not None:
            store.set_data_root(registry, str(data_root))
        click.echo(f"workspace  {workspace.path}")
        click.echo(f"registry   {_shown(workspace.db_url)} (schema {migrate.head()})")
        click.echo(f"data root  {workspace.data_root(registry)}")


@click.command("add-task")
@click.option("--name", help="Task name: letters, digits, '_' and '-'.")
@click.option(
    "--modality",
    "modalities",
    multiple=True,
    help="Modality, repeatable, in order (1 to 4; e.g. rgb, depth, infrared, mri_t1). "
    "Default: the format's usual ones.",
)
@click.option("--format", "fmt", help=f"Dataset layout: {', '.join(FORMATS)} (default folder).")
@click.option(
    "--root", type=click.Path(path_type=Path), help="Data root (default <data-root>/<name>)."
)
@click.option(
    "--class", "classes", multiple=True, help="Class to include, repeatable (default all)."
)
@click.option("--field", help="industrial, medical, synthetic, ... (default from the format).")
@click.option("--loss-weight", type=float, help="Weight of this task's loss (default 1.0).")
@click.option(
    "--from",
    "from_file",
    type=click.Path(path_type=Path),
    help="YAML file with one task definition or a list of them (registered all or nothing).",
)
@click.pass_obj
def add_task(
    obj: dict,
    name: str | None,
    modalities: tuple[str, ...],
    fmt: str | None,
    root: Path | None,
    classes: tuple[str, ...],
    field: str | None,
    loss_weight: float | None,
    from_file: Path | None,
) -> None:
    """Register a task (a dataset root, its classes and modalities), checked against the data."""
    flags = {"--name": name, "--modality": modalities, "--format": fmt, "--root": root,
             "--class": classes, "--field": field, "--loss-weight": loss_weight}
    given = [flag for flag, value in flags.items() if value not in (None, ())]
    if from_file is not None and given:
        raise UserError(f"--from takes the whole definition from the file; drop {given[0]}")
    if from_file is None and name is None:
        raise UserError("give --name (and the task's flags) or --from FILE.yaml")
    workspace = _workspace(obj)
    with workspace.open_registry() as registry:
        data_root = workspace.data_root(registry)
        if from_file is not None:
            specs = load_definitions(from_file, data_root=data_root)
        else:
            definition = parse_definition(
                name,
                format=fmt or "folder",
                root=root,
                modalities=modalities,
                classes=classes,
                field=field,
                loss_weight=1.0 if loss_weight is None else loss_weight,
            )
            specs = [resolve(definition, data_root=data_root)]
        for task in store.add_tasks(registry, specs):
            counts = task.samples
            click.echo(
                f"added task {task.name}: {len(task.classes)} classes, "
                f"modalities {', '.join(task.modalities)}; {counts.train} train, "
                f"{counts.test} test ({counts.test_anomalous} anomalous)"
            )
            where = ""
            if Path(task.root) == Path(data_root).expanduser().resolve():
                where = f" (the data root itself: {task.classes[0]} sits directly under it, not in <data-root>/{task.name})"
            click.echo(f"  root {task.root}{where}")
            if task.label_disagreements:
                n = len(task.label_disagreements)
                click.echo(
                    f"  {n} label disagreement{'s' if n != 1 else ''} between the dataset's label file and the "
                    f"masks: the label file wins (list: unimmad-cl show-task {task.name})"
                )


@click.command("tasks")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of show-task objects.")
@click.pass_obj
def tasks(obj: dict, as_json: bool) -> None:
    """List the registered tasks."""
    workspace = _workspace(obj)
    with workspace.open_registry() as registry:
        found = store.list_tasks(registry)
        training = _unfinished_training(workspace, registry, found)
    if as_json:
        click.echo(json.dumps([{**task.to_json(), "training": training[task.name]} for task in found], indent=2))
        return
    if not found:
        click.echo("no tasks registered; add one with `unimmad-cl add-task`")
        return
    header = ("NAME", "FORMAT", "FIELD", "MODALITIES", "CLASSES", "TRAIN", "TEST", "ANOMALOUS",
              "TRAINED IN", "ROOT")
    rows = [
        (
            task.name,
            task.format,
            task.field,
            ",".join(task.modalities),
            str(len(task.classes)),
            str(task.samples.train),
            str(task.samples.test),
            str(task.samples.test_anomalous),
            "-" if task.trained_in_stage is None else f"stage {task.trained_in_stage}",
            task.root,
        )
        for task in found
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@click.command("show-task")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the task as a JSON object.")
@click.pass_obj
def show_task(obj: dict, name: str, as_json: bool) -> None:
    """Show one task: data, classes, modalities, sample counts, training and replay state."""
    workspace = _workspace(obj)
    with workspace.open_registry() as registry:
        task = store.get_task(registry, name)
        training = _unfinished_training(workspace, registry, [task])[name]
    if as_json:
        click.echo(json.dumps({**task.to_json(), "training": training}, indent=2))
        return
    counts = task.samples
    trained = "not yet" if task.trained_in_stage is None else f"stage {task.trained_in_stage}"
    if training is not None:
        trained += f"; stage {training['stage']} is {training['status']}"
        if training["note"]:
            trained += f" ({training['note']})"
    for label, value in (
        ("name", task.name),
        ("format", task.format),
        ("root", task.root),
        ("field", task.field),
        ("modalities", ", ".join(task.modalities)),
        ("classes", ", ".join(task.classes)),
        ("loss weight", f"{task.loss_weight:g}"),
        ("samples", f"{counts.train} train, {counts.test} test "
                    f"({counts.test_anomalous} anomalous)"),
        ("trained in", trained),
        ("replay", f"{task.replay_samples} samples"),
    ):
        click.echo(f"{label:<13}{value}")
    if training is not None and training["resume"]:
        click.echo(f"{'resume':<13}{training['resume']}")
    if task.label_disagreements:
        n = len(task.label_disagreements)
        click.echo(f"{'labels':<13}{n} disagreement{'s' if n != 1 else ''} between data.csv and the masks "
                   "(data.csv wins; the mask is used for pixels only where the labels agree):")
        for d in task.label_disagreements:
            mask = "no mask file" if d.get("mask") is None else (
                "mask empty" if d.get("mask_label") == 0 else "mask has pixels")
            click.echo(f"{'':<13}{d['class']}/{d['defect']}/{d['stem']} {d['modality']}: "
                       f"data.csv {d['csv_label']}, {mask} -> label {d['csv_label']}")


def _unfinished_training(workspace: Workspace, registry, tasks) -> dict[str, dict | None]:
    """Per task, the unfinished stage (running, interrupted or failed) that trains it, if
    any: `{stage, status, note, resume}` (the status as `stages` shows it), else None."""
    from unimmad_cl.training.lock import stage_states

    found = store.list_stages(registry)
    unfinished = [s for s in found if s.status != "completed"]
    states = stage_states(workspace.path, found) if unfinished else {}
    out: dict[str, dict | None] = {}
    for task in tasks:
        mine = [s for s in unfinished if task.name in s.tasks] if task.trained_in_stage is None else []
        if not mine:
            out[task.name] = None
            continue
        state = states[mine[-1].number]
        out[task.name] = {"stage": mine[-1].number, "status": state.status, "note": state.note,
                          "resume": state.resume}
    return out


@click.command("remove-task")
@click.argument("name")
@click.pass_obj
def remove_task(obj: dict, name: str) -> None:
    """Unregister a task that has not been trained."""
    with _workspace(obj).open_registry() as registry:
        store.remove_task(registry, name)
    click.echo(f"removed task {name}")


@click.group("db")
def db() -> None:
    """Registry schema: upgrade, downgrade, current revision."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_obj
def db_upgrade(obj: dict, revision: str) -> None:
    """Upgrade the registry schema to REVISION (default: head)."""
    with _workspace(obj).open_registry(upgrade=False) as registry:
        migrate.upgrade(registry.engine, revision)
        click.echo(f"registry at {_revision(registry)}")


@db.command("downgrade")
@click.argument("revision")
@click.pass_obj
def db_downgrade(obj: dict, revision: str) -> None:
    """Downgrade the registry schema to REVISION ('base' empties it; -1 is one step)."""
    with _workspace(obj).open_registry(upgrade=False) as registry:
        migrate.downgrade(registry.engine, revision)
        click.echo(f"registry at {_revision(registry)}")


@db.command("current")
@click.pass_obj
def db_current(obj: dict) -> None:
    """Print the registry's schema revision."""
    with _workspace(obj).open_registry(upgrade=False) as registry:
        click.echo(_revision(registry))


def _revision(registry: store.Registry) -> str:
    current, head = migrate.current(registry.engine), migrate.head()
    if current == head:
        return f"{current} (head)"
    return f"{current or 'base (empty)'}; head is {head}"


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
