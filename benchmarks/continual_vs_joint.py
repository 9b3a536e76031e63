"""The proof: the paper's continual recipe against joint training and naive fine-tuning, on
the synthetic benchmark (7 tasks, tiny preset).

    python -m benchmarks.continual_vs_joint            # the demo's sizes (~10-15 min on 2 cores)
    python -m benchmarks.continual_vs_joint --quick    # 2 epochs, 8 train / 4 test per class

(a) joint:  one base stage on all 7 tasks (the upper bound: every task's data at once);
(b) recipe: base on fabric, bagel_rgbd, brain_mri, then one incremental stage per task that
            trains only MoE-Leaders, routers and aggregation convs (< 10 % of the
            parameters) with 1 % replay of every earlier task (paper §4.5);
(c) naive:  the same sequence, but incremental stages train every parameter (except the
            frozen prior generator) and replay nothing.

All three use the library API (`unimmad_cl.training.stages`), the same data, seed and epochs
(base epochs for (a) and the base stages, incremental epochs per later stage). Reported: the
final mean I-AUROC / P-AUROC / AUPRO over all 7 tasks, average forgetting (standard form,
best earlier − final, over tasks learned before the last stage; see
`unimmad_cl.evaluation.report`), trainable parameters per stage, bytes stored per stage and
CPU and wall time (`--jobs 3` trains the three at once: less waiting on a shared machine,
overlapping wall times; the CPU times stay comparable). Writes
benchmarks/results/continual_vs_joint.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

from benchmarks import common
from unimmad_cl.demo import DemoSettings

NAME = "continual_vs_joint"
METRICS = ("i_auroc", "p_auroc", "aupro")
RUNS = ("joint", "recipe", "naive")


def settings_for(quick: bool) -> DemoSettings:
    """The demo's protocol (same tasks, order, epochs and data sizes); --quick shrinks it."""
    if quick:
        return replace(DemoSettings(), base_epochs=2, incremental_epochs=2, n_train=8, n_test=4)
    return DemoSettings()


def run_protocol(kind: str, data: Path, workspace: Path, settings: DemoSettings, device: str = "cpu") -> dict:
    """Train one protocol in a fresh workspace; returns its figures."""
    from registry import store
    from registry.definitions import load_definitions
    from unimmad_cl.config import ModelConfig, TrainConfig
    from unimmad_cl.evaluation.report import load_report
    from unimmad_cl.training.stages import Context, train_base, train_incremental
    from unimmad_cl.workspace import Workspace

    ws = Workspace.resolve(workspace)
    model_config = ModelConfig.preset("tiny").replace(image_size=settings.image_size)
    train = TrainConfig.preset("tiny").with_overrides(seed=settings.seed, device=device, epochs=settings.base_epochs,
                                                      replay_ratio=settings.replay_ratio)
    started, cpu_started = time.perf_counter(), time.process_time()
    with ws.open_registry() as registry:
        specs = {s.name: s for s in load_definitions(data / "tasks.yaml", data_root=data)}
        store.add_tasks(registry, [specs[name] for name in settings.tasks])
        ctx = Context(ws.path, registry, progress=False, echo=lambda msg: print(f"  [{kind}] {msg}", flush=True))
        base_tasks = list(settings.tasks) if kind == "joint" else list(settings.base_tasks)
        train_base(ctx, base_tasks, model_config, train)
        if kind != "joint":
            later = train.with_overrides(epochs=settings.incremental_epochs)
            if kind == "naive":
                later = later.with_overrides(trainable="all", replay_ratio=0.0)
            train_incremental(ctx, [t for t in settings.tasks if t not in base_tasks], later)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        reports = {m: load_report(registry, ws.path, m) for m in METRICS}
        stages = store.list_stages(registry)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "final_mean": {m: r.final_mean() for m, r in reports.items()},
        "average_forgetting": {m: r.average_forgetting for m, r in reports.items()},
        "bwt": {m: r.bwt for m, r in reports.items()},
        "matrix_i_auroc": {t: {str(s): v for s, v in row.items()} for t, row in reports["i_auroc"].matrix.items()},
        "stages": [
            {"stage": s.number, "kind": s.kind, "tasks": list(s.tasks), "trainable_params": s.trainable_params,
             "total_params": s.total_params, "artifact_bytes": s.artifact.bytes, "seconds": s.seconds}
            for s in stages
        ],
    }


