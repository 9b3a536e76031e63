"""`report --html`: one self-contained page built from a small trained workspace (every
section present, every image inline, no external URL), the galleries stored at evaluation
time, bounded output at scale, and bad input changing nothing."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from demo_workspace import quick_demo
from registry import store
from unimmad_cl.evaluation.gallery import (
    ARCHIVE_CAP, GalleryCollector, gallery_path, load_gallery, write_gallery,
)
from unimmad_cl.evaluation.html import MAX_GALLERY_TASKS, MAX_TABLE_CELLS, write_html_report

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["Summary", "Stages", "Stage × task matrices", "Forgetting curves", "Tasks", "Expert usage per task",
            "Heatmap gallery"]
URL_ATTRIBUTES = {"src", "href", "action", "srcset", "poster", "data", "formaction", "background"}


class Page(HTMLParser):
    """What the tests look at: headings, tags, URL-bearing attributes, classes."""

    def __init__(self):
        super().__init__()
        self.h2, self.h3, self.tags, self.urls, self.classes, self.metas = [], [], [], [], [], []
        self._heading = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [(tag, k, v) for k, v in attrs.items() if k in URL_ATTRIBUTES and v is not None]
        self.classes += (attrs.get("class") or "").split()
        if tag == "meta":
            self.metas.append(attrs)
        if tag in ("h2", "h3"):
            self._heading = (tag, [])

    def handle_data(self, data):
        if self._heading is not None:
            self._heading[1].append(data)

    def handle_endtag(self, tag):
        if self._heading is not None and tag == self._heading[0]:
            getattr(self, tag).append("".join(self._heading[1]).strip())
            self._heading = None


def parse(path: Path) -> tuple[Page, str]:
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return page, text


def assert_self_contained(page: Page, text: str) -> None:
    for tag, attr, value in page.urls:
        if tag == "a" and attr == "href":
            assert value.startswith("#"), value  # in-page links only
            continue
        assert value.startswith("data:image/"), (tag, attr, value[:60])
    assert "link" not in page.tags and "iframe" not in page.tags and "object" not in page.tags
    assert "http://" not in text and "https://" not in text
    csp = [m for m in page.metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"] and "img-src data:" in csp[0]["content"]


def images(text: str) -> list[Image.Image]:
    out = []
    for chunk in text.split('src="data:image/')[1:]:
        mime, rest = chunk.split(";base64,", 1)
        data = base64.b64decode(rest.split('"', 1)[0])
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format.lower() == {"png": "png", "jpeg": "jpeg"}[mime]
        out.append(image)
    return out


def run(ws, *args):
    return CliRunner().invoke(cli.main, ["--workspace", str(ws), *args])


# --------------------------------------------------------------------------- a trained workspace


@pytest.fixture(scope="module")
def demo_ws():
    out, result = quick_demo()
    assert result.exit_code == 0, result.output
    return out / "workspace"


def test_html_from_a_trained_workspace(demo_ws, tmp_path):
    result = run(demo_ws, "report", "--html", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    path = tmp_path / "report.html"
    assert f"open in a browser: {path}" in result.output
    page, text = parse(path)
    assert page.h2 == SECTIONS
    assert {"I-AUROC", "P-AUROC", "AUPRO"} <= set(page.h3)
    assert_self_contained(page, text)
    pictures = images(text)
    assert pictures and all(p.size[0] > 10 and p.size[1] > 10 for p in pictures)

    with store.open_registry(f"sqlite:///{demo_ws / 'registry.db'}") as registry:
        tasks = store.list_tasks(registry)
        stages = store.list_stages(registry)
    trained = [t for t in tasks if t.trained_in_stage is not None]
    # one gallery per task, each with the 3 most and 3 least anomalous images (or all of a
    # smaller test split), three panels each, the learning stage's maps found for every one
    assert page.classes.count("gallery") == len(trained)
    assert "not kept" not in text
    for task in trained:
        assert f'data-task="{task.name}"' in text
        assert f"learned in stage {task.trained_in_stage}" in text
    rows = page.classes.count("gal-row") - 2 * len(trained)  # minus the header rows
    assert rows == sum(min(6, t.samples.test) for t in trained)
    # the stage table: one row per stage, with its status and kept/replayed samples
    assert text.count('<span class="status completed">') == len(stages)
    final = max(s.number for s in stages)
    assert f"stage {final} (latest)" in text


def test_galleries_are_stored_per_stage_and_task_and_bounded(demo_ws):
    with store.open_registry(f"sqlite:///{demo_ws / 'registry.db'}") as registry:
        tasks = {t.name: t for t in store.list_tasks(registry)}
        stages = [s.number for s in store.list_stages(registry) if s.status == "completed"]
    for stage in stages:
        for name, task in tasks.items():
            if task.trained_in_stage is None or task.trained_in_stage > stage:
                continue
            path = gallery_path(demo_ws, stage, name)
            assert path.is_file() and path.stat().st_size < 60_000, path
            data = load_gallery(path)
            assert data.n_test == task.samples.test
            # the archive of every image's map only where the task was learned
            assert (data.archive_maps is not None) == (stage == task.trained_in_stage)
            assert list(data.scores[: data.n_most]) == sorted(data.scores[: data.n_most], reverse=True)
            assert data.images.dtype == np.uint8 and data.maps.dtype == np.uint8


def test_report_html_never_imports_torch(demo_ws, tmp_path):
    code = (
        "import sys; from cli import main\n"
        "try:\n"
        f"    main(['--workspace', {str(demo_ws)!r}, 'report', '--html', '--no-plots', '--out', {str(tmp_path)!r}])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = [m for m in ('torch', 'timm', 'avalanche') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "report.html").is_file()


def test_gallery_tasks_flag(demo_ws, tmp_path):
    with store.open_registry(f"sqlite:///{demo_ws / 'registry.db'}") as registry:
        first = store.list_tasks(registry)[0].name
    result = run(demo_ws, "report", "--html", "--gallery-tasks", first, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    page, text = parse(tmp_path / "report.html")
    assert page.classes.count("gallery") == 1 and f'data-task="{first}"' in text


@pytest.mark.parametrize("args, message", [
    (["--html", "--gallery-tasks", "nope"], "--gallery-tasks: no task named 'nope' (known tasks:"),
    (["--gallery-tasks", "fabric"], "--gallery-tasks needs --html"),
    (["--html", "--gallery-tasks", " , "], "--gallery-tasks ' , ': expected a comma-separated list"),
])
def test_bad_input_is_one_line_and_writes_nothing(demo_ws, tmp_path, args, message):
    out = tmp_path / "out"
    result = run(demo_ws, "report", *args, "--out", str(out))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- gallery collection


class FakeBatch:
    def __init__(self, images, mask, label, samples):
        self.images, self.mask, self.label, self.samples = images, mask, label, samples


def test_collector_keeps_the_most_and_least_anomalous_and_every_small_map(tmp_path):
    import torch

    from unimmad_cl.data.records import Sample

    rng = np.random.default_rng(0)
    scores = rng.permutation(23).astype(np.float32)  # distinct, in a random order
    collector = GalleryCollector(k=3, thumb=16, archive=8)
    first = 0
    for chunk in np.array_split(np.arange(23), 5):
        n = len(chunk)
        samples = [Sample(None, "c", "test", ("rgb",), ("x",), int(i % 2), None, "d", f"{i}") for i in chunk]
        maps = torch.from_numpy(np.stack([np.full((32, 32), scores[i], np.float32) for i in chunk]))
        batch = FakeBatch(torch.zeros(n, 4, 3, 32, 32), torch.zeros(n, 32, 32), torch.tensor([i % 2 for i in chunk]),
                          samples)
        collector.add(batch, maps, torch.from_numpy(scores[chunk]), first, ["c"] * n, lambda s: "imagenet")
        first += n
    data = collector.finish()
    order = np.argsort(-scores)
    assert data.keys[:3] == [f"c/d/{i}" for i in order[:3]]
    assert data.keys[3:] == [f"c/d/{i}" for i in order[::-1][:3]]
    assert data.n_test == 23 and data.archive_maps.shape == (23, 8, 8) and data.images.shape == (6, 16, 16, 3)
    # one colour scale: the median pixel -> 0, the highest -> 255
    assert data.maps[0].max() == 255 and data.range == (float(np.median(scores)), float(scores.max()))
    path = write_gallery(tmp_path / "g.npz", data, archive=True)
    back = load_gallery(path)
    assert back.keys == data.keys and np.array_equal(back.maps, data.maps)
    assert back.archive_keys == data.archive_keys and back.images.shape == data.images.shape
    without = load_gallery(write_gallery(tmp_path / "h.npz", data, archive=False))
    assert without.archive_maps is None
    assert load_gallery(tmp_path / "missing.npz") is None


def test_archive_is_capped(monkeypatch):
    import torch

    from unimmad_cl.evaluation import gallery

    monkeypatch.setattr(gallery, "ARCHIVE_CAP", 10)
    collector = GalleryCollector(k=2, thumb=8, archive=4)
    n = 40
    maps = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 8, 8).contiguous()
    batch = FakeBatch(torch.zeros(n, 4, 3, 8, 8), torch.zeros(n, 8, 8), torch.zeros(n, dtype=torch.long), None)
    collector.add(batch, maps, torch.arange(n, dtype=torch.float32), 0, ["c"] * n, lambda s: "unit")
    data = collector.finish()
    assert len(data.archive_keys) <= 10 + 4 and ARCHIVE_CAP >= 10
    assert set(data.keys) <= set(data.archive_keys)  # the shown images are always in it


# --------------------------------------------------------------------------- scale


def fill(url: str, n_tasks: int, n_stages: int) -> None:
    """Tasks learned one per stage after a base stage of the rest, all evaluated after each."""
    rng = np.random.default_rng(1)
    with store.open_registry(url) as reg:
        store.add_tasks(reg, [
            store.TaskSpec(f"task_{i:04d}", "folder", f"/d/{i}", ("rgb",), ("a",), "industrial", 1.0,
                           store.SampleCounts(10, 10, 5)) for i in range(n_tasks)
        ])
        base = n_tasks - (n_stages - 1)
        for stage in range(n_stages):
            names = [f"task_{i:04d}" for i in range(base)] if stage == 0 else [f"task_{base + stage - 1:04d}"]
            store.start_stage(reg, "base" if stage == 0 else "incremental", names,
                              parent=None if stage == 0 else stage - 1, trainable_params=10, total_params=100)
            learned = base + stage
            rows = [store.EvaluationRow(f"task_{i:04d}", "a", m, float(rng.uniform(0.4, 1.0)))
                    for i in range(learned) for m in ("i_auroc", "p_auroc", "aupro")]
            store.complete_stage(reg, stage, artifact=store.ArtifactInfo("delta", f"m/{stage}", "0" * 64, 1000),
                                 seconds=1.0, evaluations=rows)


def test_html_at_scale_is_summarised_and_bounded(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    url = f"sqlite:///{ws / 'registry.db'}"
    fill(url, 120, 20)  # 2,400 cells per matrix: drawn as images
    started = time.perf_counter()
    with store.open_registry(url) as registry:
        path = write_html_report(registry, ws)
    seconds = time.perf_counter() - started
    page, text = parse(path)
    assert page.h2 == SECTIONS
    assert_self_contained(page, text)
    assert 120 * 20 > MAX_TABLE_CELLS and "matrix" not in page.classes  # no 2,400-cell tables
    assert page.classes.count("gallery") == MAX_GALLERY_TASKS  # bounded, the most forgotten
    assert "--gallery-tasks" in text and "No gallery stored" in text
    assert text.count("<tr><th>task_") == 120  # the task table has every task
    assert path.stat().st_size < 3_000_000 and seconds < 60
    assert text.count("data:image/png") == 3 + 3  # matrices and curves (no leader counts recorded here)
    assert "No MoE-Leader counts recorded" in text
