"""Bad data given to the CLI: one `error: ...` line naming the problem, exit != 0, nothing registered."""

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main


def png(path: Path, shape=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, 255, np.uint8)).save(path)


def tree(root: Path) -> Path:
    base = root / "widget"
    for mod in ("rgb", "infrared"):
        png(base / f"train/good/{mod}/000.png")
        png(base / f"test/good/{mod}/001.png")
        png(base / f"test/scratch/{mod}/002.png")
    png(base / "ground_truth/scratch/002.png")
    return root


def break_nothing(root):
    return None


def drop_partner(root):
    (root / "widget/train/good/infrared/000.png").unlink()


def drop_mask(root):
    (root / "widget/ground_truth/scratch/002.png").unlink()


def shrink_mask(root):
    png(root / "widget/ground_truth/scratch/002.png", shape=(6, 8))


def corrupt_image(root):
    (root / "widget/ground_truth/scratch/002.png").write_bytes(b"garbage")


def drop_class(root):
    for path in sorted((root / "widget").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "widget").rmdir()
    (root / "other/train").mkdir(parents=True)


@pytest.mark.parametrize(
    "mutate, extra, message",
    [
        (drop_partner, [], r"infrared file missing for .*rgb/000.png"),
        (drop_mask, [], r"defect image .*scratch/rgb/002.png has no mask"),
        (drop_class, ["--class", "widget"], r"class 'widget' not found"),
        (shrink_mask, [], r"mask .*002.png is 8x6 but image .*rgb/002.png is 8x8"),
        (corrupt_image, [], r"cannot read image .*scratch/002.png"),
        (break_nothing, [a for m in ("rgb", "ct", "oct", "xray", "gray") for a in ("--modality", m)], "1 to 4 modalities"),
        (break_nothing, ["--modality", "sonar"], "unknown modality 'sonar'"),
    ],
)
def test_add_task_on_bad_data(tmp_path, mutate, extra, message):
    root = tree(tmp_path / "data")
    mutate(root)
    ws = ["--workspace", str(tmp_path / "ws")]
    runner = CliRunner()
    assert runner.invoke(main, [*ws, "init"]).exit_code == 0
    mods = [] if "--modality" in extra else ["--modality", "rgb", "--modality", "infrared"]
    result = runner.invoke(main, [*ws, "add-task", "--name", "t", "--root", str(root), *mods, *extra])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(message, lines[0]), lines[0]
    assert "t " not in runner.invoke(main, [*ws, "tasks"]).output


def test_add_task_missing_root(tmp_path):
    ws = ["--workspace", str(tmp_path / "ws")]
    runner = CliRunner()
    runner.invoke(main, [*ws, "init"])
    result = runner.invoke(main, [*ws, "add-task", "--name", "t", "--root", str(tmp_path / "nope"), "--modality", "rgb"])
    assert result.exit_code != 0 and result.output.startswith("error: ") and "nope" in result.output
