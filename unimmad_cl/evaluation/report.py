"""The continual-learning report: the matrix R[stage, task] of one metric, forgetting, backward
transfer, average incremental performance, MoE-Leader usage per task, and the files.

Definitions (R[s][t] = task t's metric after stage s, the mean over its classes; l_t = the
stage that learned t; F = the final stage, the latest evaluated one):

* forgetting (standard form)    f_t  = max_{l_t <= s < F} R[s][t] - R[F][t]
* forgetting from just-learned  f'_t = R[l_t][t] - R[F][t]        (avalanche-lib's `forgetting`)
* backward transfer             BWT  = mean over old tasks of (R[F][t] - R[l_t][t])
                                     = -mean f'_t                  (avalanche-lib's `bwt`)
* average forgetting            mean over old tasks of f_t
* average incremental perf.     mean over stages s of (mean over tasks learned by s of R[s][t])

"Old tasks" are those learned before F: a task learned in the final stage has had no chance
to forget, so it has no forgetting value and is left out of the averages. Positive
forgetting means the task got worse; positive BWT means learning later tasks helped it.

No torch here: `report --json` must start in about a second. numpy only for the leader
shares; matplotlib is imported by `plots` and only when PNGs are written.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from unimmad_cl.errors import UserError
from unimmad_cl.evaluation.metrics import METRIC_KEYS
from unimmad_cl.files import write_text_atomic
from unimmad_cl.workspace import evaluation_summary_path

REPORTS_DIR = "reports"

METRIC_LABELS = {
    "i_auroc": "I-AUROC", "i_ap": "I-AP", "i_f1max": "I-F1max",
    "p_auroc": "P-AUROC", "p_ap": "P-AP", "p_f1max": "P-F1max", "aupro": "AUPRO",
}

Matrix = dict[str, dict[int, float]]  # task -> stage -> value


@dataclass(frozen=True)
class ExpertUsage:
    """How often each MoE-Leader was routed while evaluating each task at one stage.

    counts: task -> int array `[L, K, N_r]` (scales, kernel-size branches, leaders);
    kernel_sizes: the K branches' kernel sizes (for labels).
    """

    stage: int
    counts: dict[str, np.ndarray]
    kernel_sizes: tuple[int, ...] = ()

    def shares(self) -> dict[str, np.ndarray]:
        """Per task, each leader's share of its (scale, branch) routings: sums to 1 over N_r."""
        return {task: leader_shares(c) for task, c in self.counts.items()}


@dataclass(frozen=True)
class Report:
    metric: str
    stages: list[int]
    tasks: list[str]  # in learning order
    learned: dict[str, int]  # task -> stage that learned it
    stage_tasks: dict[int, list[str]]  # stage -> tasks it learned (for labels)
    matrix: Matrix
    forgetting: dict[str, float | None]
    forgetting_from_learned: dict[str, float | None]
    average_forgetting: float | None
    average_forgetting_from_learned: float | None
    bwt: float | None
    average_incremental: float | None
    expert_usage: ExpertUsage | None = None
    files: list[str] = field(default_factory=list)

    @property
    def final_stage(self) -> int:
        return self.stages[-1]

    def final_mean(self) -> float | None:
        """Mean over all learned tasks of their final value."""
        return _mean(self.matrix.get(t, {}).get(self.final_stage) for t in self.tasks)


# --------------------------------------------------------------------------- formulas


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def forgetting_best(row: dict[int, float], learned: int, final: int) -> float | None:
    """Standard forgetting: best value at any stage from `learned` up to (not incl.) `final`
    minus the value at `final`. None when the task was learned in the final stage or a
    value is missing."""
    earlier = [v for s, v in row.items() if learned <= s < final]
    if final not in row or not earlier:
        return None
    return max(earlier) - row[final]


def forgetting_learned(row: dict[int, float], learned: int, final: int) -> float | None:
    """Forgetting from the just-learned value: R[learned] - R[final] (avalanche-lib's form)."""
    if learned >= final or learned not in row or final not in row:
        return None
    return row[learned] - row[final]


def backward_transfer(matrix: Matrix, learned: dict[str, int], final: int) -> float | None:
    """BWT = mean over old tasks of R[final] - R[learned] (negative: forgetting)."""
    return _mean(
        None if (f := forgetting_learned(matrix.get(t, {}), s, final)) is None else -f
        for t, s in learned.items()
    )


