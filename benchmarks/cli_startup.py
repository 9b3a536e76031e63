"""Wall time of the registry commands of the CLI, each a fresh process (target < 1.5 s).

    python -m benchmarks.cli_startup              # 5 runs per command
    python -m benchmarks.cli_startup --runs 10

Runs the installed `unimmad-cl` script (as a user would) against a temporary workspace holding
a tiny folder-layout dataset, and records per command the median, min and max seconds and
whether torch was imported (it must not be). Writes benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

RESULTS = Path(__file__).parent / "results" / "cli_startup.json"
TARGET_S = 1.5


def make_dataset(root: Path) -> None:
    for cls in ("a", "b"):
        for group, stem in (("train/good", "000"), ("train/good", "001"), ("test/good", "100"),
                            ("test/crack", "101")):
            folder = root / cls / group / "infrared"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8)).save(folder / f"{stem}.png")
        (root / cls / "ground_truth" / "crack").mkdir(parents=True)
        Image.new("L", (8, 8), 255).save(root / cls / "ground_truth" / "crack" / "101.png")


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("unimmad-cl")
    base = [exe] if exe else [sys.executable, "-m", "cli"]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        make_dataset(ws / "data" / "light")
        env = {**os.environ, "UNIMMAD_HOME": str(ws)}
        timed([*base, "init"], env)  # create the registry once: commands below open it
        commands = {
            "--help": ["--help"],
            "init": ["init"],
            "add-task": ["add-task", "--name", "light", "--modality", "infrared"],
            "tasks": ["tasks"],
            "tasks --json": ["tasks", "--json"],
            "show-task --json": ["show-task", "light", "--json"],
            "remove-task": ["remove-task", "light"],
            "db current": ["db", "current"],
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():  # add-task ... remove-task: a full cycle
                seconds[name].append(timed([*base, *command], env))
        probe = (
            "import sys; from cli import main\n"
            "try: main(['tasks', '--json'])\n"
            "except SystemExit: pass\n"
            "print('torch' in sys.modules)"
        )
        torch_imported = subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                                        capture_output=True, text=True).stdout.strip() == "True"
    rows = {
        name: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
               "max_s": round(max(v), 3), "under_target": statistics.median(v) < TARGET_S}
        for name, v in seconds.items()
    }
    result = {
        "benchmark": "cli_startup",
        "target_s": TARGET_S,
        "runs": args.runs,
        "torch_imported": torch_imported,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "commands": rows,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        flag = "ok" if row["under_target"] else "SLOW"
        print(f"{name:<18} median {row['median_s']:.3f} s  (min {row['min_s']:.3f}, "
              f"max {row['max_s']:.3f})  {flag}")
    print(f"torch imported: {torch_imported}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
