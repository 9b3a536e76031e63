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
@click.option("--no-plots", is_flag=True, help="Write only the JSON and CSV files (no matplotlib).")
@click.pass_obj
def report(obj, metric, out_dir, as_json, no_plots):
    """Stage × task matrix, forgetting, BWT, average incremental performance, plots.

    Writes report_<metric>.json/.csv, forgetting_<metric>.png, matrix_<metric>.png and
    expert_usage.png under <workspace>/reports (or --out).
    """
    from unimmad_cl.evaluation.report import REPORTS_DIR, format_table, load_report, report_json, write_report_files

    workspace = Workspace.resolve(obj["workspace"], obj["db_url"])
    _check_out(out_dir)
    with workspace.open_registry() as registry:
        result = load_report(registry, workspace.path, metric)
    result = write_report_files(result, out_dir or workspace.path / REPORTS_DIR, plots=not no_plots)
    if as_json:
        click.echo(json.dumps(report_json(result), indent=2))
        return
    click.echo(format_table(result))
    click.echo("files: " + ", ".join(result.files))


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

    workspace = Workspace.resolve(obj["workspace"], obj["db_url"])
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