def average_incremental(matrix: Matrix, learned: dict[str, int], stages: list[int]) -> float | None:
    """Mean over stages of the mean metric over the tasks learned up to that stage."""
    return _mean(
        _mean(matrix.get(t, {}).get(s) for t, at in learned.items() if at <= s) for s in stages
    )


def leader_shares(counts: np.ndarray) -> np.ndarray:
    """`[L, K, N_r]` routing counts -> shares summing to 1 over the leaders of each (L, K)
    (all zeros where nothing was routed)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def build_report(
    metric: str,
    matrix: Matrix,
    learned: dict[str, int],
    stages: list[int] | None = None,
    expert_usage: ExpertUsage | None = None,
) -> Report:
    """The report of `metric` from the matrix and each task's learning stage (pure)."""
    if metric not in METRIC_KEYS:
        raise UserError(f"--metric {metric!r}: expected one of {', '.join(METRIC_KEYS)}")
    stages = sorted(stages if stages is not None else {s for row in matrix.values() for s in row})
    if not stages:
        raise UserError(f"no {metric} evaluations recorded yet: train a stage first (train-base)")
    final = stages[-1]
    learned = {t: s for t, s in learned.items() if s <= final}
    tasks = sorted(learned, key=learned.get)  # stable: registration order within a stage
    stage_tasks = {s: [t for t in tasks if learned[t] == s] for s in stages}
    kept = set(stages)
    forgetting = {t: forgetting_best(matrix.get(t, {}), learned[t], final) for t in tasks}
    from_learned = {t: forgetting_learned(matrix.get(t, {}), learned[t], final) for t in tasks}
    return Report(
        metric=metric,
        stages=stages,
        tasks=tasks,
        learned={t: learned[t] for t in tasks},
        stage_tasks=stage_tasks,
        matrix={t: {s: v for s, v in sorted(matrix.get(t, {}).items()) if s in kept} for t in tasks},
        forgetting=forgetting,
        forgetting_from_learned=from_learned,
        average_forgetting=_mean(forgetting.values()),
        average_forgetting_from_learned=_mean(from_learned.values()),
        bwt=backward_transfer(matrix, learned, final),
        average_incremental=average_incremental(matrix, learned, stages),
        expert_usage=expert_usage,
    )


# --------------------------------------------------------------------------- loading


def load_expert_usage(workspace: Path, stage: int, kernel_sizes: tuple[int, ...] = ()) -> ExpertUsage | None:
    """Leader counts per task from `<workspace>/evaluations/stage_NNN.json` (None if absent)."""
    path = evaluation_summary_path(workspace, stage)
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read evaluation summary {path}: {exc}") from None
    counts = {
        task: np.asarray(entry["leader_counts"], dtype=np.int64)
        for task, entry in summary.items()
        if isinstance(entry, dict) and entry.get("leader_counts") is not None
    }
    return ExpertUsage(stage, counts, kernel_sizes) if counts else None


def load_report(registry, workspace: Path, metric: str = "i_auroc") -> Report:
    """The report of `metric` from a workspace's registry and evaluation summaries.

    Only completed stages count (a failed stage's partial evaluations are ignored)."""
    from registry import store

    if metric not in METRIC_KEYS:
        raise UserError(f"--metric {metric!r}: expected one of {', '.join(METRIC_KEYS)}")
    completed = [s for s in store.list_stages(registry) if s.status == "completed"]
    if not completed:
        raise UserError("no completed stages yet: run train-base first")
    numbers = {s.number for s in completed}
    matrix = {
        task: {s: v for s, v in row.items() if s in numbers}
        for task, row in store.evaluation_matrix(registry, metric).items()
    }
    stages = sorted({s for row in matrix.values() for s in row})
    learned = {t.name: t.trained_in_stage for t in store.list_tasks(registry) if t.trained_in_stage is not None}
    usage = None
    if stages:
        kernel_sizes = tuple(completed[-1].config.get("model", {}).get("kernel_sizes", ()))
        usage = load_expert_usage(workspace, stages[-1], kernel_sizes)
    return build_report(metric, matrix, learned, stages, usage)