def _worker(kind: str, data: Path, workspace: Path, settings: DemoSettings, threads: int) -> dict:
    """One protocol, in this process or a pool worker (same torch threads, no weight warning)."""
    common.set_threads(threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="backbone .* has RANDOM weights")
        return run_protocol(kind, data, workspace, settings)


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(runs: dict) -> str:
    """The BENCHMARKS.md table, one row per protocol."""
    lines = [
        "| protocol | final I-AUROC | final P-AUROC | final AUPRO | avg forgetting I-AUROC | avg forgetting P-AUROC "
        "| trainable params per later stage | stored bytes: base / per later stage | CPU time | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"joint": "(a) joint, all 7 tasks at once", "recipe": "(b) paper recipe: incremental subset + 1 % replay",
              "naive": "(c) naive fine-tuning: all parameters, no replay"}
    for kind, run in runs.items():
        base, later = run["stages"][0], run["stages"][1:]
        trainable = "—" if not later else (
            f"{later[0]['trainable_params']:,} ({later[0]['trainable_params'] / later[0]['total_params']:.1%})")
        stored = f"{base['artifact_bytes'] / 1e6:.1f} MB / " + (
            "—" if not later else f"{sum(s['artifact_bytes'] for s in later) / len(later) / 1e6:.2f} MB")
        forgetting = run["average_forgetting"]
        lines.append(
            f"| {labels[kind]} | {_num(run['final_mean']['i_auroc'])} | {_num(run['final_mean']['p_auroc'])} "
            f"| {_num(run['final_mean']['aupro'])} | {_num(forgetting['i_auroc'])} | {_num(forgetting['p_auroc'])} "
            f"| {trainable} | {stored} | {run['cpu_seconds']:.0f} s | {run['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def verdict(runs: dict) -> dict:
    """The claims the benchmark checks, as numbers (the table states them, nothing asserts)."""
    recipe, naive, joint = runs["recipe"], runs["naive"], runs["joint"]
    out = {}
    for m in ("i_auroc", "p_auroc"):
        r, n = recipe["average_forgetting"][m], naive["average_forgetting"][m]
        out[f"forgetting_margin_{m}"] = None if r is None or n is None else n - r
        j, f = joint["final_mean"][m], recipe["final_mean"][m]
        out[f"gap_to_joint_{m}"] = None if j is None or f is None else j - f
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_args(parser)
    parser.add_argument("--only", help="comma-separated subset of joint,recipe,naive")
    parser.add_argument("--jobs", type=int, default=1,
                        help="protocols trained at once in worker processes (wall times then overlap; CPU times do not)")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    settings = settings_for(args.quick)
    env = common.environment({"threads_requested": args.threads})
    chosen = args.only.split(",") if args.only else list(RUNS)
    root = Path(tempfile.mkdtemp(prefix="unimmad-cvj-"))
    try:
        from unimmad_cl.data.synth.benchmark import write_benchmark

        write_benchmark(root / "data", settings.seed, settings.image_size, settings.n_train, settings.n_test)
        print(f"training {', '.join(chosen)} ({threads} torch threads, {args.jobs} at once)", flush=True)
        jobs = [(kind, root / "data", root / kind, settings, threads) for kind in chosen]
        if args.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(args.jobs, len(jobs))) as pool:
                runs = dict(zip(chosen, pool.map(_worker, *zip(*jobs))))
        else:
            runs = {kind: _worker(*job) for kind, job in zip(chosen, jobs)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "environment": common.finish_environment(env),
        "settings": {**settings.__dict__, "quick": args.quick, "preset": "tiny", "device": "cpu", "jobs": args.jobs},
        "runs": runs,
        "verdict": verdict(runs) if set(RUNS) <= set(runs) else None,
        "table_markdown": markdown_table(runs),
    }
    path = common.write_result(NAME, result, args.out_dir)
    print(result["table_markdown"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
