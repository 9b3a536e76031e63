"""Base and incremental stages: what trains, on which data, what is written and recorded.

Stage 0 (base) trains the whole model jointly on its tasks and writes `models/base.safetensors`.
Every later stage trains one new task with only the incremental subset of parameters
(MoE-Leaders, condition routers, aggregation convs) on the task's training set plus the
replay buffers of all earlier tasks, and writes `models/stage_NNN.delta.safetensors` with just
the tensors it may change. After each stage every task trained so far is evaluated and the
metrics are stored: the history behind forgetting curves.

Order of writes in a stage, so that a crash at any point leaves a consistent registry:
stage row "running" → per-epoch checkpoints → artifact file (atomic rename) → evaluation
summary file → ONE transaction: evaluations, replay buffers, stage "completed" and its tasks
marked trained → checkpoint removed. An interrupted stage is marked failed (or found "running" by the next command,
which holds the workspace lock, so it must be dead) and the same command resumes it from its
last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from registry import store
from registry.store import ArtifactInfo, EvaluationRow, ReplayItem, StageInfo, TaskInfo
from unimmad_cl.config import ModelConfig, TrainConfig
from unimmad_cl.data.dataset import MultiTaskDataset, TaskDataset, collate
from unimmad_cl.data.readers import list_samples
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError
from unimmad_cl.evaluation.runner import EvaluationResult, evaluate_task
from unimmad_cl.files import write_text_atomic
from unimmad_cl.model.io import save_model
from unimmad_cl.model.unimmad import UniMMAD, freeze_for_incremental
from unimmad_cl.training import artifacts, features, replay
from unimmad_cl.training.checkpoint import CHECKPOINTS_DIR, checkpoint_path, load_checkpoint, read_checkpoint_info, save_checkpoint
from unimmad_cl.training.distributed import SINGLE, Dist, barrier, decide, rank_device
from unimmad_cl.training.loop import EpochStats, make_feature_batches, make_loader, resolve_device, train_epochs
from unimmad_cl.workspace import EVALUATIONS_DIR, evaluation_summary_path


@dataclass
class Context:
    """Where a stage reads and writes, and how it talks to the user."""

    workspace: Path
    registry: store.Registry
    progress: bool = True
    echo: Callable[[str], None] = print
    # Under torchrun: this process's rank. Only rank 0 writes the registry and files.
    dist: Dist = SINGLE


@dataclass
class StageReport:
    number: int
    kind: str
    tasks: list[str]
    artifact: ArtifactInfo
    seconds: float
    trainable_params: int
    total_params: int
    resumed_from_epoch: int
    evaluation: dict[str, dict[str, float]]  # task -> mean metrics over its classes
    history: list[EpochStats] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def task_samples(task: TaskInfo, split: str) -> list[Sample]:
    return list_samples(task.format, task.root, task.modalities, split, task.classes, task=task.name)


def task_dataset(task: TaskInfo, task_id: int, model: UniMMAD, samples: Sequence[Sample]) -> TaskDataset:
    """The task's samples as the model takes them (its image size and input normalization)."""
    return TaskDataset(
        samples, model.config.image_size, task_id=task_id, loss_weight=task.loss_weight, classes=task.classes,
        normalization=model.normalization,
    )


def replay_samples(registry: store.Registry, task: TaskInfo) -> list[Sample]:
    """The recorded replay buffer of a trained task, as training samples."""
    buffer = store.get_replay_buffer(registry, task.name)
    if buffer is None:
        return []
    return [
        Sample(
            task=task.name, cls=item.cls, split="train", modalities=task.modalities, paths=item.paths,
            label=0, mask_path=None, defect="good", stem=item.stem,
        )
        for item in buffer.samples
    ]


def task_ids(registry: store.Registry) -> dict[str, int]:
    """Stable integer id per task: its registration position."""
    return {t.name: i for i, t in enumerate(store.list_tasks(registry))}


# --------------------------------------------------------------------------- models


