"""The report as one self-contained HTML file (`report --html`, the demo).

Everything is inline: the figures are PNG/JPEG `data:` URIs, the style sheet and the few
lines of script (a task filter) are in the page, and a Content-Security-Policy forbids any
other source, so the file opens offline in any browser and never reaches the network.

Sections: summary figures of every metric, the stage table (kind, tasks, trainable
parameters, artifact bytes, time, backbone-weights provenance, replay samples), the
stage × task matrix of every metric with its colour scale, forgetting curves, a task table
(learned stage, final values, forgetting, replay, expert usage), expert usage per task, and
a heatmap gallery per task: the most and least anomalous test images at the latest stage
with their masks and anomaly maps, beside the same images' maps at the stage that learned
the task (from the galleries the evaluations stored, see `evaluation/gallery.py`; no model
is rebuilt).

At scale (1,000 tasks, 200 stages) it stays responsive: large matrices are drawn as one
image instead of table cells, many tasks' curves as a mean with a percentile band and the
most-forgotten tasks, the task table scrolls (with a filter), and galleries are embedded
for a bounded number of tasks (the most forgotten first, or those asked for), collapsed
after the first few. No torch: numpy, PIL and matplotlib only.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from unimmad_cl.errors import UserError
from unimmad_cl.evaluation.metrics import METRIC_KEYS
from unimmad_cl.evaluation.report import (
    METRIC_LABELS, REPORTS_DIR, Report, build_report, load_expert_usage, stage_mean,
)
from unimmad_cl.files import atomic_path

HTML_NAME = "report.html"
MAIN_METRICS = ("i_auroc", "p_auroc", "aupro")  # shown open; the others collapsed
MAX_GALLERY_TASKS = 40  # galleries embedded (each ~60–120 KB of images)
OPEN_GALLERIES = 8  # the first ones expanded
MAX_TABLE_CELLS = 1500  # a matrix larger than this is drawn as one image
MAX_CURVE_TASKS = 20  # beyond this, curves are summarised
PANEL = 128  # gallery panel side in pixels
JPEG_QUALITY = 85
MAX_STAGE_TASK_NAMES = 6


# --------------------------------------------------------------------------- small helpers


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _signed(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}"


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _lut(name: str) -> np.ndarray:
    """A matplotlib colour map as a `[256, 3]` uint8 table."""
    from matplotlib import colormaps

    return np.round(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


def _gradient(lut: np.ndarray, stops: int = 9) -> str:
    colors = [_hex(lut[int(round(i * 255 / (stops - 1)))]) for i in range(stops)]
    return f"linear-gradient(to right, {', '.join(colors)})"


def _seconds(value) -> str:
    if value is None:
        return "—"
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _bytes(value) -> str:
    if value is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def _encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(image).save(out, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _resize(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size, size), mode))


def _contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels (2 px wide) of a boolean mask."""
    inner = mask.copy()
    for _ in range(2):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _panel(image: np.ndarray, mask: np.ndarray | None, heat: np.ndarray | None, jet: np.ndarray) -> bytes:
    """One gallery panel (JPEG, PANEL² px): the input, the anomaly map over it (jet,
    alpha 0.5) when given, and the ground-truth outline in lime."""
    out = _resize(image, PANEL).astype(np.float32)
    if heat is not None:
        colored = jet[_resize(heat, PANEL)].astype(np.float32)
        out = 0.5 * out + 0.5 * colored
    out = out.round().clip(0, 255).astype(np.uint8)
    if mask is not None and mask.any():
        edge = _contour(_resize(mask.astype(np.uint8) * 255, PANEL, nearest=True) > 127)
        out[edge] = (0, 255, 0)
    return _encode(out)


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    workspace: Path
    reports: dict[str, Report]  # metric -> report (metrics with values only)
    missing_metrics: list[str]
    stages: list  # StageInfo, every recorded stage
    states: dict
    tasks: dict  # name -> TaskInfo
    usage: object | None  # ExpertUsage at the final stage


