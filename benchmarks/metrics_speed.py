"""Speed and memory of `compute_metrics` against a straightforward threshold-sweep reference.

    python -m benchmarks.metrics_speed            # full: 1,700 maps of 256x256 (MVTec AD size)
    python -m benchmarks.metrics_speed --quick    # a smaller run, for a quick look

Synthetic MVTec-like test set: every other image anomalous with 1-3 elliptic defects, maps =
noise plus a defect signal, Gaussian-blurred (sigma 4) like real anomaly maps, float32.

1. Comparison on the same maps (the first `--compare-n` of them): `compute_metrics` (all
   seven metrics, exact) versus the reference, which sweeps `--thresholds` evenly spaced
   thresholds and, per threshold, recomputes the binary map, the FP/TP counts and every
   region's overlap (`np.bincount` over region labels), then integrates pixel AUROC and
   AUPRO with the trapezoid rule. Both are timed on identical inputs (medians over
   `--repeats`); the reference is never extrapolated. |difference| of AUPRO and pixel AUROC
   is the reference's discretization error (ours is exact, see tests/test_metrics.py).
2. `compute_metrics` alone on the full set: median time and peak extra memory (tracemalloc,
   which sees numpy's buffers, measured in a separate call so it does not slow the timing).

Writes benchmarks/results/metrics_speed.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

from unimmad_cl.evaluation.metrics import compute_metrics

RESULTS = Path(__file__).parent / "results" / "metrics_speed.json"


def synthetic_test_set(n: int, size: int, seed: int = 0):
    """labels `[n]`, scores `[n]`, masks `[n, size, size]` bool, maps float32, MVTec-like."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    maps = np.empty((n, size, size), np.float32)
    for i in range(n):  # per image: bounded temporaries
        raw = rng.random((size, size), dtype=np.float32)
        # every other image anomalous (so any prefix has both classes); defects of varied
        # size and strength, some barely above the blurred noise, so the curves are not trivial
        for _ in range(rng.integers(1, 4) if i % 2 else 0):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(max(2, size // 64), max(3, size // 6), 2)
            defect = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            masks[i] |= defect
            raw += defect * np.float32(rng.uniform(0.0, 0.15))
        maps[i] = ndimage.gaussian_filter(raw, sigma=4)
    labels = masks.reshape(n, -1).any(1).astype(np.int64)
    top = max(1, size * size // 1000)
    scores = np.sort(maps.reshape(n, -1), axis=1)[:, -top:].mean(1)
    return labels, scores, masks, maps


def _trapezoid_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and (~keep).any():
        j = int(np.argmax(~keep))
        y_lim = np.interp(limit, x[j - 1 : j + 1], y[j - 1 : j + 1])
        xs, ys = np.append(xs, limit), np.append(ys, y_lim)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2)


def sweep_reference(masks, maps, n_thresholds: int = 200, limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC and AUPRO by the classic sweep: one full pass over the maps per threshold."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    regions, n_regions = ndimage.label(masks, structure=structure)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    n_neg = masks.size - int(masks.sum())
    n_pos = masks.size - n_neg
    fpr, tpr, pro = [0.0], [0.0], [0.0]
    for t in np.linspace(maps.max(), maps.min(), n_thresholds):
        hit = maps >= t
        overlap = np.bincount(regions[hit], minlength=n_regions + 1)[1:]
        tp = int(overlap.sum())
        fpr.append((int(hit.sum()) - tp) / n_neg)
        tpr.append(tp / n_pos)
        pro.append(float(np.mean(overlap / sizes)))
    fpr, tpr, pro = np.array(fpr + [1.0]), np.array(tpr + [1.0]), np.array(pro + [1.0])
    return {"p_auroc": _trapezoid_to(fpr, tpr, 1.0), "aupro": _trapezoid_to(fpr, pro, limit) / limit}


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _peak_extra_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _environment() -> dict:
    versions = {}
    for pkg in ("numpy", "scipy", "torch"):
        try:  # metadata only: importing torch is not needed to time numpy code
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "thread_env": threads,
        "note": "compute_metrics and the reference are single-threaded numpy/scipy code",
    }


def run(n: int, size: int, compare_n: int, thresholds: int, repeats: int, seed: int) -> dict:
    labels, scores, masks, maps = synthetic_test_set(n, size, seed)
    c = slice(0, compare_n)
    sub = (labels[c], scores[c], masks[c], maps[c])
    ours_s, ours = _median_time(lambda: compute_metrics(*sub), repeats)
    ref_s, ref = _median_time(lambda: sweep_reference(masks[c], maps[c], thresholds), repeats)
    full_s, full = _median_time(lambda: compute_metrics(labels, scores, masks, maps), repeats)
    peak = _peak_extra_bytes(lambda: compute_metrics(labels, scores, masks, maps))
    return {
        "environment": _environment(),
        "data": {
            "n": n, "size": size, "seed": seed, "maps_dtype": "float32",
            "anomalous_pixel_fraction": float(masks.mean()),
            "input_bytes": int(maps.nbytes + masks.nbytes),
        },
        "comparison": {
            "n": compare_n, "thresholds": thresholds, "repeats": repeats,
            "compute_metrics_s": ours_s, "reference_s": ref_s, "speedup": ref_s / ours_s,
            "aupro": ours["aupro"], "aupro_reference": ref["aupro"],
            "aupro_abs_diff": abs(ours["aupro"] - ref["aupro"]),
            "p_auroc_abs_diff": abs(ours["p_auroc"] - ref["p_auroc"]),
            "note": "compute_metrics computes all 7 metrics exactly; the reference only pixel AUROC and AUPRO on a 200-threshold grid",
        },
        "full": {
            "n": n, "compute_metrics_s": full_s, "repeats": repeats,
            "peak_extra_bytes": peak,
            "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "metrics": full,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=200, size=128, compare-n=100, repeats=3")
    parser.add_argument("--n", type=int, default=1700, help="maps in the full set")
    parser.add_argument("--size", type=int, default=256, help="map side in pixels")
    parser.add_argument("--compare-n", type=int, default=300, help="maps both methods run on")
    parser.add_argument("--thresholds", type=int, default=200, help="reference threshold count")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.size, args.compare_n = 200, 128, 100
    result = run(args.n, args.size, min(args.compare_n, args.n), args.thresholds, args.repeats, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)  # atomic: a killed run leaves the previous result intact
    cmp_, full = result["comparison"], result["full"]
    print(
        f"same {cmp_['n']} maps of {args.size}x{args.size}: compute_metrics {cmp_['compute_metrics_s']:.2f} s, "
        f"{args.thresholds}-threshold sweep {cmp_['reference_s']:.2f} s -> {cmp_['speedup']:.1f}x; "
        f"|d aupro| {cmp_['aupro_abs_diff']:.2e}, |d p_auroc| {cmp_['p_auroc_abs_diff']:.2e}"
    )
    print(
        f"full {args.n} maps: compute_metrics {full['compute_metrics_s']:.2f} s, "
        f"peak extra {full['peak_extra_bytes'] / 2**20:.0f} MiB (inputs {result['data']['input_bytes'] / 2**20:.0f} MiB)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