def stage_chain(registry: store.Registry, number: int) -> list[StageInfo]:
    """Completed stages from the base to `number`, following parent links."""
    chain = []
    current: int | None = number
    while current is not None:
        stage = store.get_stage(registry, current)
        if stage.status != "completed" or stage.artifact is None:
            raise UserError(f"stage {current} is {stage.status}, not completed: it has no model")
        chain.append(stage)
        current = stage.parent
    return chain[::-1]


def model_at_stage(ctx: Context, number: int, device: str | torch.device = "cpu") -> UniMMAD:
    """Base + the deltas on the way to stage `number`, every file's sha256 verified."""
    chain = stage_chain(ctx.registry, number)
    files = [(ctx.workspace / s.artifact.path, s.artifact.sha256) for s in chain]
    return artifacts.load_chain(files, device)


def latest_completed_stage(registry: store.Registry) -> StageInfo | None:
    done = [s for s in store.list_stages(registry) if s.status == "completed"]
    return done[-1] if done else None


def trained_tasks_at(registry: store.Registry, number: int) -> list[TaskInfo]:
    """Tasks trained by the stages on the chain to `number`, in registration order."""
    numbers = {s.number for s in stage_chain(registry, number)}
    return [t for t in store.list_tasks(registry) if t.trained_in_stage in numbers]


# --------------------------------------------------------------------------- evaluation


def evaluate_tasks(
    ctx: Context, model: UniMMAD, tasks: Sequence[TaskInfo], config: TrainConfig, device: torch.device
) -> dict[str, EvaluationResult]:
    """Each task's test split through `model`: metrics, leader counts and the heatmap
    gallery (most/least anomalous images, every image's small map; see evaluation/gallery.py).

    With `config.feature_cache` and a disk budget, the frozen trunk's outputs of each test
    set are kept under `<workspace>/cache/features` (training/features.py): a task whose
    files, trunk weights and preprocessing are unchanged since it was last evaluated runs
    only through the C-MoEs."""
    from unimmad_cl.evaluation.gallery import K as GALLERY_K
    from unimmad_cl.training.features import EvaluationCache, note

    ids = task_ids(ctx.registry)
    datasets = [task_dataset(task, ids[task.name], model, task_samples(task, "test")) for task in tasks]
    cache = None
    if config.feature_cache:
        cache = EvaluationCache(ctx.workspace, model, config, progress=ctx.progress, echo=note(ctx.echo))
        if cache.enabled:
            cache.plan([(task.name, dataset) for task, dataset in zip(tasks, datasets)])
        else:
            cache = None
    results = {}
    for i, (task, dataset) in enumerate(zip(tasks, datasets), start=1):
        data = dataset
        if cache is not None:
            data = cache.batches(task.name, dataset, config.eval_batch_size, config.num_workers, device)
        results[task.name] = evaluate_task(
            model, data, task=task.name, batch_size=config.eval_batch_size,
            num_workers=config.num_workers, device=device, progress=ctx.progress, gallery=GALLERY_K,
            desc=f"evaluate {task.name} ({i}/{len(tasks)}{', cached features' if getattr(data, 'cached', False) else ''})",
        )
    if cache is not None and ctx.progress and cache.describe():
        note(ctx.echo)(cache.describe())
    return results


def evaluation_rows(results: dict[str, EvaluationResult]) -> list[EvaluationRow]:
    """Registry rows; undefined (NaN) metrics, e.g. pixel metrics without masks, are skipped."""
    rows = []
    for task, result in results.items():
        for cls, values in result.per_class.items():
            rows += [EvaluationRow(task, cls, m, float(v)) for m, v in values.items() if v == v]
    return rows


