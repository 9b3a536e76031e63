"""`add-task` without --root: `<data-root>/<name>` first; when that does not hold the class,
the class folder directly under the data root (the common `/data/bottle/train/...` tree),
and the output says which root it used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from cli import main


def png(path: Path, value: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(path)


def mvtec_class(root: Path, cls: str) -> None:
    png(root / cls / "train/good/000.png")
    png(root / cls / "test/good/000.png")
    png(root / cls / "test/crack/000.png")
    png(root / cls / "ground_truth/crack/000_mask.png", 255)


def run(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws), *args])


def test_class_folder_directly_under_the_data_root(tmp_path):
    data, ws = tmp_path / "data", tmp_path / "ws"
    mvtec_class(data, "bottle")
    mvtec_class(data, "cable")
    assert run(ws, "init", "--data-root", str(data)).exit_code == 0
    result = run(ws, "add-task", "--name", "bottle", "--format", "mvtec")
    assert result.exit_code == 0, result.output
    assert f"root {data.resolve()} (the data root itself: bottle sits directly under it" in result.output
    shown = json.loads(run(ws, "show-task", "bottle", "--json").output)
    assert shown["root"] == str(data.resolve()) and shown["classes"] == ["bottle"]  # not every class there
    # with --class: the named classes, found directly under the data root
    result = run(ws, "add-task", "--name", "wires", "--format", "mvtec", "--class", "cable")
    assert result.exit_code == 0, result.output
    assert json.loads(run(ws, "show-task", "wires", "--json").output)["classes"] == ["cable"]


def test_the_name_folder_comes_first(tmp_path):
    data, ws = tmp_path / "data", tmp_path / "ws"
    mvtec_class(data / "mvtec", "bottle")
    mvtec_class(data, "bottle")
    run(ws, "init", "--data-root", str(data))
    result = run(ws, "add-task", "--name", "mvtec", "--format", "mvtec")
    assert result.exit_code == 0, result.output
    assert f"root {(data / 'mvtec').resolve()}\n" in result.output


def test_neither_root_holds_it_is_one_error_line(tmp_path):
    data, ws = tmp_path / "data", tmp_path / "ws"
    mvtec_class(data, "cable")
    run(ws, "init", "--data-root", str(data))
    result = run(ws, "add-task", "--name", "bottle", "--format", "mvtec")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: task 'bottle': data root not found:")
    assert "has no class folder 'bottle'" in lines[0]
    assert json.loads(run(ws, "tasks", "--json").output) == []
