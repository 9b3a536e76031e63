"""`report --html` at scale: the size of the page and how long it takes to write and to
render, with 1,000 tasks and 200 stages (and a demo-sized workspace for comparison).

    python -m benchmarks.report_html            # 1,000 tasks, 200 stages (+ 7 tasks, 7 stages)
    python -m benchmarks.report_html --quick    # 60 tasks, 12 stages (+ 7 tasks, 7 stages)

The registry is filled directly (no training): a base stage learns all tasks but the last
199, then one incremental stage per task; after every stage every learned task gets the 7
metrics of one class (1.26 M rows at full size, bulk-inserted). Each task gets the heatmap
gallery files that evaluations write (its learning stage with the archive of every image's
map, and the final stage) and the final stage's MoE-Leader counts; the base stage records
backbone-weights provenance. Then:

* write: `unimmad-cl report --html --json --no-plots` as a fresh process (what a user runs;
  includes the imports), median of `--runs`;
* size of report.html;
* render: headless Chromium loads a copy of the page with a timing probe added (after the
  load event, two animation frames: the first frame painted), median of `--runs`; the wall
  time of a `--screenshot` run, against a trivial page's (Chromium's own start-up);
* the DOM size.

Chromium: Debian's `chromium` (`apt-get install chromium`); without it the render figures
are null with the reason. Writes benchmarks/results/report_html.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METRICS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that work as root in a container: no sandbox, no GPU, nothing that phones home.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-extensions", "--mute-audio"]
PROBE = ("<script>window.addEventListener('load',function(){setTimeout(function(){requestAnimationFrame(function(){"
         "requestAnimationFrame(function(){var n=performance.getEntriesByType('navigation')[0];"
         "console.log('unimmad-render '+JSON.stringify({frame_ms:performance.now(),load_ms:n?n.loadEventEnd:null,"
         "dom_nodes:document.getElementsByTagName('*').length}));});});},0);});</script>")


# --------------------------------------------------------------------------- Chromium


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(page: Path, *, screenshot: Path | None = None, dump_dom: bool = False, width: int = 1400,
                 height: int = 2400, timeout: float = 180) -> dict:
    """One headless Chromium run on `page` (a fresh profile): {seconds, console: [messages],
    dom (with dump_dom), returncode}. Console messages come from Chromium's log on stderr.
    Give `screenshot` or `dump_dom`: headless Chromium exits after one of them."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed")
    if screenshot is None and not dump_dom:
        raise ValueError("give screenshot= or dump_dom=True")
    with tempfile.TemporaryDirectory(prefix="unimmad-chromium-") as profile:
        args = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                f"--window-size={width},{height}"]
        if screenshot is not None:
            args.append(f"--screenshot={screenshot}")
        if dump_dom:
            args.append("--dump-dom")
        args.append(Path(page).resolve().as_uri())
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})
        seconds = time.perf_counter() - start
    console = [m.group(1) for m in re.finditer(r':CONSOLE[^\]]*\] "(.*)", source:', done.stderr)]
    return {"seconds": seconds, "console": console, "dom": done.stdout if dump_dom else None,
            "returncode": done.returncode, "stderr": done.stderr[-4000:]}


def render_times(page: Path, runs: int) -> dict:
    """First-frame time of `page` (timing probe on a copy), median of `runs`, and the DOM size."""
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    frames, loads, nodes = [], [], None
    try:
        for _ in range(runs):
            shot = probe.with_suffix(".png")
            result = run_chromium(probe, screenshot=shot)
            shot.unlink(missing_ok=True)
            found = [json.loads(m.split(" ", 1)[1]) for m in result["console"] if m.startswith("unimmad-render ")]
            if found:
                frames.append(found[0]["frame_ms"])
                loads.append(found[0]["load_ms"])
                nodes = found[0]["dom_nodes"]
    finally:
        probe.unlink(missing_ok=True)
    return {
        "first_frame_ms_median": statistics.median(frames) if frames else None,
        "first_frame_ms_all": frames,
        "load_event_ms_median": statistics.median([v for v in loads if v]) if any(loads) else None,
        "dom_nodes": nodes,
    }


def screenshot_wall(page: Path, runs: int) -> dict:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            times.append(run_chromium(page, screenshot=Path(tmp) / "s.png")["seconds"])
    return {"median_s": statistics.median(times), "all_s": times}


