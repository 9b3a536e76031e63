"""Scale curve (issue 14, item 4): grow a workspace to 32 tasks, one incremental stage per
task, through the library's own API, and record what every stage costs.

    python -m benchmarks.scale               # 32 tasks, lite preset at 64 px, 3 + 2 epochs
    python -m benchmarks.scale --quick       # 4 tasks, tiny preset (smoke, ~1 min)
    python -m benchmarks.scale --tasks 16    # another length

Data: `synth --kind photos` at 64 px, 6 training and 6 test images per task (half of the
test images defective), written once per seed (8 tasks each: brick, grass, gravel, ihc,
retina, coffee, chelsea in the MVTec AD layout, motorcycle RGB + depth in the MVTec 3D-AD
layout) and registered as `<task>_s<seed>`: 4 seeds give 32 tasks with different pixels.
Model: the default `lite` preset (EfficientNet-Lite0 with its packaged ImageNet weights, the
architecture users train) at 64 px instead of 128: a quarter of the pixels keeps 32 stages
within minutes on 2 CPU cores while every stage runs the real code path (training from the
frozen-feature cache, evaluation through the evaluation cache, artifacts, registry).
The tiny preset would be cheaper still but trains a random ResNet-18 that nobody deploys.

Stage 0 (`train_base`) trains the first task; each later stage (`train_incremental`) adds one
task: training on its 6 images plus the replay buffers of all earlier tasks (one image per
class each, `--replay-ratio` 0.01 keeps at least one), then the evaluation of every task
trained so far (the old ones from their cached trunk features: C-MoE only). Per stage the
benchmark records wall time and its parts, timed by wrapping the library's functions:
model reconstruction (`model_at_stage`: base + deltas), trunk features of the training set
(`precompute_training`), epochs (`train_epochs`), evaluation (`evaluate_tasks`; per task,
with whether it ran from the cache), the evaluation summary and galleries
(`write_evaluation_summary`), and the rest (artifact, replay buffers, registry transaction);
and sizes: registry database, the stage's delta file, the evaluation cache, evaluation
summaries and galleries.

Target: the time to add task 32 is at most 1.5 x the time to add task 2. Writes
benchmarks/results/scale.json and, with --plot, docs/images/scale_stage_seconds.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks import common

TARGET = 1.5  # time to add the last task / time to add the 2nd
PHOTO_TASKS = ("brick", "grass", "gravel", "ihc", "retina", "coffee", "chelsea", "motorcycle")
PLOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "scale_stage_seconds.png"


def _cli(args: list[str]) -> str:
    from click.testing import CliRunner

    from cli import main as cli

    result = CliRunner().invoke(cli, args)
    if result.exit_code != 0:
        raise RuntimeError(f"{args[:3]} failed: {result.output}")
    return result.output


def prepare(root: Path, n_tasks: int, train: int, test: int, size: int) -> tuple[Path, list[str]]:
    """`n_tasks` photo tasks under `root` (one synth run per seed), registered in a fresh
    workspace in order. Returns (workspace, task names)."""
    import yaml

    ws = root / "ws"
    names: list[str] = []
    seed = 0
    while len(names) < n_tasks:
        seed += 1
        take = list(PHOTO_TASKS[: n_tasks - len(names)])
        out = root / f"photos_s{seed}"
        args = ["synth", "--kind", "photos", "--out", str(out), "--seed", str(seed), "--train", str(train),
                "--test", str(test), "--image-size", str(size)]
        for t in take:
            args += ["--task", t]
        _cli(args)
        tasks = yaml.safe_load((out / "tasks.yaml").read_text())
        for t in tasks:
            t["name"] = f"{t['name']}_s{seed}"
            t["root"] = str((out / t["root"]).resolve())
            names.append(t["name"])
        renamed = out / "tasks_renamed.yaml"
        renamed.write_text(yaml.safe_dump(tasks, sort_keys=False))
        _cli(["--workspace", str(ws), "add-task", "--from", str(renamed)])
    return ws, names


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class Timers:
    """Wraps library functions for the duration of a stage and adds up their seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.tasks: list[dict] = []

    def add(self, name: str, seconds: float, cpu: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    @contextlib.contextmanager
    def installed(self):
        from unimmad_cl.training import features, stages

        def timed(owner, attr, name, per_task=False):
            original = getattr(owner, attr)

            def wrapper(*args, **kwargs):
                start, cpu = time.perf_counter(), time.process_time()
                try:
                    return original(*args, **kwargs)
                finally:
                    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                    self.add(name, seconds, cpu)
                    if per_task:
                        data = args[1] if len(args) > 1 else kwargs.get("data")
                        self.tasks.append({"task": kwargs.get("task"), "seconds": seconds, "cpu_s": cpu,
                                           "cached": bool(getattr(data, "cached", False))})

            return original, wrapper

        patches = [
            (stages, "model_at_stage", "model_load"),
            (features, "precompute_training", "train_features_once"),
            (stages, "train_epochs", "train_epochs"),
            (stages, "evaluate_tasks", "evaluate"),
            (stages, "evaluate_task", "evaluate_task", True),
            (stages, "write_evaluation_summary", "summary_and_galleries"),
        ]
        saved = []
        for owner, attr, name, *flag in patches:
            original, wrapper = timed(owner, attr, name, bool(flag))
            saved.append((owner, attr, original))
            setattr(owner, attr, wrapper)
        try:
            yield self
        finally:
            for owner, attr, original in saved:
                setattr(owner, attr, original)


def run(root: Path, n_tasks: int, preset: str, size: int, base_epochs: int, inc_epochs: int,
        train: int, test: int) -> dict:
    from registry import store
    from unimmad_cl.config import ModelConfig, TrainConfig
    from unimmad_cl.training.stages import Context, train_base, train_incremental
    from unimmad_cl.workspace import Workspace

    ws_path, names = prepare(root, n_tasks, train, test, size)
    workspace = Workspace.resolve(ws_path)
    ctx = Context(workspace.path, workspace.open_registry(), progress=False, echo=lambda m: None)
    model_config = ModelConfig.preset(preset).replace(image_size=size)
    base_config = TrainConfig.preset(preset).with_overrides(epochs=base_epochs, device="cpu")
    inc_config = base_config.with_overrides(epochs=inc_epochs)
    rows = []
    for k, name in enumerate(names, start=1):
        timers = Timers()
        load = list(__import__("os").getloadavg())
        start, cpu_start = time.perf_counter(), time.process_time()
        with timers.installed(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if k == 1:
                report = train_base(ctx, [name], model_config, base_config)
            else:
                (report,) = train_incremental(ctx, [name], inc_config)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        t = timers.seconds
        c = timers.cpu
        evaluated = timers.tasks
        new_eval = sum(e["seconds"] for e in evaluated if e["task"] == name)
        old = [e for e in evaluated if e["task"] != name]
        old_eval = sum(e["seconds"] for e in old)
        training = t.get("train_features_once", 0.0) + t.get("train_epochs", 0.0)
        row = {
            "tasks": k,
            "stage": report.number,
            "kind": report.kind,
            "added": name,
            "wall_s": wall,
            "model_load_s": t.get("model_load", 0.0),
            "train_features_once_s": t.get("train_features_once", 0.0),
            "train_epochs_s": t.get("train_epochs", 0.0),
            "training_s": training,
            "evaluate_s": t.get("evaluate", 0.0),
            "evaluate_new_task_s": new_eval,
            "evaluate_old_tasks_s": old_eval,
            "old_tasks_evaluated": len(old),
            "old_tasks_from_cache": sum(e["cached"] for e in old),
            "evaluate_per_old_task_s": old_eval / len(old) if old else None,
            "evaluate_overhead_s": t.get("evaluate", 0.0) - new_eval - old_eval,
            "summary_and_galleries_s": t.get("summary_and_galleries", 0.0),
            "replayed_samples": None,
        }
        row["rest_s"] = wall - row["model_load_s"] - training - row["evaluate_s"] - row["summary_and_galleries_s"]
        row["wall_without_old_task_evaluation_s"] = wall - old_eval
        # The same parts in CPU seconds of this process (one torch thread): what the stage
        # computed, whatever the other processes on the machine took from it.
        old_cpu = sum(e["cpu_s"] for e in old)
        new_cpu = sum(e["cpu_s"] for e in evaluated if e["task"] == name)
        row["cpu"] = {
            "total_s": cpu,
            "model_load_s": c.get("model_load", 0.0),
            "training_s": c.get("train_features_once", 0.0) + c.get("train_epochs", 0.0),
            "evaluate_s": c.get("evaluate", 0.0),
            "evaluate_new_task_s": new_cpu,
            "evaluate_old_tasks_s": old_cpu,
            "evaluate_overhead_s": c.get("evaluate", 0.0) - new_cpu - old_cpu,
            "summary_and_galleries_s": c.get("summary_and_galleries", 0.0),
        }
        row["cpu"]["rest_s"] = cpu - sum(row["cpu"][k] for k in ("model_load_s", "training_s", "evaluate_s", "summary_and_galleries_s"))
        row["cpu"]["total_without_old_task_evaluation_s"] = cpu - old_cpu
        row["load_avg_start"] = load
        stage = store.get_stage(ctx.registry, report.number)
        row["sizes"] = {
            "registry_db_bytes": _bytes(ws_path / "registry.db"),
            "stage_artifact_bytes": report.artifact.bytes if hasattr(report.artifact, "bytes") else None,
            "models_dir_bytes": _bytes(ws_path / "models"),
            "feature_cache_bytes": _bytes(ws_path / "cache" / "features"),
            "train_cache_bytes": _bytes(ws_path / "cache" / "train"),
            "evaluations_dir_bytes": _bytes(ws_path / "evaluations"),
        }
        row["trainable_params"] = report.trainable_params
        row["recorded_seconds"] = stage.seconds if hasattr(stage, "seconds") else None
        rows.append(row)
        print(f"  {k:>3} tasks (stage {report.number}, {report.kind}): {wall:6.2f} s wall, {cpu:6.2f} s CPU "
              f"(load avg {load[0]:.1f}) = model {row['model_load_s']:.2f} + "
              f"train {training:.2f} + evaluate {row['evaluate_s']:.2f} (old tasks {old_eval:.2f}, "
              f"{row['old_tasks_from_cache']}/{len(old)} cached) + summary {row['summary_and_galleries_s']:.2f} + "
              f"rest {row['rest_s']:.2f}", flush=True)
    ctx.registry.close()
    return {"rows": rows, "tasks": names, "preset": preset, "image_size": size, "base_epochs": base_epochs,
            "incremental_epochs": inc_epochs, "train_per_task": train, "test_per_task": test,
            "train_batch": base_config.batch_size, "eval_batch": base_config.eval_batch_size}


def summarize(r: dict) -> dict:
    """Ratios of the time to add the last task to the time to add the 2nd, in CPU seconds of
    the process (robust to other processes' load: the primary figure) and in wall seconds;
    slopes of each part against the number of tasks."""
    rows = r["rows"]
    inc = [row for row in rows if row["kind"] == "incremental"]
    by_tasks = {row["tasks"]: row for row in rows}
    second, last = by_tasks[2], rows[-1]
    cpu = lambda row, key="total_s": row["cpu"][key]  # noqa: E731
    out = {
        "last_tasks": last["tasks"],
        "add_2nd_cpu_s": cpu(second),
        "add_last_cpu_s": cpu(last),
        "add_last_over_2nd_cpu": cpu(last) / cpu(second),
        "add_last_over_2nd_cpu_without_old_task_evaluation": cpu(last, "total_without_old_task_evaluation_s")
        / cpu(second, "total_without_old_task_evaluation_s"),
        "add_2nd_wall_s": second["wall_s"],
        "add_last_wall_s": last["wall_s"],
        "add_last_over_2nd_wall": last["wall_s"] / second["wall_s"],
        "target": TARGET,
    }
    out["target_met"] = out["add_last_over_2nd_cpu"] <= TARGET
    for k in (8, 16):
        if k in by_tasks:
            out[f"add_{k}th_cpu_s"] = cpu(by_tasks[k])
            out[f"add_{k}th_wall_s"] = by_tasks[k]["wall_s"]
    xs = [row["tasks"] for row in inc]

    def slope(ys):
        mx, my = statistics.mean(xs), statistics.mean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0

    if len(inc) >= 2:
        keys = ("total_s", "model_load_s", "training_s", "evaluate_new_task_s", "evaluate_old_tasks_s",
                "evaluate_overhead_s", "summary_and_galleries_s", "rest_s", "total_without_old_task_evaluation_s")
        out["cpu_slope_s_per_task"] = {key: slope([row["cpu"][key] for row in inc]) for key in keys}
    per_old = [row["cpu"]["evaluate_old_tasks_s"] / row["old_tasks_evaluated"] for row in inc if row["old_tasks_evaluated"]]
    out["cpu_per_old_task_evaluation_median_s"] = statistics.median(per_old) if per_old else None
    out["old_task_evaluation_cpu_share_at_last"] = cpu(last, "evaluate_old_tasks_s") / cpu(last)
    return out


def plot(r: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in r["rows"] if row["kind"] == "incremental"]
    x = [row["tasks"] for row in rows]
    parts = [
        ("model load (base + deltas)", "model_load_s"),
        ("training (features once + epochs)", "training_s"),
        ("evaluation: new task", "evaluate_new_task_s"),
        ("evaluation: old tasks (cached trunk, C-MoE only)", "evaluate_old_tasks_s"),
        ("evaluation: keys, cache planning", "evaluate_overhead_s"),
        ("summary + galleries", "summary_and_galleries_s"),
        ("artifact, replay, registry", "rest_s"),
    ]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    ax.stackplot(x, *[[max(row["cpu"][key], 0.0) for row in rows] for _, key in parts], labels=[p for p, _ in parts], alpha=0.85)
    ax.plot(x, [row["cpu"]["total_s"] for row in rows], color="black", lw=1.2, label="CPU seconds of the stage")
    ax.plot(x, [row["wall_s"] for row in rows], color="gray", lw=0.8, ls=":", label="wall seconds (shared machine)")
    second = next(row["cpu"]["total_s"] for row in r["rows"] if row["tasks"] == 2)
    ax.axhline(TARGET * second, color="red", ls="--", lw=1, label=f"target: {TARGET} x adding task 2")
    top = max(max(row["cpu"]["total_s"] for row in rows), TARGET * second)
    ax.set_ylim(0, top * 1.6)
    ax.set_xlabel("tasks after the stage (task k added)")
    ax.set_ylabel("CPU seconds (stacked parts)")
    ax.set_title(f"Time to add task k ({r['preset']} preset, {r['image_size']} px, 1 thread)")
    ax.legend(fontsize=7, loc="upper left", framealpha=0.6, ncol=2)
    ax.set_xlim(min(x), max(x))
    mib = 2**20
    ax2.plot(x, [row["sizes"]["registry_db_bytes"] / mib for row in rows], label="registry.db")
    ax2.plot(x, [row["sizes"]["models_dir_bytes"] / mib for row in rows], label="models/ (base + deltas)")
    ax2.plot(x, [row["sizes"]["feature_cache_bytes"] / mib for row in rows], label="cache/features")
    ax2.plot(x, [row["sizes"]["evaluations_dir_bytes"] / mib for row in rows], label="evaluations/ (summaries, galleries)")
    ax2.set_xlabel("tasks")
    ax2.set_ylabel("MiB (log scale)")
    ax2.set_yscale("log")
    ax2.set_title("Workspace files")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--tasks", type=int, default=None, help="how many tasks (default 32; quick 4)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--base-epochs", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each incremental stage")
    parser.add_argument("--plot", action="store_true", help=f"draw {PLOT.relative_to(PLOT.parent.parent.parent)}")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    env = common.environment()
    preset = "tiny" if args.quick else "lite"
    n_tasks = args.tasks or (4 if args.quick else 32)
    base_epochs = args.base_epochs or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 2)
    train, test = (4, 4) if args.quick else (6, 6)
    with tempfile.TemporaryDirectory(prefix="scale_") as tmp:
        r = run(Path(tmp), n_tasks, preset, args.image_size, base_epochs, epochs, train, test)
    s = summarize(r)
    print(f"add task 2: {s['add_2nd_cpu_s']:.2f} CPU s, task {s['last_tasks']}: {s['add_last_cpu_s']:.2f} CPU s "
          f"({s['add_last_over_2nd_cpu']:.2f} x, target <= {TARGET}; wall {s['add_last_over_2nd_wall']:.2f} x); "
          f"without the old tasks' evaluation {s['add_last_over_2nd_cpu_without_old_task_evaluation']:.2f} x; "
          f"old tasks' evaluation {s['old_task_evaluation_cpu_share_at_last']:.0%} of the last stage")
    result = {
        "benchmark": "scale",
        "command": "python -m benchmarks.scale" + (" --quick" if args.quick else ""),
        "environment": common.finish_environment(env),
        **r,
        "summary": s,
    }
    if args.plot:
        result["plot"] = str(plot(r, PLOT))
    print(f"wrote {common.write_result('scale', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