def write_evaluation_summary(ctx: Context, stage: int, results: dict[str, EvaluationResult]) -> Path:
    """`evaluations/stage_NNN.json`: per task the mean metrics and the MoE-Leader usage
    counts `[L, K, N_r]` (the report's task-isolation picture)."""
    summary = {
        task: {
            "mean": r.mean,
            "per_class": r.per_class,
            "leader_counts": r.leader_counts.tolist() if r.leader_counts is not None else None,
        }
        for task, r in results.items()
    }
    path = evaluation_summary_path(ctx.workspace, stage)
    write_text_atomic(path, json.dumps(summary, indent=1, allow_nan=True))
    from unimmad_cl.evaluation.gallery import write_stage_galleries

    # The report's heatmap gallery; the archive of every image's map for the tasks learned now.
    write_stage_galleries(ctx.workspace, stage, results, set(store.get_stage(ctx.registry, stage).tasks))
    return path


# --------------------------------------------------------------------------- stages


def _fingerprint(kind: str, tasks: list[str], parent: int | None, model: ModelConfig, train: TrainConfig) -> str:
    """What must match for a checkpoint to be resumed (device and loader workers may change)."""
    train_dict = {
        k: v for k, v in train.to_dict().items()
        if k not in ("device", "num_workers", "eval_batch_size") and not k.startswith("feature_cache")
    }
    text = json.dumps([kind, tasks, parent, model.to_dict(), train_dict], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _settle_unfinished(ctx: Context) -> StageInfo | None:
    """The unfinished stage, if any. One left "running" belongs to a dead process (the
    caller holds the workspace lock): it is marked failed so it can be resumed."""
    # Temporary files of writes a crash cut short (only our folders: `report` may be writing
    # elsewhere in the workspace right now).
    for folder in (artifacts.MODELS_DIR, CHECKPOINTS_DIR, EVALUATIONS_DIR):
        for stale in (ctx.workspace / folder).glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    unfinished = [s for s in store.list_stages(ctx.registry) if s.status != "completed"]
    if not unfinished:
        return None
    stage = unfinished[-1]
    if stage.status == "running":
        stage = store.fail_stage(ctx.registry, stage.number, "interrupted: the process ended before the stage finished")
    return stage


def _stage_number(unfinished: StageInfo | None, tasks: list[str], latest: StageInfo) -> int | None:
    """Reuse the number of an unfinished stage of the same tasks (resume/restart), unless a
    later stage completed meanwhile: stage numbers must grow along the chain of parents."""
    if unfinished is not None and list(unfinished.tasks) == tasks and unfinished.number > latest.number:
        return unfinished.number
    return None


def stage_optimizer(parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam as every stage trains with it: torch's fused kernel (one pass over every tensor
    instead of a Python loop per tensor: 3x faster per step on the CPU at the lite preset,
    BENCHMARKS.md "Training throughput"; parameters within 3e-8 of the loop after a step)
    where the parameters' device supports it."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, fused=fused)


def run_stage(
    ctx: Context,
    *,
    kind: str,
    number: int | None,
    tasks: list[TaskInfo],
    parent: StageInfo | None,
    model: UniMMAD,
    trainable: list[str],
    train_samples: dict[str, list[Sample]],
    replay_sets: list[TaskDataset],
    config: TrainConfig,
    device: torch.device,
    restart: bool,
) -> StageReport:
    """Train, write the artifact, evaluate, record replay buffers, complete."""
    features.disk_budget_bytes(config)  # a bad UNIMMAD_FEATURE_CACHE_MB fails before any work
    names = [t.name for t in tasks]
    ids = task_ids(ctx.registry)
    datasets = [task_dataset(t, ids[t.name], model, train_samples[t.name]) for t in tasks]
    dataset = MultiTaskDataset(datasets, replay=replay_sets)
    tensor_names = artifacts.stage_tensor_names(model, set(trainable))
    params = dict(model.named_parameters())
    optimizer = stage_optimizer([params[n] for n in trainable], config.lr)
    fingerprint = _fingerprint(kind, names, parent.number if parent else None, model.config, config)
    total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(params[n].numel() for n in trainable)

    d = ctx.dist
    ckpt = checkpoint_path(ctx.workspace, number) if number is not None else None

    def begin() -> tuple[int, int]:
        """Resume or restart decision (before any write), then the stage row."""
        start_epoch = 0
        if ckpt is not None and ckpt.exists():
            if restart:
                ckpt.unlink()
            else:
                info = read_checkpoint_info(ckpt)
                if info.fingerprint != fingerprint:
                    raise UserError(
                        f"checkpoint {ckpt} of stage {number} was made with other settings; rerun with the "
                        "same flags to resume it, or pass --restart to discard it"
                    )
                start_epoch = info.epochs_done
        stage = store.start_stage(
            ctx.registry, kind, names, parent=parent.number if parent else None, number=number,
            config=_stage_record(model, config), seed=config.seed,
            trainable_params=n_trainable, total_params=total, trainable_names=trainable,
        )
        return stage.number, start_epoch

    number, start_epoch = decide(d, begin)
    ckpt = checkpoint_path(ctx.workspace, number)
    if start_epoch:
        load_checkpoint(ckpt, model, optimizer, trainable)
    replay_count = sum(len(r) for r in replay_sets)
    ctx.echo(
        f"stage {number} ({kind}) on {', '.join(names)}: {len(dataset)} training samples "
        f"({replay_count} replayed), {n_trainable:,} of {total:,} parameters trainable"
        + (f", {d.world} processes" if d.active else "")
        + (f", resuming after epoch {start_epoch}" if start_epoch else "")
    )
    started = time.perf_counter()

    def on_epoch_end(stats: EpochStats) -> None:
        if d.is_main:
            save_checkpoint(ckpt, model, tensor_names, optimizer, trainable, stats.epoch + 1, names, fingerprint)
        barrier(d)
        ctx.echo(
            f"  epoch {stats.epoch + 1}/{config.epochs}  loss {stats.loss:.4f} "
            f"(consistency {stats.consistency:.4f}, balance {stats.load_balance:.4f})  "
            f"{stats.samples / max(stats.seconds, 1e-9):.1f} samples/s"
        )

    def finish() -> tuple[ArtifactInfo, dict[str, dict[str, float]], float]:
        artifact = _write_artifact(ctx, model, kind, number, parent, tensor_names, names)
        trained = [t for t in store.list_tasks(ctx.registry) if t.trained_in_stage is not None] + tasks
        model.eval()
        results = evaluate_tasks(ctx, model, trained, config, device)
        write_evaluation_summary(ctx, number, results)
        buffers = [
            store.ReplayBufferSpec(
                task.name, replay.POLICY, config.seed, config.replay_ratio,
                tuple(ReplayItem(s.cls, s.stem, s.paths) for s in replay_selection(train_samples[task.name], config)),
            )
            for task in tasks
        ]
        seconds = time.perf_counter() - started
        # Results and completion in one transaction: a crash leaves all of them or none.
        store.complete_stage(
            ctx.registry, number, artifact=artifact, seconds=seconds,
            evaluations=evaluation_rows(results), replay_buffers=buffers,
        )
        return artifact, {task: r.mean for task, r in results.items()}, seconds

    def batches():
        """Image batches, or, when the trunk is frozen (incremental subset), the same batches
        served from its features computed once (training/features.py)."""
        if start_epoch < config.epochs and features.training_cache_applies(model, config, kind):
            table = features.precompute_training(
                model, dataset, config, device, workspace=ctx.workspace, stage=number, progress=ctx.progress and d.is_main,
                echo=ctx.echo, rank=d.rank,
            )
            if table is not None:
                return make_feature_batches(table, dataset, config, d), table
        return make_loader(dataset, config, d), None

    table = None
    try:
        loader, table = batches()
        history = train_epochs(
            model, loader, optimizer, config, device, start_epoch=start_epoch,
            on_epoch_end=on_epoch_end, progress=ctx.progress, desc=f"stage {number}", d=d,
        )
        del loader
        features.release_training(table)
        table = None
        artifact, evaluation, seconds = decide(d, finish)
    except KeyboardInterrupt:
        features.release_training(table)
        if d.is_main:
            kept = read_checkpoint_info(ckpt).epochs_done if ckpt.exists() else 0
            store.fail_stage(ctx.registry, number, f"interrupted after epoch {kept}; rerun the command to resume")
        raise
    except BaseException as exc:
        features.release_training(table)
        if d.is_main:
            if isinstance(exc, UserError) and not ckpt.exists():
                # Bad input found before any epoch finished: leave the registry as it was.
                store.discard_stage(ctx.registry, number)
            else:
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                store.fail_stage(ctx.registry, number, f"{type(exc).__name__}: {first}")
        raise
    if d.is_main:
        ckpt.unlink(missing_ok=True)
    for task, mean in evaluation.items():
        ctx.echo(f"  {task}: I-AUROC {mean['i_auroc']:.3f}  P-AUROC {mean['p_auroc']:.3f}  AUPRO {mean['aupro']:.3f}")
    return StageReport(
        number, kind, names, artifact, seconds, n_trainable, total, start_epoch, evaluation, history
    )


def _stage_record(model: UniMMAD, config: TrainConfig) -> dict:
    """The settings a stage row keeps; a freshly built model adds where its backbone weights
    came from (package + version + sha256, file + sha256, hub or random)."""
    record = {"model": model.config.to_dict(), "train": config.to_dict()}
    if model.weights_provenance is not None:
        record["model_weights"] = model.weights_provenance.to_dict()
    return record


def replay_selection(samples: list[Sample], config: TrainConfig) -> list[Sample]:
    return replay.select_replay(samples, config.replay_ratio, config.seed)


def _write_artifact(
    ctx: Context, model: UniMMAD, kind: str, number: int, parent: StageInfo | None,
    tensor_names: list[str], tasks: list[str],
) -> ArtifactInfo:
    if kind == "base":
        rel = artifacts.base_file_name()
        save_model(model, ctx.workspace / rel, {"stage": str(number), "tasks": json.dumps(tasks)})
    else:
        rel = artifacts.delta_file_name(number)
        artifacts.write_delta(
            model, tensor_names, ctx.workspace / rel, stage=number, parent=parent.number,
            parent_sha256=parent.artifact.sha256, tasks=tasks,
        )
    path = ctx.workspace / rel
    return ArtifactInfo("base" if kind == "base" else "delta", rel, artifacts.sha256_file(path), path.stat().st_size)


def _select_tasks(registry: store.Registry, requested: Sequence[str] | None) -> list[TaskInfo]:
    """The requested tasks (checked to exist and be untrained), else every untrained task."""
    all_tasks = store.list_tasks(registry)
    if requested:
        by_name = {t.name: t for t in all_tasks}
        chosen = []
        for name in requested:
            if name not in by_name:
                raise UserError(f"--tasks: no task named {name!r} (known: {', '.join(by_name) or 'none'})")
            if by_name[name].trained_in_stage is not None:
                raise UserError(f"--tasks: task {name!r} was already trained in stage {by_name[name].trained_in_stage}")
            chosen.append(by_name[name])
        if len(set(requested)) != len(requested):
            raise UserError("--tasks: a task is named twice")
        return chosen
    return [t for t in all_tasks if t.trained_in_stage is None]


def train_base(
    ctx: Context,
    tasks: Sequence[str] | None,
    model_config: ModelConfig,
    config: TrainConfig,
    restart: bool = False,
) -> StageReport:
    """Stage 0: build the full model and train it jointly on `tasks` (default: all untrained)."""

    def plan() -> tuple[list[TaskInfo], dict[str, list[Sample]]]:
        if any(s.kind == "base" and s.status == "completed" for s in store.list_stages(ctx.registry)):
            raise UserError("the base stage is already trained; add new tasks with train-incremental")
        _settle_unfinished(ctx)
        chosen = _select_tasks(ctx.registry, tasks)
        if not chosen:
            raise UserError("no untrained tasks to train: register tasks with add-task first")
        return chosen, {t.name: _nonempty_train(t) for t in chosen}

    chosen, train_samples = decide(ctx.dist, plan)
    device = rank_device(ctx.dist, resolve_device(config.device))
    torch.manual_seed(config.seed)
    model = UniMMAD(model_config).to(device)
    ctx.echo(f"backbone {model_config.backbone}: {model.weights_provenance.describe()}")
    if model_config.backbone_weights is None:
        n = calibrate_random_backbone(ctx, model, chosen, train_samples, config, device)
        ctx.echo(f"random backbone: BatchNorm statistics estimated on {n} training images")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return run_stage(
        ctx, kind="base", number=0,
        tasks=chosen, parent=None, model=model, trainable=trainable, train_samples=train_samples,
        replay_sets=[], config=config, device=device, restart=restart,
    )


def calibrate_random_backbone(
    ctx: Context,
    model: UniMMAD,
    tasks: list[TaskInfo],
    train_samples: dict[str, list[Sample]],
    config: TrainConfig,
    device: torch.device,
) -> int:
    """Data-dependent init of a random prior: its BatchNorm statistics from the base
    stage's training images, in a fixed order (deterministic, equal on every rank)."""
    from torch.utils.data import DataLoader

    ids = task_ids(ctx.registry)
    data = MultiTaskDataset(
        [task_dataset(t, ids[t.name], model, train_samples[t.name]) for t in tasks]
    )
    loader = DataLoader(data, batch_size=config.eval_batch_size, collate_fn=collate, num_workers=config.num_workers)
    return model.calibrate_random_backbone((b.images.to(device), b.modality_mask.to(device)) for b in loader)


def train_incremental(
    ctx: Context, tasks: Sequence[str] | None, config: TrainConfig, restart: bool = False
) -> list[StageReport]:
    """One stage per task (given order, else registration order) on top of the latest model."""

    def plan() -> tuple[list[TaskInfo], StageInfo | None]:
        if latest_completed_stage(ctx.registry) is None:
            raise UserError("no trained model yet: run train-base first")
        unfinished = _settle_unfinished(ctx)
        chosen = _select_tasks(ctx.registry, tasks)
        if not chosen:
            raise UserError("no untrained tasks: register a new task with add-task first")
        for task in chosen:  # check all the data before the first stage starts
            _nonempty_train(task)
        return chosen, unfinished

    chosen, unfinished = decide(ctx.dist, plan)
    device = rank_device(ctx.dist, resolve_device(config.device))
    reports = []
    for task in chosen:
        parent, previous, number = decide(
            ctx.dist, lambda: _incremental_inputs(ctx, unfinished, task)
        )
        ids = task_ids(ctx.registry)
        model = model_at_stage(ctx, parent.number, device)
        if config.trainable == "all":
            trainable = [n for n, p in model.named_parameters() if not n.startswith("prior.")]
            freeze_for_incremental(model, trainable)
        else:
            trainable = freeze_for_incremental(model)
        replay_sets = [
            task_dataset(old, ids[old.name], model, kept)
            for old, kept in previous
            if kept and config.replay_ratio > 0
        ]
        reports.append(
            run_stage(
                ctx, kind="incremental", number=number, tasks=[task], parent=parent, model=model,
                trainable=trainable, train_samples={task.name: task_samples(task, "train")},
                replay_sets=replay_sets, config=config, device=device, restart=restart,
            )
        )
        unfinished = None
    return reports


def _incremental_inputs(
    ctx: Context, unfinished: StageInfo | None, task: TaskInfo
) -> tuple[StageInfo, list[tuple[TaskInfo, list[Sample]]], int | None]:
    """Parent stage, each earlier task with its replay samples, and the stage number to reuse."""
    parent = latest_completed_stage(ctx.registry)
    previous = [(old, replay_samples(ctx.registry, old)) for old in trained_tasks_at(ctx.registry, parent.number)]
    return parent, previous, _stage_number(unfinished, [task.name], parent)


def _nonempty_train(task: TaskInfo) -> list[Sample]:
    samples = task_samples(task, "train")
    if not samples:
        raise UserError(f"task {task.name!r} has no training samples under {task.root}")
    return samples

