"""The `unimmad-cl` command: a thin click shell over the library.

Commands live in `unimmad_cl/commands/<area>.py` and are imported only when invoked, so that
`unimmad-cl --help` and the registry commands never import torch, timm or avalanche.
To add a command: write it in a commands module and add one line to `COMMANDS`.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from unimmad_cl import runtime
from unimmad_cl.errors import UserError

# command name -> "module:attribute" (a click.Command)
COMMANDS: dict[str, str] = {
    "info": "unimmad_cl.commands.model:info",
    "init": "unimmad_cl.commands.registry:init",
    "add-task": "unimmad_cl.commands.registry:add_task",
    "tasks": "unimmad_cl.commands.registry:tasks",
    "show-task": "unimmad_cl.commands.registry:show_task",
    "remove-task": "unimmad_cl.commands.registry:remove_task",
    "db": "unimmad_cl.commands.registry:db",
    "synth": "unimmad_cl.commands.data:synth",
    "train-base": "unimmad_cl.commands.training:train_base",
    "train-incremental": "unimmad_cl.commands.training:train_incremental",
    "stages": "unimmad_cl.commands.training:stages",
    "evaluate": "unimmad_cl.commands.training:evaluate",
    "report": "unimmad_cl.commands.report:report",
    "predict": "unimmad_cl.commands.report:predict",
    "demo": "unimmad_cl.commands.report:demo",
}

# One-line summaries for `--help`, kept here so listing commands imports nothing.
SUMMARIES: dict[str, str] = {
    "info": "Parameter breakdown of a model preset/config.",
    "init": "Create the workspace and registry; set the data root.",
    "add-task": "Register a task (flags or --from FILE.yaml), checked against its data.",
    "tasks": "List the registered tasks.",
    "show-task": "Show one task: data, classes, modalities, samples, training state.",
    "remove-task": "Unregister a task that has not been trained.",
    "db": "Registry schema migrations: upgrade, downgrade, current.",
    "synth": "Write the deterministic synthetic multi-modal benchmark and its tasks.yaml.",
    "train-base": "Stage 0: train the full model jointly on the first tasks.",
    "train-incremental": "One stage per new task: train MoE-Leaders, routers, aggregation with replay.",
    "stages": "List the training stages and their artifacts.",
    "evaluate": "Re-evaluate any stage's model on its tasks' test splits.",
    "report": "Forgetting report: stage x task matrix, forgetting, BWT, plots.",
    "predict": "Anomaly heatmaps, scores and decisions for new images of a task.",
    "demo": "The whole pipeline on synthetic data: base + incremental stages + report.",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # a bad global option (--workspace without a value)
            if isinstance(exc, _NO_ARGS_IS_HELP):
                raise
            click.echo(f"error: {_usage_message(exc)}", err=True)
            ctx.exit(2)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):  # `unimmad-cl db`: the help, as click shows it
                raise
            # click's own bad-flag errors (unknown command/option, bad or missing value): one
            # line, like every other bad input, instead of usage + hint + message
            click.echo(f"error: {_usage_message(exc)}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            # On a terminal a progress bar may hold the cursor mid-line: start a fresh one.
            click.echo(("\n" if sys.stderr.isatty() else "") + "interrupted", err=True)
            ctx.exit(130)


# click >= 8.2 shows a group's help through this UsageError when no command is given
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _usage_message(exc: click.UsageError) -> str:
    """`<command path>: <click's message> (see --help)` on one line."""
    message = " ".join(exc.format_message().split())
    where = exc.ctx.command_path.split(" ", 1)[1] if exc.ctx and " " in exc.ctx.command_path else ""
    return f"{where}: {message} (see --help)" if where else f"{message} (see --help)"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workspace",
    type=click.Path(file_okay=False),
    default=None,
    help="Workspace folder (env UNIMMAD_HOME; default ./unimmad-workspace).",
)
@click.option("--db", "db_url", default=None, help="Registry SQLAlchemy URL (env UNIMMAD_DB).")
@click.option(
    "--threads",
    metavar="auto|N",
    default=None,
    help="CPU threads of torch (env UNIMMAD_THREADS): auto (default: the cores minus the load "
    "average, at least 1; waiting threads spin briefly, then sleep), N, or 0 for torch's own defaults.",
)
@click.version_option(package_name="unimmad-cl")
@click.pass_context
def main(ctx: click.Context, workspace: str | None, db_url: str | None, threads: str | None) -> None:
    """unimmad-cl: one UniMMAD anomaly-detection model that grows, task by task."""
    ctx.ensure_object(dict)
    ctx.obj["workspace"] = workspace or os.environ.get("UNIMMAD_HOME") or "unimmad-workspace"
    ctx.obj["db_url"] = db_url or os.environ.get("UNIMMAD_DB")
    # Threads and OpenMP wait policy, set in the environment before any command imports torch
    # (this imports nothing); undone when the command ends, for callers that run it in-process.
    saved = runtime.snapshot()
    ctx.obj["runtime"] = runtime.configure(threads)
    ctx.call_on_close(lambda: runtime.restore(saved))


if __name__ == "__main__":
    main()
