"""Shared helpers of the benchmark suite: environment record, interleaved timing, peak memory,
result files.

Every benchmark writes `benchmarks/results/<name>.json` holding `environment` (machine, torch
version, threads, load average before and after) and its measurements. Ratios are always
taken between variants timed in the same run with interleaved repeats (round-robin: A B C A B
C ...), so a burst of load from other processes hits every variant alike.

Threads: the suite sets `torch.set_num_threads(--threads)` (default 1). On a shared 2-core
machine with other processes busy, 2 OpenMP threads oversubscribe the cores and small ops
stall for milliseconds spinning (a 65k-element relu went from 5 us to 260 us), which would
distort every figure; pass `--threads 0` on an idle machine to keep torch's default.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def set_threads(threads: int) -> int:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Machine, versions, threads and the current load (call at the start of a benchmark)."""
    import torch

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.is_available(),
        "git_commit": _git_commit(),
        "load_avg_start": list(os.getloadavg()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }


def finish_environment(env: dict[str, Any]) -> dict[str, Any]:
    env["load_avg_end"] = list(os.getloadavg())
    return env


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, number: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every fn, run round-robin `repeats` times after `warmup` rounds;
    each sample is the mean of `number` back-to-back calls (for millisecond-sized calls)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number)
    return times


def stats(seconds: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": len(seconds),
    }


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """median(slow) / median(fast): how many times faster `fast` is."""
    return statistics.median(times[slow]) / statistics.median(times[fast])


def min_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """min(slow) / min(fast): the same ratio from the least-disturbed samples (on a loaded
    machine the minimum is the closest to the uncontended time)."""
    return min(times[slow]) / min(times[fast])


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak resident memory while `fn` runs, above the resident memory before it.

    Uses /proc/self/status VmHWM after resetting it (Linux); torch CPU tensors are plain
    malloc'd memory, so this sees them (tracemalloc would not). Memory the allocator kept
    from earlier calls and reuses is already resident, so the extra is a lower bound of the
    call's working set; `peak_rss_bytes` is the whole process at its peak.
    """
    import gc

    gc.collect()
    before = _status_kib("VmRSS")
    if before is None or not _reset_peak_rss():
        import resource

        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"method": "ru_maxrss (process lifetime)", "peak_rss_bytes": peak * 1024, "peak_extra_bytes": None}
    fn()
    peak = _status_kib("VmHWM")
    return {
        "method": "VmHWM reset via /proc/self/clear_refs",
        "rss_before_bytes": before * 1024,
        "peak_rss_bytes": peak * 1024,
        "peak_extra_bytes": max(0, peak - before) * 1024,
    }


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- results


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, path)  # a killed run leaves the previous result intact
    return path


def common_args(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (< 1 min)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where <name>.json goes")


def probe_in_subprocess(module: str, spec: dict[str, Any], threads: int, timeout: float = 600) -> dict[str, Any]:
    """Run `python -m <module> --probe '<spec json>'` in a fresh process and return the JSON
    it prints last: peak memory of a workload measured without the allocator caches of
    earlier runs in this process."""
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", module, "--probe", json.dumps(spec), "--threads", str(threads)],
        capture_output=True, text=True, cwd=root, env=env, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {module} {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_peak(setup: Callable[[], Any], work: Callable[[Any], Any]) -> dict[str, Any]:
    """In a fresh process: peak RSS of `work(setup())` above the RSS after `setup`."""
    state = setup()
    result = peak_memory(lambda: work(state))
    result["note"] = "fresh process; peak_extra = peak RSS during the work minus RSS after building the model and inputs"
    return result