# --------------------------------------------------------------------------- a workspace


def fill(ws: Path, n_tasks: int, n_stages: int, seed: int = 0) -> dict:
    """A registry of `n_tasks` learned tasks over `n_stages` stages, evaluations bulk-inserted."""
    import numpy as np
    from sqlalchemy import insert

    from registry import store
    from registry.models import Evaluation, Task

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    base = n_tasks - (n_stages - 1)
    names = [f"task_{i:04d}" for i in range(n_tasks)]
    url = f"sqlite:///{ws / 'registry.db'}"
    weights = {"backbone": "efficientnet_lite0", "source": "package", "package": "example-weights",
               "version": "1.0", "sha256": "ab" * 32}
    with store.open_registry(url) as reg:
        store.add_tasks(reg, [
            store.TaskSpec(n, "folder", f"/data/{n}", ("rgb",), ("a",), "industrial", 1.0,
                           store.SampleCounts(200, 100, 60)) for n in names
        ])
        for stage in range(n_stages):
            tasks = names[:base] if stage == 0 else [names[base + stage - 1]]
            config = {"model": {"kernel_sizes": [1, 3, 5]}, "train": {"replay_ratio": 0.01}}
            if stage == 0:
                config["model_weights"] = weights
            store.start_stage(reg, "base" if stage == 0 else "incremental", tasks,
                              parent=None if stage == 0 else stage - 1, config=config, seed=0,
                              trainable_params=7273954 if stage == 0 else 114632, total_params=7273954)
            store.complete_stage(reg, stage, artifact=store.ArtifactInfo(
                "base" if stage == 0 else "delta", f"models/stage_{stage:03d}", f"{stage:064x}",
                29_000_000 if stage == 0 else 466_904), seconds=60.0 + stage)
        with reg.engine.begin() as conn:
            ids = dict(conn.execute(Task.__table__.select().with_only_columns(Task.name, Task.id)).all())
            rows = []
            learned_value = rng.uniform(0.6, 1.0, size=(n_tasks, len(METRICS)))
            drift = rng.uniform(0.0, 0.004, size=(n_tasks, len(METRICS)))
            for stage in range(n_stages):
                learned = base + stage
                for t in range(learned):
                    since = stage - max(0, t - base + 1)
                    for m, metric in enumerate(METRICS):
                        value = float(max(0.0, learned_value[t, m] - drift[t, m] * since))
                        rows.append({"stage_number": stage, "task_id": ids[names[t]], "cls": "a",
                                     "metric": metric, "value": value})
                if len(rows) > 200_000:
                    conn.execute(insert(Evaluation), rows)
                    rows = []
            if rows:
                conn.execute(insert(Evaluation), rows)
    return {"tasks": n_tasks, "stages": n_stages, "base_tasks": base,
            "evaluation_rows": sum(base + s for s in range(n_stages)) * len(METRICS),
            "fill_s": time.perf_counter() - started}


