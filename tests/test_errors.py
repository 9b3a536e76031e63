"""Every row of docs/errors.md: the command gets its one-line message, exits 2, changes nothing.

The table is the source: this test parses it, so the documentation and the behaviour cannot
drift apart. The prepared workspace is described at the top of docs/errors.md.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"
HEADER = "| command | bad input | run | message |"


def parse_table(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    start = lines.index(HEADER) + 2  # header and |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, f"docs/errors.md: malformed row {line!r}"
        command, what, run, message = cells
        assert run.startswith("`") and run.endswith("`"), line
        assert message.startswith("`") and message.endswith("`"), line
        rows.append({"command": command, "what": what, "run": run[1:-1], "message": message[1:-1]})
    return rows


ROWS = parse_table(DOC.read_text())


def row_id(row: dict[str, str]) -> str:
    return f"{row['command']}: {row['what']}".replace("`", "")


# --------------------------------------------------------------------------- the prepared workspace


def _cli(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output


def _record_base(ws: Path) -> None:
    """A completed base stage on fabric, recorded as train-base records it, with an untrained
    tiny model as its file (training it is not what these rows test)."""
    import torch

    from registry import store
    from unimmad_cl.config import ModelConfig, TrainConfig
    from unimmad_cl.model.io import save_model
    from unimmad_cl.model.unimmad import UniMMAD
    from unimmad_cl.training import artifacts
    from unimmad_cl.workspace import Workspace

    config = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = UniMMAD(config)
    path = ws / artifacts.base_file_name()
    save_model(model, path, {"stage": "0", "tasks": json.dumps(["fabric"])})
    train = TrainConfig.preset("tiny").with_overrides(epochs=1)
    with Workspace.resolve(ws).open_registry() as registry:
        store.start_stage(registry, "base", ["fabric"], number=0, seed=0,
                          config={"model": config.to_dict(), "train": train.to_dict()})
        store.complete_stage(
            registry, 0, seconds=1.0,
            artifact=store.ArtifactInfo("base", artifacts.base_file_name(), artifacts.sha256_file(path),
                                        path.stat().st_size),
        )


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors")
    ws, data, files, tmp = root / "ws", root / "data", root / "files", root / "tmp"
    tmp.mkdir()
    _cli("--workspace", str(root / "scratch"), "synth", "--out", str(data), "--train", "4", "--test", "2")
    shutil.rmtree(root / "scratch", ignore_errors=True)
    _cli("--workspace", str(ws), "add-task", "--from", str(data / "tasks.yaml"))
    files.mkdir()
    for name in ("corrupt", "gone"):
        shutil.copytree(data / "tiles", files / name)
        _cli("--workspace", str(ws), "add-task", "--name", name, "--modality", "rgb", "--root", str(files / name))
    shutil.rmtree(files / "gone")
    for image in (files / "corrupt").glob("*/train/good/rgb/*.png"):
        image.write_bytes(b"not a png")
    _record_base(ws)
    (files / "bad.yaml").write_text("model: [top_k\n")
    (files / "list.yaml").write_text("- 1\n- 2\n")
    (files / "topk.yaml").write_text("model:\n  top_k: 64\n  num_leaders: 32\n")
    (files / "unknown.yaml").write_text("model:\n  nope: 1\n")
    (files / "size.yaml").write_text("model:\n  image_size: 50\n")
    (files / "trainbad.yaml").write_text("train:\n  epochs: 0\n")
    (files / "trainunk.yaml").write_text("train:\n  speed: 3\n")
    (files / "typo.yaml").write_text("name: t\nmodality: [rgb]\n")
    (files / "xray.yaml").write_text(f"name: t\nmodalities: [xray]\nroot: {data / 'fabric'}\n")
    (files / "img.png").write_bytes(b"not a png")
    (files / "notes.txt").write_text("a file, not a folder\n")
    good = data / "bagel_rgbd" / "bagel" / "test" / "good"
    (files / "pair").mkdir()
    shutil.copy(next((good / "rgb").iterdir()), files / "pair" / "rgb.png")
    shutil.copy(next((good / "depth").iterdir()), files / "pair" / "depth.tiff")
    return {"$WS": ws, "$DATA": data, "$FILES": files, "$TMP": tmp, "root": root}


def snapshot(places: dict[str, Path]) -> tuple:
    """Every registry row and every file and folder (name, size, mtime) under the test root.
    The database files themselves are compared by content, and the lock file is left out."""
    with sqlite3.connect(places["$WS"] / "registry.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        rows = [(t, sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"')))) for t in tables]
    listing = sorted(
        (str(p.relative_to(places["root"])), p.is_dir() or p.stat().st_size, p.is_dir() or p.stat().st_mtime_ns)
        for p in places["root"].rglob("*")
        if not p.name.startswith(("registry.db", "train.lock"))
    )
    return rows, listing


def substitute(text: str, places: dict[str, Path]) -> str:
    for key in ("$WS", "$DATA", "$FILES", "$TMP"):
        text = text.replace(key, str(places[key]))
    return text


def matches(expected: str, line: str) -> bool:
    """`…` in the documented message stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, line) is not None


# --------------------------------------------------------------------------- the rows


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_documented_bad_input(row, places):
    before = snapshot(places)
    args = shlex.split(substitute(row["run"], places))
    result = CliRunner().invoke(main, ["--workspace", str(places["$WS"]), *args])
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output}"
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{output}"
    expected = substitute(row["message"], places)
    assert matches(expected, lines[0]), f"\n documented: {expected}\n got:        {lines[0]}"
    assert snapshot(places) == before, "the command changed the registry or wrote files"


def test_every_command_has_rows():
    covered = {row["command"] for row in ROWS}
    missing = sorted(set(cli.COMMANDS) - covered)
    assert not missing, f"docs/errors.md has no rows for {missing}"


def test_every_row_is_unique():
    runs = [row["run"] for row in ROWS]
    assert len(runs) == len(set(runs))
