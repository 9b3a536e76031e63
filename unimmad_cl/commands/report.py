"""Report commands: report (forgetting over stages), predict (heatmaps for new inputs), demo.

`report` never imports torch (the registry and numpy only; matplotlib only for the PNGs);
`predict` and `demo` import the model and training code inside their bodies.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from unimmad_cl.evaluation.metrics import METRIC_KEYS
from unimmad_cl.workspace import Workspace


@click.command("report")
@click.option("--metric", type=click.Choice(METRIC_KEYS), default="i_auroc", show_default=True,
              help="Metric of the matrix R[stage, task].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Folder for the JSON/CSV/PNG files (default <workspace>/reports).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the table.")
@click.option("--plots/--no-plots", default=None,
              help="Draw the PNGs (default: yes for the table, no with --json, which stays fast for scripts).")
@click.option("--html", "as_html", is_flag=True,
              help="Also write report.html: every metric, stages, curves, expert usage and heatmap galleries "
                   "in one self-contained file for a browser.")
@click.option("--gallery-tasks", help="With --html: comma-separated tasks whose heatmap galleries to embed "
                                      "(default: all, or the 40 most forgotten beyond 40 tasks).")
@click.pass_obj
def report(obj, metric, out_dir, as_json, plots, as_html, gallery_tasks):
    """Stage × task matrix, forgetting, BWT, average incremental performance, plots.

    Writes report_<metric>.json/.csv and (unless --json or --no-plots) forgetting_<metric>.png,
    matrix_<metric>.png and expert_usage.png under <workspace>/reports (or --out); with
    --html also report.html, one self-contained page to open in a browser.
    """
    from dataclasses import replace

    from unimmad_cl.errors import UserError
    from unimmad_cl.evaluation.report import REPORTS_DIR, format_table, load_report, report_json, write_report_files

    if gallery_tasks is not None and not as_html:
        raise UserError("--gallery-tasks needs --html")
    chosen = None
    if gallery_tasks is not None:
        chosen = [t.strip() for t in gallery_tasks.split(",") if t.strip()]
        if not chosen:
            raise UserError(f"--gallery-tasks {gallery_tasks!r}: expected a comma-separated list of task names")
    workspace = _existing_workspace(obj)
    _check_out(out_dir)
    folder = out_dir or workspace.path / REPORTS_DIR
    with workspace.open_registry() as registry:
        if chosen:
            from registry import store

            known = [t.name for t in store.list_tasks(registry)]
            unknown = [t for t in chosen if t not in known]
            if unknown:
                raise UserError(f"--gallery-tasks: no task named {unknown[0]!r} (known tasks: {', '.join(known) or 'none'})")
        result = load_report(registry, workspace.path, metric)
        page = None
        if as_html:
            from unimmad_cl.evaluation.html import HTML_NAME, write_html_report

            # Checked and written before the other files: bad --gallery-tasks writes nothing.
            page = write_html_report(registry, workspace.path, folder / HTML_NAME, gallery_tasks=chosen)
    result = write_report_files(result, folder, plots=not as_json if plots is None else plots)
    if page is not None:
        result = replace(result, files=[*result.files, str(page)])
    if as_json:
        click.echo(json.dumps(report_json(result), indent=2))
        return
    click.echo(format_table(result))
    click.echo("files: " + ", ".join(result.files))
    if page is not None:
        click.echo(f"open in a browser: {page}")


def _existing_workspace(obj: dict) -> Workspace:
    """The workspace, refused when its default SQLite registry does not exist (reading
    commands must not create an empty workspace as a side effect of a typo)."""
    from unimmad_cl.errors import UserError
    from unimmad_cl.workspace import REGISTRY_FILE

    workspace = Workspace.resolve(obj["workspace"], obj["db_url"])
    if obj["db_url"] is None and not (workspace.path / REGISTRY_FILE).is_file():
        raise UserError(f"no workspace at {workspace.path}: run `unimmad-cl demo` or `unimmad-cl init` first "
                        "(or pass --workspace / set UNIMMAD_HOME)")
    return workspace


def _check_out(out_dir: Path | None) -> None:
    from unimmad_cl.errors import UserError

    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; expected a folder")


@click.command("predict")
@click.option("--task", "task_name", required=True, help="Registered, trained task the inputs belong to.")
@click.option("--stage", "stage_number", type=int, help="Stage whose model to use (default: latest).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for the heatmap PNGs and predictions.csv.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_obj
def predict(obj, task_name, stage_number, out_dir, device, batch_size, quiet, inputs):
    """Heatmaps, image scores and decisions for new INPUTS of a task.

    An INPUT is an image file (single-modality task) or a folder holding one file per
    modality named <modality>.<ext> (e.g. rgb.png and depth.tiff). The decision threshold is
    the F1-optimal image-score threshold on the task's test split at that stage.
    """
    from unimmad_cl.evaluation.predict import CSV_NAME, run_predict
    from unimmad_cl.training.stages import Context

    workspace = _existing_workspace(obj)
    echo = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with workspace.open_registry() as registry:
        ctx = Context(workspace.path, registry, progress=not quiet, echo=echo)
        rows, threshold, stage = run_predict(ctx, task_name, stage_number, list(inputs), out_dir, device, batch_size)
    click.echo(
        f"task {task_name}, stage {stage}: threshold {threshold.value:.6g} "
        f"(F1-optimal image score on the test split, F1 {threshold.f1:.3f}); anomalous when score >= threshold"
    )
    for row in rows:
        click.echo(f"{'ANOMALOUS' if row.anomalous else 'good':<9}  {row.score:.6g}  {row.input}  -> {row.heatmap}")
    click.echo(f"wrote {len(rows)} heatmaps and {out_dir / CSV_NAME}")


@click.command("demo")
@click.option("--out", "out_dir", default="unimmad-demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the demo's data and workspace (new, empty, or an interrupted demo).")
@click.option("--epochs", type=click.IntRange(min=1), help="Base-stage epochs (default 12; --quick: 1).")
@click.option("--incremental-epochs", type=click.IntRange(min=1), help="Epochs of each incremental stage (default 12; --quick: 1).")
@click.option("--quick", is_flag=True, help="A one-minute version: 2 tasks, 4 train/4 test images, 64 px.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines (steps and the report only).")
def demo(out_dir, epochs, incremental_epochs, quick, device, quiet):
    """The whole pipeline on real photographs, then the forgetting report.

    Writes the real-photo benchmark to OUT/data, trains a base stage on brick (gray texture)
    and coffee (RGB object) with the default lite preset (pretrained, offline), adds grass,
    chelsea and retina (fundus) one incremental stage each, and prints the report and the path
    of the HTML report. About 5 minutes on 2 idle cores. Rerun to resume.
    """
    from dataclasses import replace

    from unimmad_cl.demo import QUICK, DemoSettings, run_demo

    settings = QUICK if quick else DemoSettings()
    settings = replace(settings, base_epochs=epochs or settings.base_epochs,
                       incremental_epochs=incremental_epochs or settings.incremental_epochs)
    # Steps and the report go to stdout; the stages' epoch lines to stderr, like the bars.
    detail = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    from unimmad_cl.runtime import described_first

    # the threads and wait policy `unimmad-cl` chose, before the stages' first line
    detail = described_first(detail, (click.get_current_context().find_object(dict) or {}).get("runtime"))
    result = run_demo(out_dir, settings, device=device, progress=not quiet, echo=click.echo, detail=detail)
    ws = result.workspace
    click.echo(f"demo finished in {result.seconds:.0f} s. Explore the workspace:")
    click.echo(f"  export UNIMMAD_HOME={ws}")
    click.echo("  unimmad-cl stages; unimmad-cl report --metric p_auroc; unimmad-cl show-task coffee")
    click.echo(f"  unimmad-cl predict --task coffee --out {result.out / 'predictions'} "
               f"{result.out / 'data' / 'mvtec' / 'coffee' / 'test' / 'stain'}/*.png")