def galleries(ws: Path, n_tasks: int, n_stages: int, n_test: int = 100) -> dict:
    """The files evaluations write: each task's gallery at its learning stage (with the archive)
    and at the final stage; the final stage's leader counts."""
    import numpy as np

    from unimmad_cl.evaluation.gallery import ARCHIVE, THUMB, GalleryData, gallery_path, write_gallery
    from unimmad_cl.workspace import evaluation_summary_path

    started = time.perf_counter()
    rng = np.random.default_rng(1)
    base = n_tasks - (n_stages - 1)
    final = n_stages - 1
    yy, xx = np.mgrid[0:THUMB, 0:THUMB]
    summary = {}
    for t in range(n_tasks):
        name = f"task_{t:04d}"
        learned = 0 if t < base else t - base + 1
        texture = (127 + 60 * np.sin(xx / (3 + t % 5)) * np.cos(yy / (4 + t % 3)))[..., None] * [1.0, 0.9, 0.8]
        images = np.stack([np.clip(texture + rng.normal(0, 12, texture.shape), 0, 255) for _ in range(6)]).astype(np.uint8)
        masks = np.zeros((6, THUMB, THUMB), np.uint8)
        masks[:3, 20:36, 24:40] = 1
        keys = [f"a/{'crack' if i < 3 else 'good'}/{i:03d}" for i in range(6)]
        blob = np.exp(-((yy - 28) ** 2 + (xx - 32) ** 2) / 120.0)
        small = 255 * blob[:: THUMB // ARCHIVE, :: THUMB // ARCHIVE]  # smooth, like real anomaly maps
        for stage in sorted({learned, final}):
            maps = np.stack([np.clip(255 * (blob * (1.0 - i / 6) + rng.uniform(0, 0.2, blob.shape)), 0, 255)
                             for i in range(6)]).astype(np.uint8)
            archive_keys = keys + [f"a/good/{i:03d}" for i in range(6, n_test)]
            data = GalleryData(
                keys=keys, scores=np.linspace(1.2, 0.8, 6).astype(np.float32), labels=np.array([1, 1, 1, 0, 0, 0], np.int8),
                images=images, masks=masks, maps=maps, n_most=3, range=(0.8, 1.2), n_test=n_test, modality="rgb",
                archive_keys=archive_keys,
                archive_maps=np.clip(small[None] * rng.uniform(0.2, 1.0, (n_test, 1, 1))
                                     + rng.normal(0, 6, (n_test, ARCHIVE, ARCHIVE)), 0, 255).astype(np.uint8),
                archive_scores=rng.uniform(0.8, 1.2, n_test).astype(np.float32),
            )
            write_gallery(gallery_path(ws, stage, name), data, archive=stage == learned)
        counts = rng.integers(0, 50, size=(3, 3, 8))
        counts[:, :, t % 8] += 400
        summary[name] = {"mean": {}, "per_class": {}, "leader_counts": counts.tolist()}
    path = evaluation_summary_path(ws, final)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    sizes = [p.stat().st_size for p in (ws / "evaluations" / "gallery").rglob("*.npz")]
    return {"gallery_files": len(sizes), "gallery_bytes_total": sum(sizes),
            "gallery_bytes_per_file_median": statistics.median(sizes), "write_s": time.perf_counter() - started}


def cli_base() -> list[str]:
    exe = shutil.which("unimmad-cl")
    return [exe] if exe else [sys.executable, "-m", "cli"]


def measure(ws: Path, out: Path, runs: int, chromium_runs: int) -> dict:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*cli_base(), "--workspace", str(ws), "report", "--html", "--json", "--no-plots",
                        "--out", str(out)], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    page = out / "report.html"
    row = {"write": {"median_s": statistics.median(times), "all_s": times}, "html_bytes": page.stat().st_size}
    if find_chromium() is None:
        row["render"] = None
        row["render_skipped"] = "chromium is not installed (apt-get install chromium)"
        return row
    row["render"] = render_times(page, chromium_runs)
    row["screenshot_wall"] = screenshot_wall(page, chromium_runs)
    check = run_chromium(page, dump_dom=True)
    row["console_messages"] = check["console"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="(accepted for the suite; nothing here uses torch)")
    args = parser.parse_args(argv)
    sizes = [(7, 7), (60, 12)] if args.quick else [(7, 7), (1000, 200)]
    result = {
        "benchmark": "report_html",
        "command": "python -m benchmarks.report_html" + (" --quick" if args.quick else ""),
        "environment": {"cpu_count": os.cpu_count(), "load_avg_start": list(os.getloadavg()),
                        "python": sys.version.split()[0], "chromium": None,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "workspaces": {},
    }
    exe = find_chromium()
    if exe:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        result["environment"]["chromium"] = version
    with tempfile.TemporaryDirectory(prefix="unimmad-html-bench-") as tmp:
        tmp = Path(tmp)
        trivial = tmp / "trivial.html"
        trivial.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head>"
                           "<body><h1>t</h1></body></html>")
        if exe:
            result["trivial_page"] = {"render": render_times(trivial, args.runs),
                                      "screenshot_wall": screenshot_wall(trivial, args.runs)}
        for n_tasks, n_stages in sizes:
            ws = tmp / f"ws_{n_tasks}"
            ws.mkdir()
            row = {"registry": fill(ws, n_tasks, n_stages)}
            row["galleries"] = galleries(ws, n_tasks, n_stages)
            row.update(measure(ws, tmp / f"out_{n_tasks}", args.runs, args.runs))
            result["workspaces"][f"{n_tasks}_tasks_{n_stages}_stages"] = row
            print(json.dumps({k: v for k, v in row.items() if k != "registry"}, indent=1)[:1500])
    result["environment"]["load_avg_end"] = list(os.getloadavg())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "report_html.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out_dir / 'report_html.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
