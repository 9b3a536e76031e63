"""Plasticity of incremental stages: one base stage, then the same incremental stages under
several training settings, side by side (BENCHMARKS.md, "Plasticity of incremental stages").

    python -m benchmarks.plasticity --base brick,coffee,motorcycle --new grass,ihc,chelsea \\
        --variant default --variant "no balance:load_balance_weight=0" \\
        --variant "lr 5e-4:load_balance_weight=0,lr=0.0005"
    python -m benchmarks.plasticity --quick
    python -m benchmarks.plasticity --model num_leaders=16 --variant default   # another base model

A variant is `label:setting=value,...` (TrainConfig overrides of the incremental stages; the
base stage's settings otherwise). Every variant starts from a copy of the same base workspace
and its stages are evaluated on every task learned so far, so the matrices show how well each
new task is learned (just learned) and kept (final), and how the base tasks fare.
Writes benchmarks/results/plasticity.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

NAME = "plasticity"
METRICS = ("i_auroc", "p_auroc", "aupro")


def parse_variant(text: str) -> tuple[str, dict]:
    import yaml

    label, _, settings = text.partition(":")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return label.strip(), overrides


def run(base_tasks, new_tasks, variants, base_epochs, incremental_epochs, n_train, n_test, image_size, seed,
        model_overrides: dict | None = None) -> dict:
    from registry import store
    from registry.definitions import load_definitions
    from unimmad_cl.config import ModelConfig, TrainConfig
    from unimmad_cl.data.synth.photos import write_photo_benchmark
    from unimmad_cl.evaluation.report import load_report
    from unimmad_cl.training.stages import Context, train_base, train_incremental
    from unimmad_cl.workspace import Workspace

    root = Path(tempfile.mkdtemp(prefix="unimmad-plasticity-"))
    out: dict = {"variants": {}}
    try:
        data = root / "data"
        write_photo_benchmark(data, seed, image_size, n_train, n_test, tasks=[*base_tasks, *new_tasks])
        specs = {s.name: s for s in load_definitions(data / "tasks.yaml", data_root=data)}
        config = ModelConfig.preset("lite").replace(image_size=image_size, **(model_overrides or {})).validated()
        train = TrainConfig.preset("lite").with_overrides(epochs=base_epochs, device="cpu", seed=seed)
        base_ws = Workspace.resolve(root / "base")
        started = time.perf_counter()
        with base_ws.open_registry() as registry:
            store.add_tasks(registry, [specs[n] for n in [*base_tasks, *new_tasks]])
            ctx = Context(base_ws.path, registry, progress=False, echo=lambda m: print(f"  [base] {m}", flush=True))
            train_base(ctx, list(base_tasks), config, train)
        out["base_seconds"] = time.perf_counter() - started
        for label, overrides in variants:
            ws_path = root / f"variant-{len(out['variants'])}"
            shutil.copytree(base_ws.path, ws_path, ignore=shutil.ignore_patterns("cache"))
            ws = Workspace.resolve(ws_path)
            started = time.perf_counter()
            with ws.open_registry() as registry:
                later = train.with_overrides(epochs=incremental_epochs, **overrides)
                ctx = Context(ws.path, registry, progress=False,
                              echo=lambda m, label=label: print(f"  [{label}] {m}", flush=True) if "epoch" not in m else None)
                train_incremental(ctx, list(new_tasks), later)
                reports = {m: load_report(registry, ws.path, m) for m in METRICS}
            r = reports["i_auroc"]
            out["variants"][label] = {
                "overrides": overrides,
                "seconds": time.perf_counter() - started,
                "matrix": {m: {t: {str(s): v for s, v in rep.matrix[t].items()} for t in rep.tasks}
                           for m, rep in reports.items()},
                "learned_in_stage": r.learned,
                "final_mean": {m: rep.final_mean() for m, rep in reports.items()},
                "average_forgetting": {m: rep.average_forgetting for m, rep in reports.items()},
            }
            print(table_row(label, out["variants"][label], new_tasks), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def table_row(label: str, run: dict, new_tasks) -> str:
    """`label | new task just learned → final (I-AUROC) ... | final mean | avg forgetting`."""
    matrix, learned = run["matrix"]["i_auroc"], run["learned_in_stage"]
    cells = []
    for task in new_tasks:
        row = matrix[task]
        final = row[max(row, key=int)]
        cells.append(f"{row[str(learned[task])]:.3f} → {final:.3f}")
    fm, af = run["final_mean"], run["average_forgetting"]
    return (f"| {label} | " + " | ".join(cells) + f" | {fm['i_auroc']:.3f} / {fm['p_auroc']:.3f} / {fm['aupro']:.3f} "
            f"| {af['i_auroc']:.3f} / {af['p_auroc']:.3f} / {af['aupro']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_args(parser)
    parser.add_argument("--base", default="brick,coffee,motorcycle")
    parser.add_argument("--new", default="grass,ihc,chelsea")
    parser.add_argument("--variant", action="append", default=[], help="label:setting=value,...")
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--incremental-epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="", metavar="FIELD=VALUE,...",
                        help="ModelConfig overrides of the base stage (e.g. num_leaders=16)")
    args = parser.parse_args(argv)
    if args.quick:
        args.base, args.new, args.base_epochs, args.incremental_epochs = "brick", "coffee", 1, 1
        args.train, args.test, args.image_size = 4, 4, 64
    threads = common.set_threads(args.threads)
    env = common.environment({"threads_requested": args.threads})
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    _, model_overrides = parse_variant(f"model:{args.model}")
    result = run(args.base.split(","), args.new.split(","), variants, args.base_epochs, args.incremental_epochs,
                 args.train, args.test, args.image_size, args.seed, model_overrides)
    result.update(command=" ".join(["python -m benchmarks.plasticity", *(argv if argv is not None else sys.argv[1:])]), environment=common.finish_environment(env),
                  threads=threads, settings=vars(args) | {"out_dir": str(args.out_dir)})
    print(f"wrote {common.write_result(NAME, result, args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
