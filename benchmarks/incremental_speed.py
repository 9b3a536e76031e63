"""Frozen features computed once (issue 14, item 1): a base epoch, an incremental epoch with
and without the training feature cache, and a task's first evaluation against its
re-evaluation from the evaluation cache, side by side in one run.

    python -m benchmarks.incremental_speed            # lite preset, 128 px, real-photo tasks
    python -m benchmarks.incremental_speed --quick    # tiny preset, 64 px, few samples (smoke)

Data: `synth --kind photos` (scikit-image photographs with synthetic defects; coffee: RGB,
motorcycle: RGB + depth from an organized point cloud), registered in a scratch workspace.
Model: the preset's, built fresh (packaged ImageNet EfficientNet-Lite0 weights for lite);
only timing is measured, so nothing is trained beforehand.

Timed, interleaved (A B C A B C ...), median over repeats, one torch thread by default:
- `base_epoch`: every parameter trains (`train_epochs` over `make_loader`, images decoded as
  a stage decodes them);
- `incremental_epoch_uncached`: `freeze_for_incremental`, the full forward at every step;
- `incremental_epoch_cached`: the same draws from trunk features computed once
  (`make_feature_batches`); the one-time `precompute` is timed on its own, and
  `stage_ratio` amortizes it over the preset's epochs;
- `evaluate_uncached` / `evaluate_first` / `evaluate_cached`: `evaluate_tasks` (metrics and
  gallery included) of one task with the cache off, with an empty cache (trunk + entry
  written, file hashes computed) and from the cache.
Peak memory of each workload is measured in a fresh process (`--probe`).

Writes benchmarks/results/incremental_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks import common

TARGET_EPOCH = 0.25  # incremental epoch / base epoch
TARGET_EVAL = 0.3  # old task's evaluation after a stage / its first evaluation
PHOTO_TASKS = ("coffee", "motorcycle")


def prepare(root: Path, quick: bool) -> dict:
    """Photo tasks written and registered under `root` (deterministic bytes)."""
    from click.testing import CliRunner

    from cli import main as cli

    data, ws = root / "photos", root / "ws"
    train, test = ("6", "6") if quick else ("24", "40")
    size = "64" if quick else "128"
    args = ["synth", "--kind", "photos", "--out", str(data), "--train", train, "--test", test, "--image-size", size]
    for task in PHOTO_TASKS:
        args += ["--task", task]
    for argv in (args, ["add-task", "--from", str(data / "tasks.yaml")]):
        result = CliRunner().invoke(cli, ["--workspace", str(ws), *argv])
        if result.exit_code != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.output}")
    return {"workspace": str(ws), "data": str(data)}


class Setup:
    """Models, datasets and optimizers of one measurement (in this process)."""

    def __init__(self, paths: dict, preset: str, batch: int):
        from registry import store
        from unimmad_cl.config import ModelConfig, TrainConfig
        from unimmad_cl.data.dataset import MultiTaskDataset
        from unimmad_cl.model.unimmad import UniMMAD, freeze_for_incremental
        from unimmad_cl.training.stages import Context, task_dataset, task_ids, task_samples
        from unimmad_cl.workspace import Workspace

        workspace = Workspace.resolve(paths["workspace"])
        self.ctx = Context(workspace.path, workspace.open_registry(), progress=False, echo=lambda m: None)
        self.tasks = [store.get_task(self.ctx.registry, name) for name in PHOTO_TASKS]
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.base = UniMMAD(ModelConfig.preset(preset))
        self.inc = copy.deepcopy(self.base)
        freeze_for_incremental(self.inc)
        self.inc_cached = copy.deepcopy(self.inc)
        ids = task_ids(self.ctx.registry)
        # Base and incremental epochs over the same samples and draws: both tasks' training
        # sets, no replay flags (so the sampler draws alike).
        self.dataset = MultiTaskDataset(
            [task_dataset(t, ids[t.name], self.base, task_samples(t, "train")) for t in self.tasks]
        )
        self.config = TrainConfig.preset(preset).with_overrides(epochs=1, batch_size=batch, device="cpu")
        self.epochs = TrainConfig.preset(preset).epochs
        self.opts = {
            name: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4)
            for name, m in (("base", self.base), ("inc", self.inc), ("inc_cached", self.inc_cached))
        }
        self.table = None
        self.eval_task = self.tasks[-1]  # the RGB + depth task: two priors per sample

    def epoch(self, kind: str) -> None:
        from unimmad_cl.training.loop import make_feature_batches, make_loader, train_epochs

        model = {"base": self.base, "inc": self.inc, "inc_cached": self.inc_cached}[kind]
        if kind == "inc_cached":
            loader = make_feature_batches(self.table, self.dataset, self.config)
        else:
            loader = make_loader(self.dataset, self.config)
        train_epochs(model, loader, self.opts[kind], self.config, torch.device("cpu"), progress=False)

    def precompute(self) -> float:
        from unimmad_cl.training import features

        start = time.perf_counter()
        self.table = features.precompute_training(
            self.inc_cached, self.dataset, self.config, torch.device("cpu"), workspace=self.ctx.workspace, stage=1,
            progress=False, echo=lambda m: None,
        )
        return time.perf_counter() - start

    def evaluate(self, kind: str):
        from unimmad_cl.training.stages import evaluate_tasks

        config = self.config.with_overrides(feature_cache=kind != "uncached")
        if kind == "first":
            shutil.rmtree(self.ctx.workspace / "cache" / "features", ignore_errors=True)
        return evaluate_tasks(self.ctx, self.inc, [self.eval_task], config, torch.device("cpu"))

    def hashing(self) -> dict:
        """Seconds to key the evaluated task: every file hashed (fresh) and from the
        remembered digests (what an old task's re-evaluation pays)."""
        from unimmad_cl.training import features
        from unimmad_cl.training.stages import task_dataset, task_samples

        dataset = task_dataset(self.eval_task, 0, self.inc, task_samples(self.eval_task, "test"))
        out = {}
        for name in ("fresh", "remembered"):
            if name == "fresh":
                shutil.rmtree(self.ctx.workspace / "cache" / "features", ignore_errors=True)
            cache = features.EvaluationCache(self.ctx.workspace, self.inc, self.config, progress=False)
            cache._model_key = "x"  # the trunk digest is timed apart
            start = time.perf_counter()
            cache.plan([(self.eval_task.name, dataset)])
            out[f"{name}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        features.trunk_digest(self.inc)
        out["trunk_digest_s"] = time.perf_counter() - start
        return out


def probe(spec: dict) -> dict:
    """Peak memory of one workload in this (fresh) process."""

    def setup():
        s = Setup(spec["paths"], spec["preset"], spec["batch"])
        if spec["kind"] == "evaluate_cached":
            s.evaluate("first")  # the entry (normally left by the parent run) is there
        return s

    def work(s):
        kind = spec["kind"]
        if kind == "incremental_epoch_cached":
            s.precompute()  # the table stays in memory for the epochs: part of the footprint
            s.epoch("inc_cached")
        elif kind.startswith("evaluate_"):
            s.evaluate(kind.removeprefix("evaluate_"))
        else:
            s.epoch({"base_epoch": "base", "incremental_epoch_uncached": "inc"}[kind])

    result = common.fresh_peak(setup, work)
    return result


def run(paths: dict, preset: str, batch: int, repeats: int, memory: bool) -> dict:
    s = Setup(paths, preset, batch)
    precompute_s = [s.precompute()]
    fns = {
        "base_epoch": lambda: s.epoch("base"),
        "incremental_epoch_uncached": lambda: s.epoch("inc"),
        "incremental_epoch_cached": lambda: s.epoch("inc_cached"),
        "evaluate_uncached": lambda: s.evaluate("uncached"),
        "evaluate_first": lambda: s.evaluate("first"),
        "evaluate_cached": lambda: s.evaluate("cached"),
        # precompute again each round so that its median is comparable (fresh table each time)
        "precompute": lambda: precompute_s.append(s.precompute()),
    }
    times = common.interleaved(fns, repeats, warmup=1)
    times["precompute"] = precompute_s[-repeats:]
    rows = {name: common.stats(t) for name, t in times.items()}
    n_train, n_test = len(s.dataset), len(s.evaluate("cached")[s.eval_task.name].labels)
    for name in ("base_epoch", "incremental_epoch_uncached", "incremental_epoch_cached"):
        rows[name]["samples_per_s"] = len(s.dataset) / rows[name]["median_s"]
    for name in ("evaluate_uncached", "evaluate_first", "evaluate_cached"):
        rows[name]["images_per_s"] = n_test / rows[name]["median_s"]
    # Same results: the cached evaluation (fp16) against the uncached one.
    a, b = s.evaluate("uncached")[s.eval_task.name], s.evaluate("cached")[s.eval_task.name]
    worst_metric = max(abs(a.mean[k] - b.mean[k]) for k in a.mean if a.mean[k] == a.mean[k])
    med = {name: r["median_s"] for name, r in rows.items()}
    epochs = s.epochs
    ratios = {
        "incremental_uncached_vs_base_epoch": med["incremental_epoch_uncached"] / med["base_epoch"],
        "incremental_cached_vs_base_epoch": med["incremental_epoch_cached"] / med["base_epoch"],
        "cached_vs_uncached_incremental_epoch": med["incremental_epoch_cached"] / med["incremental_epoch_uncached"],
        # a whole stage's training: precompute once + the preset's epochs, vs as many base epochs
        "stage_ratio": (med["precompute"] + epochs * med["incremental_epoch_cached"]) / (epochs * med["base_epoch"]),
        "evaluate_cached_vs_first": med["evaluate_cached"] / med["evaluate_first"],
        "evaluate_cached_vs_uncached": med["evaluate_cached"] / med["evaluate_uncached"],
        "evaluate_first_vs_uncached": med["evaluate_first"] / med["evaluate_uncached"],
        "incremental_cached_vs_base_epoch_min": common.min_ratio(times, "incremental_epoch_cached", "base_epoch"),
        "evaluate_cached_vs_first_min": common.min_ratio(times, "evaluate_cached", "evaluate_first"),
    }
    entry = next((s.ctx.workspace / "cache" / "features").glob("*/*.safetensors"))
    result = {
        "preset": preset,
        "image_size": s.base.config.image_size,
        "batch": batch,
        "train_samples": n_train,
        "eval_task": s.eval_task.name,
        "eval_modalities": list(s.eval_task.modalities),
        "test_samples": n_test,
        "preset_epochs": epochs,
        "timings": rows,
        "ratios": ratios,
        "targets": {"incremental_vs_base_epoch": TARGET_EPOCH, "evaluate_cached_vs_first": TARGET_EVAL},
        "targets_met": {
            "incremental_vs_base_epoch": ratios["incremental_cached_vs_base_epoch"] <= TARGET_EPOCH,
            "evaluate_cached_vs_first": ratios["evaluate_cached_vs_first"] <= TARGET_EVAL,
        },
        "training_table_bytes": s.table.nbytes(),
        "eval_entry_bytes": entry.stat().st_size,
        "eval_entry_bytes_per_image": entry.stat().st_size / n_test,
        "hashing": s.hashing(),
        "fp16_cache_max_abs_metric_diff_vs_uncached": worst_metric,
    }
    if memory:
        spec = {"paths": paths, "preset": preset, "batch": batch}
        result["memory"] = {
            kind: common.probe_in_subprocess("benchmarks.incremental_speed", {**spec, "kind": kind}, torch.get_num_threads())
            for kind in ("base_epoch", "incremental_epoch_uncached", "incremental_epoch_cached",
                         "evaluate_uncached", "evaluate_first", "evaluate_cached")
        }
    s.ctx.registry.close()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8, help="training batch (the lite preset's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probes")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: memory of one workload
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return {}
    env = common.environment()
    preset = "tiny" if args.quick else "lite"
    repeats = args.repeats or (1 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="incremental_speed_") as tmp:
        paths = prepare(Path(tmp), args.quick)
        r = run(paths, preset, args.batch, repeats, memory=not args.no_memory)
    t, q = r["timings"], r["ratios"]
    print(
        f"{preset} {r['image_size']} px, {r['train_samples']} training samples, batch {args.batch}: epoch base "
        f"{t['base_epoch']['median_s']:.2f} s, incremental {t['incremental_epoch_uncached']['median_s']:.2f} s uncached / "
        f"{t['incremental_epoch_cached']['median_s']:.2f} s cached (+{t['precompute']['median_s']:.2f} s once): "
        f"cached/base {q['incremental_cached_vs_base_epoch']:.3f} (target <= {TARGET_EPOCH}); "
        f"evaluation of {r['eval_task']} ({r['test_samples']} images): first {t['evaluate_first']['median_s']:.2f} s, "
        f"cached {t['evaluate_cached']['median_s']:.2f} s: {q['evaluate_cached_vs_first']:.3f} (target <= {TARGET_EVAL})"
    )
    result = {
        "benchmark": "incremental_speed",
        "command": "python -m benchmarks.incremental_speed" + (" --quick" if args.quick else ""),
        "environment": common.finish_environment(env),
        **r,
    }
    print(f"wrote {common.write_result('incremental_speed', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
