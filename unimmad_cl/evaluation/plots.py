"""The report's PNG figures: forgetting curves, the stage × task matrix, MoE-Leader usage.

matplotlib's object API with the Agg canvas (no pyplot, so no global figure state and no
display needed); imported only when a PNG is written. Each figure is saved atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unimmad_cl.evaluation.report import METRIC_LABELS, ExpertUsage, Report
from unimmad_cl.files import atomic_path

DPI = 110
# Beyond these counts per-item labels, legends and cell values would be unreadable and
# slow to draw (a registry may hold 1,000 tasks and 200 stages): figures stay bounded.
MAX_LABELS = 40
MAX_LEGEND = 20
MAX_ANNOTATED_CELLS = 400
MAX_INCHES = 18.0


def _size(width: float, height: float) -> tuple[float, float]:
    return min(width, MAX_INCHES), min(height, MAX_INCHES)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return Path(path)


def _stage_labels(report: Report) -> list[str]:
    """'0\\nbase', '1\\n+tiles', ...: what each stage added."""
    labels = []
    for s in report.stages:
        added = report.stage_tasks.get(s, [])
        if s == report.stages[0]:
            labels.append(f"{s}\nbase")
        else:
            labels.append(f"{s}\n+" + ("\n+".join(added) if added else "-"))
    return labels


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def forgetting_curves(report: Report, path: Path) -> Path:
    """One line per task: its metric at every stage from the one that learned it on."""
    label = METRIC_LABELS[report.metric]
    fig = Figure(figsize=_size(max(7.0, 1.1 * len(report.stages) + 3.5), 4.8))
    ax = fig.add_subplot()
    for task, color in zip(report.tasks, _colors(len(report.tasks))):
        row = report.matrix.get(task, {})
        xs = [s for s in report.stages if s >= report.learned[task] and s in row]
        ax.plot(xs, [row[s] for s in xs], marker="o", color=color, label=task)
    if len(report.stages) <= MAX_LABELS:
        ax.set_xticks(report.stages, _stage_labels(report), fontsize=8)
    ax.set_xlabel("stage (tasks added)")
    ax.set_ylabel(label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    forgetting = "-" if report.average_forgetting is None else f"{report.average_forgetting:.3f}"
    ax.set_title(f"Forgetting curves: {label} per task over stages (average forgetting {forgetting})")
    if len(report.tasks) <= MAX_LEGEND:
        ax.legend(title="task", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _save(fig, path)


def stage_task_matrix(report: Report, path: Path) -> Path:
    """Heat matrix R[task, stage] with the values written in; blank before a task is learned."""
    label = METRIC_LABELS[report.metric]
    values = np.full((len(report.tasks), len(report.stages)), np.nan)
    for i, task in enumerate(report.tasks):
        for j, s in enumerate(report.stages):
            if s >= report.learned[task] and s in report.matrix.get(task, {}):
                values[i, j] = report.matrix[task][s]
    fig = Figure(figsize=_size(max(6.0, 1.0 * len(report.stages) + 3.0), max(3.0, 0.45 * len(report.tasks) + 2.0)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    if values.size <= MAX_ANNOTATED_CELLS:
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if not np.isnan(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if values[i, j] > 0.6 else "white")
    if len(report.stages) <= MAX_LABELS:
        ax.set_xticks(range(len(report.stages)), _stage_labels(report), fontsize=8)
    if len(report.tasks) <= MAX_LABELS:
        ax.set_yticks(range(len(report.tasks)), report.tasks, fontsize=8)
    ax.set_xlabel("stage (tasks added)")
    ax.set_ylabel("task")
    ax.set_title(f"{label}: stage × task matrix")
    fig.colorbar(image, ax=ax, label=label)
    return _save(fig, path)


def expert_usage(usage: ExpertUsage, tasks: list[str], path: Path) -> Path:
    """Per scale, a task × leader heatmap of routing shares (leaders grouped by kernel branch):
    the paper's task-isolation picture. Rows sum to 1 within each branch."""
    shares = usage.shares()
    tasks = [t for t in tasks if t in shares] + [t for t in shares if t not in tasks]
    scales, branches, leaders = next(iter(shares.values())).shape
    fig = Figure(figsize=_size(max(8.0, 0.09 * branches * leaders + 3.5), (0.3 * len(tasks) + 1.2) * scales + 0.8))
    axes = fig.subplots(scales, 1, squeeze=False)[:, 0]
    kernel_sizes = usage.kernel_sizes if len(usage.kernel_sizes) == branches else tuple(range(1, branches + 1))
    vmax = max(float(s.max()) for s in shares.values()) or 1.0
    for scale, ax in enumerate(axes):
        grid = np.stack([shares[t][scale].reshape(-1) for t in tasks])  # [tasks, K * N_r]
        image = ax.imshow(grid, cmap="magma", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        for b in range(1, branches):
            ax.axvline(b * leaders - 0.5, color="white", linewidth=1.5)
        if len(tasks) <= MAX_LABELS:
            ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_xticks([b * leaders + (leaders - 1) / 2 for b in range(branches)],
                      [f"{k}×{k} branch: leaders 0–{leaders - 1}" for k in kernel_sizes], fontsize=8)
        ax.set_ylabel(f"scale {scale + 1}\ntask", fontsize=9)
        fig.colorbar(image, ax=ax, label="share of routings", fraction=0.03, pad=0.01)
    axes[-1].set_xlabel("MoE-Leader (grouped by kernel-size branch)")
    axes[0].set_title(f"Expert usage per task at stage {usage.stage}: share of top-k routings to each MoE-Leader")
    return _save(fig, path)


def forgetting_summary(report: Report, path: Path, highlight: int = 8) -> Path:
    """Forgetting curves for many tasks: per stage the mean over the tasks learned so far
    and the band of their 10th–90th percentiles, with the `highlight` most-forgotten tasks
    drawn as their own lines (one line per task stops being readable beyond ~20 tasks)."""
    label = METRIC_LABELS[report.metric]
    stages = report.stages
    means, lows, highs = [], [], []
    for s in stages:
        values = [report.matrix[t][s] for t in report.tasks if report.learned[t] <= s and s in report.matrix.get(t, {})]
        values = np.asarray(values, dtype=float)
        means.append(values.mean() if values.size else np.nan)
        lows.append(np.percentile(values, 10) if values.size else np.nan)
        highs.append(np.percentile(values, 90) if values.size else np.nan)
    fig = Figure(figsize=(11.0, 4.8))
    ax = fig.add_subplot()
    ax.fill_between(stages, lows, highs, color="#9ecae1", alpha=0.6, label="10th–90th percentile of tasks")
    ax.plot(stages, means, color="#08519c", linewidth=2.2, label="mean over learned tasks")
    ranked = sorted((t for t in report.tasks if report.forgetting.get(t) is not None),
                    key=lambda t: -report.forgetting[t])[:highlight]
    for task, color in zip(ranked, _colors(len(ranked))):
        row = report.matrix.get(task, {})
        xs = [s for s in stages if s >= report.learned[task] and s in row]
        ax.plot(xs, [row[s] for s in xs], color=color, linewidth=1.0, alpha=0.9,
                label=f"{task} (forgot {report.forgetting[task]:.3f})")
    if len(stages) <= MAX_LABELS:
        ax.set_xticks(stages, _stage_labels(report), fontsize=8)
    ax.set_xlabel("stage")
    ax.set_ylabel(label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{label} over stages: {len(report.tasks)} tasks, the {len(ranked)} most forgotten drawn")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _save(fig, path)
