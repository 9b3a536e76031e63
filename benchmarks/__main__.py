"""Run the whole benchmark suite: `python -m benchmarks` (full, ~10-15 min on 2 CPU cores) or
`python -m benchmarks --quick` (tiny sizes, ~2-3 min).

Each benchmark writes benchmarks/results/<name>.json; BENCHMARKS.md summarizes them.

    python -m benchmarks                       # everything, full sizes
    python -m benchmarks --quick               # everything, tiny sizes
    python -m benchmarks --only storage,inference
    python -m benchmarks --threads 0           # torch's default thread count (idle machine)
    python -m benchmarks --out-dir /tmp/res    # keep the committed results untouched
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR

# name -> how the suite calls it: (module, full argv, quick argv); threads/out-dir are appended
# where the benchmark takes them.
SUITE = {
    "cmoe_inference": ("benchmarks.cmoe_inference", [], ["--quick"]),
    "inference": ("benchmarks.inference", [], ["--quick"]),
    "training_speed": ("benchmarks.training_speed", [], ["--quick"]),
    "storage": ("benchmarks.storage", [], ["--quick"]),
    "metrics_speed": ("benchmarks.metrics_speed", [], ["--quick"]),
    "registry_scale": ("benchmarks.registry_scale", [], ["--quick"]),
    "cli_startup": ("benchmarks.cli_startup", [], ["--runs", "2"]),
    "concurrency": ("benchmarks.concurrency", [], ["--quick"]),
}
# benchmarks by colleagues with their own argument sets
OWN_ARGS = {"metrics_speed", "cli_startup"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SUITE)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    names = list(SUITE) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; expected one of: {', '.join(SUITE)}")
    failed, skipped, start = [], [], time.perf_counter()
    for name in names:
        module, full, quick = SUITE[name]
        argv_ = list(quick if args.quick else full)
        if name == "metrics_speed":
            argv_ += ["--out", str(Path(args.out_dir) / "metrics_speed.json")]
        elif name not in OWN_ARGS:
            argv_ += ["--threads", str(args.threads), "--out-dir", str(args.out_dir)]
        if name == "cli_startup" and Path(args.out_dir).resolve() != RESULTS_DIR.resolve():
            print("=== cli_startup: skipped (it always writes benchmarks/results/cli_startup.json)\n")
            skipped.append(name)
            continue
        print(f"=== {name}: python -m {module} {' '.join(argv_)}", flush=True)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(module)
            if name == "cli_startup":  # takes its arguments from sys.argv and writes a fixed path
                saved = sys.argv
                sys.argv = [module, *argv_]
                try:
                    mod.main()
                finally:
                    sys.argv = saved
            else:
                mod.main(argv_)
        except Exception as exc:  # one broken benchmark does not stop the suite
            failed.append(name)
            print(f"!!! {name} failed: {type(exc).__name__}: {exc}", flush=True)
        print(f"=== {name}: {time.perf_counter() - t0:.0f} s\n", flush=True)
    ran = len(names) - len(skipped)
    print(f"suite: {ran - len(failed)}/{ran} benchmarks in {time.perf_counter() - start:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "") + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