def _gather(registry, workspace: Path) -> _Data:
    from registry import store
    from unimmad_cl.training.lock import stage_states

    stages = store.list_stages(registry)
    completed = [s for s in stages if s.status == "completed"]
    if not completed:
        raise UserError("no completed stages yet: run train-base first")
    numbers = {s.number for s in completed}
    tasks = {t.name: t for t in store.list_tasks(registry)}
    learned = {n: t.trained_in_stage for n, t in tasks.items() if t.trained_in_stage is not None}
    matrices = store.evaluation_matrices(registry)
    reports, missing = {}, []
    for metric in METRIC_KEYS:
        matrix = {t: {s: v for s, v in row.items() if s in numbers} for t, row in matrices.get(metric, {}).items()}
        evaluated = sorted({s for row in matrix.values() for s in row})
        if not evaluated:
            missing.append(metric)
            continue
        reports[metric] = build_report(metric, matrix, learned, evaluated)
    if not reports:
        raise UserError("no evaluations recorded yet: train a stage first (train-base)")
    final = max(r.final_stage for r in reports.values())
    kernel_sizes = tuple(completed[-1].config.get("model", {}).get("kernel_sizes", ()))
    usage = load_expert_usage(workspace, final, kernel_sizes)
    return _Data(workspace, reports, missing, stages, stage_states(workspace, stages), tasks, usage)


def _main_report(data: _Data) -> Report:
    return next(data.reports[m] for m in (*MAIN_METRICS, *METRIC_KEYS) if m in data.reports)


def choose_gallery_tasks(report: Report, requested: Sequence[str] | None, limit: int) -> list[str]:
    """The tasks whose galleries are embedded: `requested` (checked), else every task when
    there are at most `limit`, else the `limit` most forgotten (undefined forgetting last,
    then learning order)."""
    if requested:
        unknown = [t for t in requested if t not in report.learned]
        if unknown:
            raise UserError(f"--gallery-tasks: no trained task named {unknown[0]!r}")
        return list(dict.fromkeys(requested))
    if len(report.tasks) <= limit:
        return list(report.tasks)
    order = {t: i for i, t in enumerate(report.tasks)}
    ranked = sorted(report.tasks, key=lambda t: (report.forgetting.get(t) is None,
                                                 -(report.forgetting.get(t) or 0.0), order[t]))
    return ranked[:limit]


# --------------------------------------------------------------------------- sections


def _summary(data: _Data) -> str:
    main = _main_report(data)
    label = METRIC_LABELS[main.metric]
    cards = [
        ("final mean " + label, _num(main.final_mean()), f"over {len(main.tasks)} tasks at stage {main.final_stage}"),
        ("average forgetting", _num(main.average_forgetting), "best earlier − final, old tasks (lower is better)"),
        ("BWT", _signed(main.bwt), "final − just learned (negative: forgetting)"),
        ("average incremental", _num(main.average_incremental), "mean over stages of the mean so far"),
    ]
    out = ['<div class="cards">']
    for title, value, note in cards:
        out.append(f'<div class="card"><div class="card-title">{_e(title)}</div>'
                   f'<div class="card-value">{_e(value)}</div><div class="card-note">{_e(note)}</div></div>')
    out.append("</div>")
    out.append('<table class="data summary"><thead><tr><th>metric</th><th>final mean</th>'
               "<th>average forgetting</th><th>forgetting from just learned</th><th>BWT</th>"
               "<th>average incremental</th></tr></thead><tbody>")
    for metric, report in data.reports.items():
        out.append(
            f"<tr><th>{_e(METRIC_LABELS[metric])}</th><td>{_num(report.final_mean())}</td>"
            f"<td class=\"{_forget_class(report.average_forgetting)}\">{_num(report.average_forgetting)}</td>"
            f"<td>{_num(report.average_forgetting_from_learned)}</td><td>{_signed(report.bwt)}</td>"
            f"<td>{_num(report.average_incremental)}</td></tr>"
        )
    for metric in data.missing_metrics:
        out.append(f"<tr><th>{_e(METRIC_LABELS[metric])}</th><td colspan=\"5\" class=\"muted\">"
                   "not recorded (e.g. no pixel masks)</td></tr>")
    out.append("</tbody></table>")
    out.append(
        '<p class="note">R[s][t] is task t\'s metric after stage s (mean over its classes); forgetting of a task = '
        "its best value at an earlier stage (from the one that learned it) − its final value; tasks learned in the "
        "final stage have none. BWT = mean over old tasks of final − just learned.</p>"
    )
    return "".join(out)