# --------------------------------------------------------------------------- output


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def report_json(report: Report) -> dict:
    """The `report --json` object (platform.md) plus the extra keys documented in README."""
    usage = report.expert_usage
    return {
        "metric": report.metric,
        "stages": report.stages,
        "tasks": report.tasks,
        "learned_in_stage": report.learned,
        "matrix": {t: {str(s): _finite(v) for s, v in row.items()} for t, row in report.matrix.items()},
        "forgetting": {t: _finite(v) for t, v in report.forgetting.items()},
        "forgetting_from_learned": {t: _finite(v) for t, v in report.forgetting_from_learned.items()},
        "average_forgetting": _finite(report.average_forgetting),
        "average_forgetting_from_learned": _finite(report.average_forgetting_from_learned),
        "bwt": _finite(report.bwt),
        "average_incremental": _finite(report.average_incremental),
        "final_mean": _finite(report.final_mean()),
        "expert_usage": None if usage is None else {
            "stage": usage.stage,
            "kernel_sizes": list(usage.kernel_sizes),
            "shares": {t: np.round(s, 6).tolist() for t, s in usage.shares().items()},
        },
        "files": list(report.files),
    }


def report_csv(report: Report) -> str:
    """One row per task: learned stage, R at every stage (empty before learning), both
    forgetting forms; then a row of the per-stage means over learned tasks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "learned_in_stage", *(f"stage_{s}" for s in report.stages),
                     "forgetting", "forgetting_from_learned"])

    def cell(value):
        value = _finite(value)
        return "" if value is None else f"{value:.6f}"

    for t in report.tasks:
        row = report.matrix.get(t, {})
        writer.writerow([t, report.learned[t], *(cell(row.get(s)) for s in report.stages),
                         cell(report.forgetting[t]), cell(report.forgetting_from_learned[t])])
    writer.writerow(["mean", "", *(cell(stage_mean(report, s)) for s in report.stages),
                     cell(report.average_forgetting), cell(report.average_forgetting_from_learned)])
    return buffer.getvalue()


def stage_mean(report: Report, stage: int) -> float | None:
    """Mean metric at `stage` over the tasks learned up to it."""
    return _mean(report.matrix[t].get(stage) for t in report.tasks if report.learned[t] <= stage)


def format_table(report: Report) -> str:
    """The terminal table: tasks × stages, forgetting columns, and the summary lines."""
    label = METRIC_LABELS[report.metric]

    def num(value) -> str:
        value = _finite(value)
        return "-" if value is None else f"{value:.3f}"

    width = max([len("task"), len("mean")] + [len(t) for t in report.tasks])
    head = f"{'task':<{width}}  {'learned':>7}  " + "  ".join(f"{'s' + str(s):>6}" for s in report.stages)
    head += f"  {'forget':>7}  {'f-learn':>7}"
    lines = [f"{label} by stage (rows: tasks; forget = best earlier - final, f-learn = just learned - final)", head]
    for t in report.tasks:
        row = report.matrix.get(t, {})
        cells = "  ".join(f"{num(row.get(s)) if s >= report.learned[t] else '':>6}" for s in report.stages)
        lines.append(f"{t:<{width}}  {report.learned[t]:>7}  {cells}  {num(report.forgetting[t]):>7}  "
                     f"{num(report.forgetting_from_learned[t]):>7}")
    means = "  ".join(f"{num(stage_mean(report, s)):>6}" for s in report.stages)
    lines.append(f"{'mean':<{width}}  {'':>7}  {means}  {num(report.average_forgetting):>7}  "
                 f"{num(report.average_forgetting_from_learned):>7}")
    lines.append(
        f"final mean {label} {num(report.final_mean())}  ·  average forgetting {num(report.average_forgetting)}"
        f"  ·  BWT {num(report.bwt)}  ·  average incremental {num(report.average_incremental)}"
    )
    return "\n".join(lines)


def write_report_files(report: Report, out_dir: Path, plots: bool = True) -> Report:
    """Write `report_<metric>.json`, `report_<metric>.csv` and (with `plots`) the PNGs
    `forgetting_<metric>.png`, `matrix_<metric>.png`, `expert_usage.png`, each atomically.
    Returns the report with `files` set; the JSON file lists them all too."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; expected a folder")
    stem = f"report_{report.metric}"
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.csv"]
    if plots:
        from unimmad_cl.evaluation import plots as plotting

        paths.append(plotting.forgetting_curves(report, out_dir / f"forgetting_{report.metric}.png"))
        paths.append(plotting.stage_task_matrix(report, out_dir / f"matrix_{report.metric}.png"))
        if report.expert_usage is not None:
            paths.append(plotting.expert_usage(report.expert_usage, report.tasks, out_dir / "expert_usage.png"))
    report = replace(report, files=[str(p) for p in paths])
    write_text_atomic(paths[1], report_csv(report))
    write_text_atomic(paths[0], json.dumps(report_json(report), indent=2))
    return report
