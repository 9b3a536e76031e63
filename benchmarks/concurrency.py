"""Fair under load: 1, 2 and 3 training processes at once on the same cores, with torch's
default threads and wait policy (`default`) and with `unimmad_cl.runtime`'s policy (`policy`).

    python -m benchmarks.concurrency          # lite, 128 px, batch 8: 1/2/3 processes x default/policy
    python -m benchmarks.concurrency --variants default,policy,one,passive,spin1k --steps 8   # BENCHMARKS.md
    python -m benchmarks.concurrency --quick  # tiny, 64 px, 1 and 2 processes, 2 steps (smoke)

Every process is a fresh interpreter running a real base-stage training loop: the model of the
preset (ImageNet EfficientNet-Lite0 from its wheel for `lite`), Adam over every parameter,
the step `unimmad_cl.training.loop.train_epochs` takes per batch (forward, loss, backward,
Adam step, `.item()`; `benchmarks.training_speed.step`) on a fixed set of synthetic batches
mixing 1- and 2-modality samples. The processes build their model and take 2 warm-up steps
(the first step creates oneDNN primitives), wait until all are ready, run `--steps` timed
steps, then keep training until the last one has finished its timed steps, so that every
process is measured under the same contention.

Variants (how each process sets itself up before importing torch):
- default: nothing (torch's threads = cores; libgomp's default wait: spin 300k iterations);
- policy: `unimmad_cl.runtime.configure()` as every `unimmad-cl` command does (threads from
  the cores and the load average, GOMP_SPINCOUNT=1000);
- one: 1 thread, default wait policy; passive: threads = cores, OMP_WAIT_POLICY=PASSIVE;
  spin<N> / spin<N>k (e.g. spin1k): threads = cores, GOMP_SPINCOUNT=N (a bounded spin, then
  sleep): the candidates the policy was chosen from.

Per process: samples/s over the timed steps, the ratio to the same variant alone (`ratio_to_solo`)
and to `default` alone (`ratio_to_default_solo`), CPU seconds and samples per CPU second (the
share of the CPU it got that went into training rather than spinning: independent of how much
CPU other processes left), threads and wait policy; per run the load average before. Target:
3 processes on 2 cores each >= 1/4 of its solo throughput. Configurations run round-robin (n=1 default, n=1 policy, n=2 default, ...), `--repeats` times.

Writes benchmarks/results/concurrency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

TARGET_RATIO_3 = 0.25
# variant -> environment set before torch is imported ("policy": unimmad_cl.runtime.configure())
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "policy": {},
    "one": {"OMP_NUM_THREADS": "1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def _variant_env(variant: str) -> dict[str, str]:
    """The environment of a variant; `spin<N>` / `spin<N>k`: threads = cores, GOMP_SPINCOUNT=N."""
    if variant in VARIANTS:
        return VARIANTS[variant]
    count = variant.removeprefix("spin")
    if variant.startswith("spin") and count.removesuffix("k").isdigit():
        return {"GOMP_SPINCOUNT": str(int(count.removesuffix("k")) * (1000 if count.endswith("k") else 1))}
    raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)} or spin<N>[k]")


# OpenMP/torch settings a worker must not inherit from whoever started the benchmark
_CLEAN = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND",
          "KMP_BLOCKTIME", "UNIMMAD_THREADS")


def _setup(variant: str) -> dict:
    """Set the process up as `variant` says; runs before torch is imported."""
    if variant == "policy":
        from unimmad_cl.runtime import configure

        return configure().to_json()
    os.environ.update(_variant_env(variant))
    return dict(_variant_env(variant))


def _wait_name() -> str:
    if os.environ.get("OMP_WAIT_POLICY"):
        return os.environ["OMP_WAIT_POLICY"]
    return f"spin {os.environ['GOMP_SPINCOUNT']}" if os.environ.get("GOMP_SPINCOUNT") else "default"


def worker(spec: dict) -> dict:
    """One training process (`--worker SPEC`): prints its measurement as JSON."""
    decided = _setup(spec["variant"])
    import warnings

    import torch

    from benchmarks.training_speed import make_batches, step
    from unimmad_cl.config import ModelConfig
    from unimmad_cl.model.unimmad import UniMMAD

    sync = Path(spec["sync"])
    torch.manual_seed(0)
    config = ModelConfig.preset(spec["preset"]).replace(image_size=spec["image_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = UniMMAD(config)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = make_batches(config, spec["batch"], 2, seed=spec["index"])
    for i in range(2):
        step(model, opt, batches[i % 2])
    (sync / f"ready.{spec['index']}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    times = []
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(spec["steps"]):
        t = time.perf_counter()
        step(model, opt, batches[i % 2])
        times.append(time.perf_counter() - t)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    (sync / f"done.{spec['index']}").touch()
    extra = 0
    while sum(1 for p in sync.iterdir() if p.name.startswith("done.")) < spec["processes"]:
        step(model, opt, batches[extra % 2])  # keep the others company until they are measured
        extra += 1
    return {
        "samples_per_s": spec["batch"] * spec["steps"] / elapsed,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "cores_used": cpu / elapsed,
        "median_step_s": statistics.median(times),
        "threads": torch.get_num_threads(),
        "wait_policy": _wait_name(),
        "decided": decided,
        "steps_after": extra,
    }


def run_config(variant: str, processes: int, args) -> dict:
    """`processes` workers of `variant` at once; returns their measurements."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN}
    env["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="unimmad-concurrency-") as sync:
        procs, logs = [], []
        for i in range(processes):
            spec = {"variant": variant, "preset": args.preset, "image_size": args.image_size, "batch": args.batch,
                    "steps": args.steps, "processes": processes, "index": i, "sync": sync}
            out, err = open(Path(sync) / f"out.{i}", "w+"), open(Path(sync) / f"err.{i}", "w+")
            logs.append((out, err))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.concurrency", "--worker", json.dumps(spec)],
                cwd=root, env=env, stdout=out, stderr=err, text=True,
            ))
        try:
            deadline = time.time() + args.timeout
            while sum(1 for p in Path(sync).iterdir() if p.name.startswith("ready.")) < processes:
                if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
                    break
                time.sleep(0.05)
            load_at_go = list(os.getloadavg())
            (Path(sync) / "go").touch()
            while any(p.poll() is None for p in procs):
                failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
                if failed or time.time() > deadline:  # the others would wait for it forever
                    i = failed[0] if failed else None
                    for p in procs:
                        p.kill()
                    for p in procs:
                        p.wait()
                    if i is None:
                        raise RuntimeError(f"{variant} x{processes}: ran past --timeout {args.timeout} s")
                    logs[i][1].seek(0)
                    raise RuntimeError(f"{variant} x{processes}: worker {i} failed:\n{logs[i][1].read()[-2000:]}")
                time.sleep(0.1)
            rows = []
            for i, p in enumerate(procs):
                out, err = logs[i]
                out.seek(0)
                err.seek(0)
                if p.returncode != 0:
                    raise RuntimeError(f"{variant} x{processes}: worker {i} failed:\n{err.read()[-2000:]}")
                rows.append(json.loads(out.read().strip().splitlines()[-1]))
        finally:
            for out, err in logs:
                out.close()
                err.close()
    return {"variant": variant, "processes": processes, "load_avg_before": load_before,
            "load_avg_at_start": load_at_go, "load_avg_after": list(os.getloadavg()), "workers": rows}