def _forget_class(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return "bad" if value > 0.05 else ("warn" if value > 0.01 else "good")


def _weights_text(record) -> str:
    if not isinstance(record, dict) or not record:
        return ""
    parts = []
    for key in ("backbone", "source", "package", "version"):
        if record.get(key):
            parts.append(f"{key} {record[key]}")
    if record.get("sha256"):
        parts.append(f"sha256 {str(record['sha256'])[:12]}…")
    extra = [f"{k} {v}" for k, v in record.items() if k not in ("backbone", "source", "package", "version", "sha256")
             and isinstance(v, (str, int, float))]
    return " · ".join(parts + extra)


def _stage_weights(stage, by_number: dict) -> str:
    own = _weights_text(stage.config.get("model_weights"))
    if own:
        return _e(own)
    current = stage.parent
    while current is not None and current in by_number:
        if _weights_text(by_number[current].config.get("model_weights")):
            return f'<span class="muted">as stage {current}</span>'
        current = by_number[current].parent
    return "—"


def _stages(data: _Data) -> str:
    by_number = {s.number: s for s in data.stages}
    kept = {n: t.replay_samples for n, t in data.tasks.items()}
    learned_at = {n: t.trained_in_stage for n, t in data.tasks.items()}
    tall = " tall" if len(data.stages) > 15 else ""
    out = [f'<div class="scroll{tall}"><table class="data stages"><thead><tr><th>stage</th><th>kind</th><th>status</th>'
           "<th>tasks</th><th>trainable params</th><th>artifact bytes</th><th>time</th><th>backbone weights</th>"
           "<th>replay: kept / replayed</th></tr></thead><tbody>"]
    for stage in data.stages:
        state = data.states.get(stage.number)
        status = state.status if state else stage.status
        names = list(stage.tasks)
        shown = ", ".join(names[:MAX_STAGE_TASK_NAMES]) + (f" +{len(names) - MAX_STAGE_TASK_NAMES} more"
                                                           if len(names) > MAX_STAGE_TASK_NAMES else "")
        share = ""
        if stage.trainable_params and stage.total_params:
            share = f" ({100 * stage.trainable_params / stage.total_params:.1f} %)"
        params = f"{stage.trainable_params:,}{share}" if stage.trainable_params is not None else "—"
        ratio = stage.config.get("train", {}).get("replay_ratio")
        kept_now = sum(kept.get(t, 0) for t in names)
        replayed = 0
        if stage.kind != "base" and (ratio is None or ratio > 0):
            replayed = sum(kept.get(t, 0) for t, s in learned_at.items() if s is not None and s < stage.number
                           and t not in names)
        status_cell = f'<span class="status {status}">{_e(status)}</span>'
        if state is not None and state.resume:
            status_cell += f'<div class="resume">resume: <code>{_e(state.resume)}</code></div>'
        out.append(
            f"<tr><td>{stage.number}</td><td>{_e(stage.kind)}</td><td>{status_cell}</td><td>{_e(shown)}</td>"
            f"<td class=\"num\">{params}</td>"
            f"<td class=\"num\">{_bytes(stage.artifact.bytes) if stage.artifact else '—'}</td>"
            f"<td class=\"num\">{_seconds(stage.seconds)}</td><td>{_stage_weights(stage, by_number)}</td>"
            f"<td class=\"num\">{kept_now} / {replayed}</td></tr>"
        )
    out.append("</tbody></table></div>")
    out.append('<p class="note">Artifact bytes: the full model for the base stage, the delta (only the tensors '
               "the stage may change) for the others. Replay: samples kept from the stage's own tasks / samples of "
               "earlier tasks replayed while it trained.</p>")
    return "".join(out)


def _stage_heads(report: Report) -> str:
    """Stage numbers with what each added ('base', '+tiles'); the full list on hover."""
    cells = []
    for s in report.stages:
        added = report.stage_tasks.get(s, [])
        title = ", ".join(added)
        if s == report.stages[0]:
            what = "base"
        else:
            what = ("+" + added[0] if added else "") + (f" +{len(added) - 1}" if len(added) > 1 else "")
        cells.append(f'<th title="{_e(title)}">{s}<div class="added">{_e(what)}</div></th>')
    return "".join(cells)


def _matrix_table(report: Report, lut: np.ndarray) -> str:
    out = [f'<div class="scroll"><table class="matrix"><thead><tr><th>task</th><th>learned</th>{_stage_heads(report)}'
           "<th>forgetting</th></tr></thead><tbody>"]
    for t in report.tasks:
        row = report.matrix.get(t, {})
        cells = []
        for s in report.stages:
            value = row.get(s)
            if s < report.learned[t] or value is None:
                cells.append('<td class="empty"></td>')
                continue
            color = lut[int(round(min(max(value, 0.0), 1.0) * 255))]
            text = "#000" if value > 0.6 else "#fff"
            cells.append(f'<td style="background:{_hex(color)};color:{text}">{value:.2f}</td>')
        forgetting = report.forgetting.get(t)
        out.append(f"<tr><th>{_e(t)}</th><td>{report.learned[t]}</td>{''.join(cells)}"
                   f"<td class=\"{_forget_class(forgetting)}\">{_num(forgetting)}</td></tr>")
    means = "".join(f"<td>{_num(stage_mean(report, s), 2)}</td>" for s in report.stages)
    out.append(f'<tr class="mean"><th>mean</th><td></td>{means}<td>{_num(report.average_forgetting)}</td></tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def _matrix_image(report: Report, lut: np.ndarray, label: str) -> str:
    """A large stage × task matrix as one PNG drawn straight from the values (no plotting
    library: 1,000 × 200 cells take milliseconds), each cell a block of pixels."""
    index = {s: j for j, s in enumerate(report.stages)}
    values = np.full((len(report.tasks), len(report.stages)), np.nan)
    for i, t in enumerate(report.tasks):
        learned = report.learned[t]
        for s, v in report.matrix.get(t, {}).items():
            if s >= learned and s in index:
                values[i, index[s]] = v
    width = max(1, min(12, 960 // max(len(report.stages), 1)))
    height = max(1, min(12, 1200 // max(len(report.tasks), 1)))
    codes = np.round(np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * 255).astype(np.uint8)
    rgb = lut[codes]
    rgb[np.isnan(values)] = (0xF2, 0xF4, 0xF7)
    rgb = np.repeat(np.repeat(rgb, height, axis=0), width, axis=1)
    return (f'<img class="matrix-image" alt="{_e(label)} stage × task matrix" '
            f'src="{_uri(_encode(rgb, "PNG"), "image/png")}">')


def _figure(draw, report, tmp: Path, name: str, alt: str) -> str:
    path = draw(report, tmp / name)
    return f'<img class="figure" alt="{_e(alt)}" src="{_uri(Path(path).read_bytes(), "image/png")}">'


def _matrices(data: _Data, tmp: Path) -> str:
    from unimmad_cl.evaluation import plots

    lut = _lut("viridis")
    out = [f'<div class="legend"><span>0</span><span class="bar" style="background:{_gradient(lut)}"></span>'
           "<span>1</span><span class=\"muted\">colour scale of every matrix (viridis); blank: before the task "
           "was learned. Hover a stage number for the tasks it added.</span></div>"]
    for metric, report in data.reports.items():
        label = METRIC_LABELS[metric]
        cells = len(report.tasks) * len(report.stages)
        if cells <= MAX_TABLE_CELLS:
            body = _matrix_table(report, lut)
        else:
            body = (f'<p class="note">{len(report.tasks):,} tasks × {len(report.stages)} stages, drawn as one image: '
                    f"rows are tasks in learning order (top: {report.tasks[0]}, bottom: {report.tasks[-1]}), columns "
                    f"stages {report.stages[0]} to {report.stages[-1]}; grey: before the task was learned. The task "
                    "table below has the final values.</p>" + _matrix_image(report, lut, label))
        opened = " open" if metric in MAIN_METRICS else ""
        out.append(f'<details class="block"{opened}><summary><h3>{_e(label)}</h3></summary>{body}</details>')
    return "".join(out)


def _curves(data: _Data, tmp: Path) -> str:
    from unimmad_cl.evaluation import plots

    out = []
    for metric, report in data.reports.items():
        label = METRIC_LABELS[metric]
        if len(report.stages) < 2:
            body = '<p class="note">One stage so far: a curve needs a second stage.</p>'
        elif len(report.tasks) <= MAX_CURVE_TASKS:
            body = _figure(plots.forgetting_curves, report, tmp, f"c_{metric}.png", f"{label} forgetting curves")
        else:
            body = _figure(plots.forgetting_summary, report, tmp, f"c_{metric}.png", f"{label} forgetting summary")
        opened = " open" if metric in MAIN_METRICS[:2] else ""
        out.append(f'<details class="block"{opened}><summary><h3>{_e(label)}</h3></summary>{body}</details>')
    return "".join(out)


def _top_leaders(shares: np.ndarray, kernel_sizes: tuple[int, ...]) -> str:
    """Per scale, the most-routed leader and its share, e.g. 's1 3×3 #5 41 %'."""
    scales, branches, _ = shares.shape
    kernels = kernel_sizes if len(kernel_sizes) == branches else tuple(range(1, branches + 1))
    parts = []
    for scale in range(scales):
        b, leader = np.unravel_index(int(np.argmax(shares[scale])), shares[scale].shape)
        k = kernels[b]
        parts.append(f"s{scale + 1} {k}×{k} #{leader} {100 * shares[scale, b, leader]:.0f} %")
    return " · ".join(parts)


def _tasks_table(data: _Data) -> str:
    main = _main_report(data)
    usage = data.usage
    shares = usage.shares() if usage is not None else {}
    kernel_sizes = usage.kernel_sizes if usage is not None else ()
    heads = "".join(f"<th>final {_e(METRIC_LABELS[m])}</th><th>forgot</th>" for m in MAIN_METRICS if m in data.reports)
    out = ['<input class="filter" type="search" placeholder="filter tasks by name" data-target="task-table" '
           'aria-label="filter tasks">',
           '<div class="scroll tall"><table class="data" id="task-table"><thead><tr><th>task</th><th>field</th>'
           f"<th>modalities</th><th>learned</th>{heads}<th>replay kept</th><th>labels</th>"
           "<th>most-used MoE-Leader per scale</th></tr></thead><tbody>"]
    for t in main.tasks:
        info = data.tasks.get(t)
        cells = []
        for m in MAIN_METRICS:
            if m not in data.reports:
                continue
            report = data.reports[m]
            final = report.matrix.get(t, {}).get(report.final_stage)
            forgetting = report.forgetting.get(t)
            cells.append(f"<td class=\"num\">{_num(final)}</td>"
                         f"<td class=\"num {_forget_class(forgetting)}\">{_num(forgetting)}</td>")
        disagreements = len(info.label_disagreements) if info else 0
        labels = f'<span class="warn">{disagreements} disagree</span>' if disagreements else ""
        leaders = _top_leaders(shares[t], kernel_sizes) if t in shares else "—"
        out.append(
            f"<tr><th>{_e(t)}</th><td>{_e(info.field if info else '')}</td>"
            f"<td>{_e(', '.join(info.modalities) if info else '')}</td><td class=\"num\">{main.learned[t]}</td>"
            f"{''.join(cells)}<td class=\"num\">{info.replay_samples if info else 0}</td><td>{labels}</td>"
            f"<td class=\"small\">{_e(leaders)}</td></tr>"
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _experts(data: _Data, tmp: Path) -> str:
    from unimmad_cl.evaluation import plots

    usage = data.usage
    if usage is None:
        return '<p class="note">No MoE-Leader counts recorded for the latest stage.</p>'
    tasks = _main_report(data).tasks
    path = plots.expert_usage(usage, tasks, tmp / "experts.png")
    shares = usage.shares()
    isolation = []
    for t in tasks:
        if t in shares:
            # routing concentration: mean over (scale, branch) of the largest leader share
            isolation.append(float(shares[t].max(axis=-1).mean()))
    spread = f"{np.mean(isolation):.2f}" if isolation else "—"
    return (f'<p class="note">Share of the top-k routings each MoE-Leader received while the latest stage '
            f"({usage.stage}) evaluated each task, per scale, leaders grouped by kernel-size branch; each row sums "
            f"to 1 within a branch. Distinct rows mean the tasks use distinct leaders (the paper's task isolation). "
            f"Mean share of the most-used leader per branch: {spread}. The task table lists each task's "
            "most-used leader per scale.</p>"
            f'<img class="figure" alt="expert usage per task" src="{_uri(Path(path).read_bytes(), "image/png")}">')


def _gallery_task(data: _Data, task: str, opened: bool, jet: np.ndarray) -> str:
    from unimmad_cl.evaluation.gallery import gallery_path, load_gallery

    main = _main_report(data)
    final, learned = main.final_stage, main.learned[task]
    latest = load_gallery(gallery_path(data.workspace, final, task))
    then = latest if learned == final else load_gallery(gallery_path(data.workspace, learned, task))
    row = main.matrix.get(task, {})
    head = (f"{_e(task)} <span class=\"muted\">learned in stage {learned}; {METRIC_LABELS[main.metric]} "
            f"{_num(row.get(learned))} then, {_num(row.get(final))} now</span>")
    if latest is None:
        body = (f'<p class="note">No gallery stored for stage {final} (the stage was evaluated before galleries '
                "were kept, or the file is missing).</p>")
        return f'<details class="gallery" data-task="{_e(task)}"><summary>{head}</summary>{body}</details>'
    archive = {}
    if then is not None and then.archive_maps is not None:
        archive = {k: i for i, k in enumerate(then.archive_keys)}
        order = np.argsort(-then.archive_scores, kind="stable")
        ranks = np.empty(len(order), int)
        ranks[order] = np.arange(1, len(order) + 1)
    columns: dict[bool, list[str]] = {True: [], False: []}
    for i, key in enumerate(latest.keys):
        most = i < latest.n_most
        rank_now = i + 1 if most else latest.n_test - (i - latest.n_most)
        image, mask = latest.images[i], latest.masks[i].astype(bool)
        truth = "defective" if latest.labels[i] else "good"
        then_cell = '<div class="missing">not kept</div>'
        then_text = "not kept"
        if key in archive:
            j = archive[key]
            then_cell = f'<img alt="stage {learned}" src="{_uri(_panel(image, mask, then.archive_maps[j], jet), "image/jpeg")}">'
            then_text = f"{then.archive_scores[j]:.4g} · rank {ranks[j]}/{len(ranks)}"
        now_cell = f'<img alt="stage {final}" src="{_uri(_panel(image, mask, latest.maps[i], jet), "image/jpeg")}">'
        input_cell = f'<img alt="input" src="{_uri(_panel(image, mask, None, jet), "image/jpeg")}">'
        columns[most].append(
            f'<div class="gal-row"><div class="gal-meta"><b>#{i + 1 if most else i - latest.n_most + 1}</b> '
            f'<span class="{"bad" if latest.labels[i] else "good"}">{truth}</span><br>{_e(key)}</div>'
            f"<div>{input_cell}</div><div>{then_cell}<div class=\"cap\">{_e(then_text)}</div></div>"
            f"<div>{now_cell}<div class=\"cap\">{latest.scores[i]:.4g} · rank {rank_now}/{latest.n_test}</div></div></div>"
        )
    modality = f" ({_e(latest.modality)})" if latest.modality else ""
    header = (f'<div class="gal-row gal-head"><div class="gal-meta"></div><div>input{modality}</div>'
              f"<div>stage {learned} (learned)</div><div>stage {final} (latest)</div></div>")
    blocks = "".join(
        f'<div class="gal-col"><h4>{title}</h4>{header}{"".join(columns[flag])}</div>'
        for flag, title in ((True, "Most anomalous at the latest stage"), (False, "Least anomalous at the latest stage"))
        if columns[flag]
    )
    scale_then = "" if then is None else f"stage {learned}: {then.range[0]:.3g} → {then.range[1]:.3g}; "
    body = (
        f'<div class="gal-grid">{blocks}</div>'
        f'<p class="note">Score · rank among the {latest.n_test} test images (1 = most anomalous) under each map. '
        f"Colour scale per stage, from the median pixel of the task's test maps (blue) to the highest (red): "
        f"{scale_then}stage {final}: {latest.range[0]:.3g} → {latest.range[1]:.3g}. Green outline: the "
        "ground-truth mask.</p>"
    )
    return (f'<details class="gallery" data-task="{_e(task)}"{" open" if opened else ""}>'
            f"<summary>{head}</summary>{body}</details>")


def _gallery(data: _Data, chosen: list[str], requested: bool) -> str:
    jet = _lut("jet")
    main = _main_report(data)
    out = [f'<div class="legend"><span>low</span><span class="bar" style="background:{_gradient(jet)}"></span>'
           "<span>high</span><span class=\"muted\">anomaly map colours (jet, over the input)</span></div>"]
    if len(chosen) < len(main.tasks) and not requested:
        out.append(f'<p class="note">Galleries of {len(chosen)} of {len(main.tasks)} tasks: the most forgotten '
                   f"({METRIC_LABELS[main.metric]}). Others: <code>unimmad-cl report --html --gallery-tasks "
                   "NAME,NAME</code>.</p>")
    if len(chosen) > 1:
        out.append('<input class="filter" type="search" placeholder="filter galleries by task" '
                   'data-target="galleries" aria-label="filter galleries">')
    out.append('<div id="galleries">')
    for i, task in enumerate(chosen):
        out.append(_gallery_task(data, task, i < OPEN_GALLERIES, jet))
    out.append("</div>")
    return "".join(out)


# --------------------------------------------------------------------------- page

STYLE = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f7f8fa; --accent:#1f4e99; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#13294b; color:#fff; padding:22px 32px 16px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:650; }
header .sub { color:#c9d4e8; font-size:13px; }
nav { position:sticky; top:0; z-index:2; background:#fff; border-bottom:1px solid var(--line); padding:8px 32px; }
nav a { color:var(--accent); text-decoration:none; margin-right:18px; font-weight:550; font-size:13px; }
main { max-width:1280px; margin:0 auto; padding:8px 32px 48px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:6px 22px 18px; margin:18px 0;
          content-visibility:auto; contain-intrinsic-size:auto 600px; }
h2 { font-size:19px; margin:14px 0 10px; }
h3 { display:inline; font-size:15px; margin:0; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(200px,1fr)); gap:12px; margin:10px 0 16px; }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 14px; background:#fbfcfe; }
.card-title { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card-value { font-size:28px; font-weight:650; margin:2px 0; }
.card-note { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; }
table.data { width:100%; font-size:13px; }
table.data th, table.data td { border-bottom:1px solid var(--line); padding:5px 8px; text-align:left; vertical-align:top; }
table.data thead th { background:#f2f4f7; position:sticky; top:0; font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.matrix { font-size:12px; font-variant-numeric:tabular-nums; }
table.matrix th, table.matrix td { padding:4px 7px; text-align:center; border:1px solid #fff; }
table.matrix tbody th { text-align:left; white-space:nowrap; }
table.matrix td.empty { background:#f2f4f7; }
table.matrix thead th { vertical-align:bottom; }
table.matrix .added { font-weight:400; font-size:10.5px; color:var(--muted); max-width:84px; overflow:hidden;
                      text-overflow:ellipsis; white-space:nowrap; }
table.matrix tr.mean td, table.matrix tr.mean th { font-weight:650; border-top:2px solid var(--fg); }
.scroll { overflow:auto; max-width:100%; }
.scroll.tall { max-height:560px; }
.good { color:#067647; } .warn { color:#b54708; } .bad { color:#b42318; }
.muted { color:var(--muted); font-weight:400; }
.note { color:var(--muted); font-size:12.5px; margin:8px 0; }
.small { font-size:12px; }
.status { padding:1px 7px; border-radius:9px; font-size:12px; background:#eef2f6; }
.status.completed { background:#dcfae6; color:#067647; } .status.interrupted { background:#fef0c7; color:#93370d; }
.status.failed { background:#fee4e2; color:#b42318; } .status.running { background:#d1e9ff; color:#175cd3; }
.resume { font-size:11.5px; color:var(--muted); margin-top:3px; }
code { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; background:#f2f4f7; padding:1px 4px;
       border-radius:4px; }
details.block { margin:10px 0; } details.block > summary { cursor:pointer; padding:4px 0; }
img.matrix-image { max-width:100%; image-rendering:pixelated; border:1px solid var(--line); }
img.figure { max-width:min(100%, 880px); height:auto; display:block; margin:8px 0; }
.legend { display:flex; align-items:center; gap:8px; font-size:12px; margin:6px 0 10px; }
.legend .bar { display:inline-block; width:220px; height:12px; border-radius:3px; }
details.gallery { border:1px solid var(--line); border-radius:8px; margin:10px 0; padding:6px 12px; }
details.gallery > summary { cursor:pointer; font-weight:600; padding:4px 0; }
.gal-grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(560px,1fr)); gap:8px 24px; }
.gal-col h4 { margin:6px 0 4px; font-size:13px; color:var(--accent); }
.gal-row { display:grid; grid-template-columns:130px repeat(3,124px); gap:8px; align-items:start; margin:6px 0; }
.gal-head { font-size:12px; font-weight:600; color:var(--muted); margin:2px 0; }
.gal-meta { font-size:12px; word-break:break-all; }
.gal-row img { width:124px; height:124px; border-radius:4px; display:block; }
.cap { color:var(--muted); font-size:11px; margin-top:2px; white-space:nowrap; }
.missing { width:124px; height:124px; display:flex; align-items:center; justify-content:center; background:#f2f4f7;
           color:var(--muted); border-radius:4px; }
input.filter { margin:6px 0 8px; padding:6px 10px; width:280px; border:1px solid #d0d5dd; border-radius:6px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:12px; }
"""

# A filter box for the task table and the galleries; no console output, no network.
SCRIPT = """
document.querySelectorAll('input.filter').forEach(function (box) {
  box.addEventListener('input', function () {
    var needle = box.value.trim().toLowerCase();
    var target = document.getElementById(box.dataset.target);
    if (!target) { return; }
    var items = target.id === 'galleries' ? target.querySelectorAll('details.gallery') : target.querySelectorAll('tbody tr');
    items.forEach(function (item) {
      var name = item.dataset.task || (item.querySelector('th') ? item.querySelector('th').textContent : '');
      item.style.display = name.toLowerCase().indexOf(needle) >= 0 ? '' : 'none';
    });
  });
});
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _weights_line(data: _Data) -> str:
    base = next((s for s in data.stages if s.kind == "base" and s.status == "completed"), None)
    if base is None:
        return ""
    text = _weights_text(base.config.get("model_weights"))
    return f"backbone weights: {text}" if text else "backbone weights: — (not recorded)"


def render_html(registry, workspace: Path, *, gallery_tasks: Sequence[str] | None = None,
                max_gallery_tasks: int = MAX_GALLERY_TASKS, title: str | None = None) -> tuple[str, list[str], _Data]:
    """The page as a string, the tasks whose galleries it embeds, and the data it shows."""
    data = _gather(registry, Path(workspace))
    main = _main_report(data)
    chosen = choose_gallery_tasks(main, gallery_tasks, max_gallery_tasks)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = title or "Continual-learning report"
    with tempfile.TemporaryDirectory(prefix="unimmad-html-") as tmp:
        tmp = Path(tmp)
        sections = [
            ("summary", "Summary", _summary(data)),
            ("stages", "Stages", _stages(data)),
            ("matrices", "Stage × task matrices", _matrices(data, tmp)),
            ("forgetting", "Forgetting curves", _curves(data, tmp)),
            ("tasks", "Tasks", _tasks_table(data)),
            ("experts", "Expert usage per task", _experts(data, tmp)),
            ("gallery", "Heatmap gallery", _gallery(data, chosen, bool(gallery_tasks))),
        ]
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(name)}</h2>{content}</section>' for key, name, content in sections)
    weights = _weights_line(data)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><div class=\"sub\">{len(main.tasks)} tasks · {len(main.stages)} evaluated stages "
        f"(latest: {main.final_stage}) · workspace {_e(data.workspace)} · generated {generated}"
        f"{' · ' + _e(weights) if weights else ''}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        "<footer>unimmad-cl report · self-contained: no network access, images inline</footer>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
    return page, chosen, data


def write_html_report(
    registry,
    workspace: str | Path,
    out_path: str | Path | None = None,
    *,
    gallery_tasks: Sequence[str] | None = None,
    max_gallery_tasks: int = MAX_GALLERY_TASKS,
    title: str | None = None,
) -> Path:
    """Write the self-contained HTML report of a workspace (every metric) atomically to
    `out_path` (default `<workspace>/reports/report.html`) and return its path.

    registry: an open `registry.store.Registry`; gallery_tasks: the tasks whose heatmap
    galleries to embed (default: all when at most `max_gallery_tasks`, else the most
    forgotten). Raises UserError when no stage has completed or a named task is unknown."""
    workspace = Path(workspace)
    out = Path(out_path) if out_path is not None else workspace / REPORTS_DIR / HTML_NAME
    if out.exists() and out.is_dir():
        raise UserError(f"{out} is a folder; expected an HTML file path")
    page, _, _ = render_html(registry, workspace, gallery_tasks=gallery_tasks,
                             max_gallery_tasks=max_gallery_tasks, title=title)
    with atomic_path(out) as tmp:
        tmp.write_bytes(page.encode("utf-8"))
    return out

