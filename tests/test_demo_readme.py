"""Every `unimmad-cl` command in README.md's bash blocks names a real command and parses with
its flags; the quick demo the README promises really runs (shared with test_demo.py); the
pictures it shows exist."""

import re
import shlex
from pathlib import Path

import click
import pytest
from demo_workspace import quick_demo

import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The argv after `unimmad-cl` of each command line (continuations joined, comments and
    leading VAR=value assignments dropped)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words and words[0] == "unimmad-cl":
            found.append(words[1:])
    return found


README_COMMANDS = [argv for block in bash_blocks(README.read_text()) for argv in commands(block)]


def test_readme_shows_the_main_commands():
    names = {argv[0] for argv in README_COMMANDS}
    assert {"demo", "report", "predict", "train-base", "train-incremental", "add-task", "stages"} <= names


@pytest.mark.parametrize("argv", README_COMMANDS, ids=[" ".join(a)[:60] for a in README_COMMANDS])
def test_readme_command_parses(argv):
    """Resolve the command (and db subcommand) and let click parse every flag and value."""
    group, args = cli.main, list(argv)
    while args[0] in ("--workspace", "--db"):  # global options come before the command
        args = args[2:]
    ctx = group.make_context("unimmad-cl", list(argv[: len(argv) - len(args)]), resilient_parsing=True)
    command = group.get_command(ctx, args[0])
    assert command is not None, f"unknown command {args[0]!r}"
    if isinstance(command, click.Group):
        sub = command.get_command(ctx, args[1])
        assert sub is not None, f"unknown subcommand {args[1]!r}"
        command, args = sub, args[1:]
    command.make_context(args[0], args[1:], parent=ctx)


def test_readme_pictures_exist():
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text()):
        assert (README.parent / target).is_file(), target


def test_the_quick_demo_runs():
    out, result = quick_demo()
    assert result.exit_code == 0, result.output
    assert (out / "workspace" / "reports" / "forgetting_i_auroc.png").is_file()