def _settle(limit: float, below: float) -> float:
    start = time.perf_counter()
    while limit > 0 and os.getloadavg()[0] >= below and time.perf_counter() - start < limit:
        time.sleep(5)
    return time.perf_counter() - start


def summarize(runs: list[dict], variants: list[str], counts: list[int]) -> dict:
    """Median over repeats of each process's samples/s, and the ratios to the solo runs."""
    out: dict = {}
    for v in variants:
        out[v] = {}
        for n in counts:
            chosen = [r for r in runs if r["variant"] == v and r["processes"] == n]
            # per repeat, the slowest and the mean process; medians over repeats
            sps = [[w["samples_per_s"] for w in r["workers"]] for r in chosen]
            out[v][str(n)] = {
                "samples_per_s_each": [round(x, 3) for s in sps for x in s],
                "samples_per_s_min": statistics.median(min(s) for s in sps),
                "samples_per_s_mean": statistics.median(statistics.mean(s) for s in sps),
                "threads": sorted({w["threads"] for r in chosen for w in r["workers"]}),
                "wait_policy": sorted({w["wait_policy"] for r in chosen for w in r["workers"]}),
                "cores_used_total": statistics.median(sum(w["cores_used"] for w in r["workers"]) for r in chosen),
                # samples per CPU second: how much of the CPU it got went into training (not spinning);
                # unlike samples/s, it does not depend on how much CPU other processes left
                "samples_per_cpu_s": statistics.median(
                    statistics.mean(w["samples_per_s"] / w["cores_used"] for w in r["workers"]) for r in chosen),
                "load_avg_at_start": [round(r["load_avg_at_start"][0], 2) for r in chosen],
            }
    for v in variants:
        solo = out[v]["1"]["samples_per_s_mean"]
        default_solo = out["default"]["1"]["samples_per_s_mean"] if "default" in out else None
        for n in counts:
            row = out[v][str(n)]
            row["ratio_to_solo_min"] = row["samples_per_s_min"] / solo
            row["ratio_to_solo_mean"] = row["samples_per_s_mean"] / solo
            if default_solo:
                row["ratio_to_default_solo_min"] = row["samples_per_s_min"] / default_solo
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, 64 px, 1 and 2 processes, 2 steps")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR, help="where concurrency.json goes")
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # the suite's; workers decide their own
    parser.add_argument("--variants", default="default,policy", help=f"comma-separated: {', '.join(VARIANTS)}, spin<N>[k]")
    parser.add_argument("--processes", default=None, help="comma-separated process counts (default 1,2,3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per process (default 12)")
    parser.add_argument("--repeats", type=int, default=1, help="round-robin repeats of every configuration")
    parser.add_argument("--preset", default=None, help="model preset (default lite; --quick: tiny)")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default 128; --quick: 64)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for one configuration")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="before each configuration wait (at most this many seconds) for the 1-minute "
                             "load average to fall below --settle-load, so that one run's load does not "
                             "steer the next run's automatic threads (0: do not wait)")
    parser.add_argument("--settle-load", type=float, default=0.5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one training process
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    args.preset = args.preset or ("tiny" if args.quick else "lite")
    args.image_size = args.image_size or (64 if args.quick else 128)
    args.steps = args.steps or (2 if args.quick else 12)
    counts = [int(n) for n in (args.processes or ("1,2" if args.quick else "1,2,3")).split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        for v in variants:
            _variant_env(v)
    except ValueError as exc:
        parser.error(str(exc))
    if 1 not in counts:
        parser.error("--processes must include 1 (the solo run every ratio refers to)")
    from unimmad_cl.runtime import available_cpus

    env = {
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "cpus_available": available_cpus(),
        "python": platform.python_version(), "git_commit": common._git_commit(),
        "load_avg_start": list(os.getloadavg()), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    runs = []
    for _ in range(args.repeats):
        for n in counts:
            for v in variants:
                waited = _settle(args.settle, args.settle_load)
                run = run_config(v, n, args)
                run["settle_waited_s"] = waited
                runs.append(run)
                each = ", ".join(f"{w['samples_per_s']:.2f}" for w in run["workers"])
                print(f"{v:>8} x{n}: samples/s {each} (threads {run['workers'][0]['threads']}, "
                      f"wait {run['workers'][0]['wait_policy']}, load {run['load_avg_at_start'][0]:.1f})", flush=True)
    summary = summarize(runs, variants, counts)
    top = str(max(counts))
    result = {
        "benchmark": "concurrency",
        "command": "python -m benchmarks.concurrency" + (" --quick" if args.quick else ""),
        "environment": common.finish_environment(env),
        "settings": {"preset": args.preset, "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
                     "repeats": args.repeats, "variants": variants, "processes": counts,
                     "settle_s": args.settle, "settle_load": args.settle_load},
        "target": f"{TARGET_RATIO_3}: with 3 processes on 2 cores each >= 1/4 of its solo samples/s",
        "summary": summary,
        "target_met": {v: summary[v][top]["ratio_to_solo_min"] >= TARGET_RATIO_3 for v in variants} if top == "3" else None,
        "runs": runs,
    }
    for v in variants:
        print(f"{v:>8}: " + "; ".join(
            f"x{n} min {summary[v][str(n)]['samples_per_s_min']:.2f} samples/s ({summary[v][str(n)]['ratio_to_solo_min']:.2f} of solo)"
            for n in counts))
    print(f"wrote {common.write_result('concurrency', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
