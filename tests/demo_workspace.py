"""One quick demo per test session, run through the CLI, shared by the demo, predict and
README tests (training even the quick demo takes seconds; doing it once keeps them fast)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from click.testing import CliRunner

import cli


@functools.cache
def quick_demo():
    """(out folder, click Result) of `unimmad-cl demo --quick --quiet --out <tmp>/demo`."""
    root = Path(tempfile.mkdtemp(prefix="unimmad-demo-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out = root / "demo"
    result = CliRunner().invoke(cli.main, ["demo", "--quick", "--quiet", "--out", str(out)])
    return out, result
