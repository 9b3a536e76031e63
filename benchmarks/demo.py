"""The demo's numbers with their baselines: `unimmad-cl demo` (default settings), timed, and on
the very same data the prior-ceiling baseline and anomalib PatchCore (same weights, per task).

    python -m benchmarks.demo              # the default demo (about 5 minutes on 2 idle cores)
    python -m benchmarks.demo --quick      # the --quick demo
    python -m benchmarks.demo --keep DIR   # and keep the demo's folder (its report, pictures)

Writes benchmarks/results/demo.json: wall time with load average and threads, per task the
demo model's final I-AUROC / P-AUROC / AUPRO beside the ceiling's and PatchCore's, the final
means, average forgetting, and the demo's targets checked.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import common
from benchmarks.continual_photos import Settings, run_ceiling, run_peer

NAME = "demo"
TARGETS = {"i_auroc": 0.90, "p_auroc": 0.95, "aupro": 0.80, "forgetting": 0.03}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_args(parser)
    parser.add_argument("--no-peers", action="store_true", help="skip anomalib PatchCore")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a DemoSettings field (e.g. base_epochs=16), to size the demo")
    parser.add_argument("--keep", type=Path, help="also keep the demo's folder (data, workspace, report) here")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    from unimmad_cl.demo import QUICK, DemoSettings, run_demo

    demo = QUICK if args.quick else DemoSettings()
    for item in args.set:
        key, value = item.split("=", 1)
        demo = replace(demo, **{key: type(getattr(demo, key))(value)})
    env = common.environment({"threads_requested": args.threads})
    root = Path(tempfile.mkdtemp(prefix="unimmad-demo-bench-"))
    try:
        started = time.perf_counter()
        result = run_demo(root / "demo", demo, device="cpu", progress=False, echo=lambda m: print(m, flush=True),
                          detail=lambda m: None)
        demo_seconds = time.perf_counter() - started
        load_after_demo = list(__import__("os").getloadavg())
        data = root / "demo" / "data"
        same = Settings(tasks=demo.tasks, base_tasks=demo.base_tasks, image_size=demo.image_size,
                        n_train=demo.n_train, n_test=demo.n_test, seed=demo.seed, preset=demo.preset)
        ceiling = run_ceiling(data, same, threads)
        patchcore = {"skipped": "--no-peers"} if args.no_peers else run_peer("patchcore", data, same, threads)
        if args.keep:
            shutil.copytree(root / "demo", args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    reports = result.reports
    per_task = {}
    for task in demo.tasks:
        pc = (patchcore.get("per_task") or {}).get(task, {})
        per_task[task] = {
            "model": {m: r.matrix[task].get(r.final_stage) for m, r in reports.items()},
            "model_just_learned": {m: r.matrix[task].get(r.learned[task]) for m, r in reports.items()},
            "ceiling": ceiling["per_task"][task]["metrics"],
            "patchcore": pc.get("metrics") if isinstance(pc, dict) else None,
        }
    final = {m: r.final_mean() for m, r in reports.items()}
    forgetting = {m: r.average_forgetting for m, r in reports.items()}

    def mean_of(kind: str, metric: str):
        values = [v[kind][metric] for v in per_task.values() if v[kind] and v[kind].get(metric) is not None]
        return sum(values) / len(values) if values else None

    out = {
        "command": " ".join(["python -m benchmarks.demo", *(argv if argv is not None else sys.argv[1:])]),
        "environment": common.finish_environment(env),
        "load_avg_after_demo": load_after_demo,
        "settings": {k: getattr(demo, k) for k in demo.__dataclass_fields__},
        "demo_seconds": demo_seconds,
        "per_task": per_task,
        "final_mean": final,
        "average_forgetting": forgetting,
        "ceiling_mean": {m: mean_of("ceiling", m) for m in final},
        "patchcore_mean": {m: mean_of("patchcore", m) for m in final},
        "targets": {
            "i_auroc": final["i_auroc"] is not None and final["i_auroc"] >= TARGETS["i_auroc"],
            "p_auroc": final["p_auroc"] is not None and final["p_auroc"] >= TARGETS["p_auroc"],
            "aupro": final["aupro"] is not None and final["aupro"] >= TARGETS["aupro"],
            "forgetting": all(f is not None and f <= TARGETS["forgetting"] for f in forgetting.values()),
            "model_at_least_ceiling": all(
                final[m] is not None and final[m] >= (mean_of("ceiling", m) or 0) for m in ("i_auroc", "p_auroc")),
            "within_5_minutes": demo_seconds <= 300,
        },
    }
    path = common.write_result(NAME, out, args.out_dir)
    print(f"demo {demo_seconds:.0f} s (load {out['environment']['load_avg_start'][0]:.2f} -> {load_after_demo[0]:.2f}, "
          f"{threads} threads); wrote {path}")
    for task, row in per_task.items():
        print(task, {k: {m: (None if v is None or v.get(m) is None else round(v[m], 3)) for m in final}
                     for k, v in row.items() if v})
    print("targets", out["targets"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
