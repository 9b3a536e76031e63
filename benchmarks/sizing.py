"""Sizing the default preset: a base stage trained on real-photo tasks and evaluated at chosen
epochs, for model/training overrides of the `lite` preset (the measurements behind its widths,
batch, learning rate and the demo's epochs; BENCHMARKS.md, "Sizing the lite preset").

    python -m benchmarks.sizing --tasks coffee,ihc --epochs 40 --evaluate-at 5,10,20,30,40 \\
        --set bottleneck_channels=1024 --set fcm_width=192 --lr 2e-3 --batch-size 4
    python -m benchmarks.sizing --quick

Data: `synth --kind photos` (default 60 train / 40 test per task, 128 px). Prints one line
per epoch (loss, samples/s) and the per-task I-AUROC / P-AUROC / AUPRO at the chosen epochs;
writes benchmarks/results/sizing.json (one entry per run, keyed by its overrides).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import common

NAME = "sizing"


def run(tasks: list[str], epochs: int, evaluate_at: set[int], overrides: dict, lr: float | None,
        batch_size: int | None, n_train: int, n_test: int, image_size: int, seed: int) -> dict:
    import numpy as np
    import torch

    from registry.definitions import load_definitions
    from unimmad_cl.config import ModelConfig, TrainConfig
    from unimmad_cl.data.dataset import MultiTaskDataset, TaskDataset
    from unimmad_cl.data.readers import list_samples
    from unimmad_cl.data.synth.photos import write_photo_benchmark
    from unimmad_cl.evaluation.runner import evaluate_task
    from unimmad_cl.model.unimmad import UniMMAD
    from unimmad_cl.training.loop import make_loader, train_epochs

    config = ModelConfig.from_dict({**overrides, "image_size": image_size}, base=ModelConfig.preset("lite"))
    train = TrainConfig.preset("lite").with_overrides(epochs=epochs, lr=lr, batch_size=batch_size, device="cpu",
                                                      seed=seed)
    root = Path(tempfile.mkdtemp(prefix="unimmad-sizing-"))
    try:
        write_photo_benchmark(root, seed, image_size, n_train, n_test, tasks=tasks, overwrite=True)
        specs = {s.name: s for s in load_definitions(root / "tasks.yaml", data_root=root)}
        torch.manual_seed(seed)
        model = UniMMAD(config)

        def dataset(name: str, split: str, task_id: int) -> TaskDataset:
            s = specs[name]
            samples = list_samples(s.format, s.root, s.modalities, split, s.classes, task=name)
            return TaskDataset(samples, config.image_size, task_id=task_id, classes=list(s.classes),
                               normalization=model.normalization)

        data = MultiTaskDataset([dataset(n, "train", i) for i, n in enumerate(tasks)])
        tests = {n: dataset(n, "test", i) for i, n in enumerate(tasks)}
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=train.lr)
        log, started = [], time.perf_counter()

        def on_epoch_end(stats) -> None:
            entry = {"epoch": stats.epoch + 1, "loss": stats.loss, "samples_per_s": stats.samples / stats.seconds,
                     "elapsed_s": time.perf_counter() - started}
            if stats.epoch + 1 in evaluate_at:
                model.eval()
                results = {n: evaluate_task(model, tests[n], task=n, progress=False).mean for n in tasks}
                model.train()
                entry["metrics"] = results
                entry["mean"] = {m: float(np.mean([r[m] for r in results.values()])) for m in ("i_auroc", "p_auroc", "aupro")}
            log.append(entry)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()
                              if k != "metrics"}), flush=True)

        train_epochs(model, make_loader(data, train), optimizer, train, torch.device("cpu"), on_epoch_end=on_epoch_end,
                     progress=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"model_overrides": overrides, "train": {"lr": train.lr, "batch_size": train.batch_size, "epochs": epochs},
            "tasks": tasks, "log": log}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_args(parser)
    parser.add_argument("--tasks", default="coffee,ihc")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--evaluate-at", default=None, help="comma-separated epochs (default: the last)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a lite ModelConfig override")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import yaml

    if args.quick:
        args.tasks, args.epochs, args.train, args.test, args.image_size = "brick", 1, 4, 4, 64
    threads = common.set_threads(args.threads)
    env = common.environment({"threads_requested": args.threads})
    overrides = {kv.split("=", 1)[0]: yaml.safe_load(kv.split("=", 1)[1]) for kv in args.set}
    evaluate_at = {int(e) for e in (args.evaluate_at or str(args.epochs)).split(",")}
    result = run(args.tasks.split(","), args.epochs, evaluate_at, overrides, args.lr, args.batch_size, args.train,
                 args.test, args.image_size, args.seed)
    out = Path(args.out_dir) / f"{NAME}.json"
    previous = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    key = json.dumps({"tasks": args.tasks, "overrides": overrides, "lr": args.lr, "batch_size": args.batch_size,
                      "epochs": args.epochs, "quick": args.quick}, sort_keys=True)
    previous.setdefault("runs", {})[key] = {**result, "environment": common.finish_environment(env), "threads": threads}
    previous["command"] = "python -m benchmarks.sizing"
    path = common.write_result(NAME, previous, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
