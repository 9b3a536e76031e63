"""The synthetic benchmark: determinism, its tasks.yaml against its tree, masks, the CLI."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cli import main
from unimmad_cl.data.readers import get_reader
from unimmad_cl.data.synth import TASKS, benchmark, write_benchmark


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "bench"
    write_benchmark(out, seed=3, image_size=32, n_train=3, n_test=4)
    return out


def test_same_seed_gives_identical_bytes(bench, tmp_path):
    again = tmp_path / "again"
    write_benchmark(again, seed=3, image_size=32, n_train=3, n_test=4)
    assert digest(again) == digest(bench)
    other = tmp_path / "other"
    write_benchmark(other, seed=4, image_size=32, n_train=3, n_test=4)
    assert digest(other) != digest(bench)


def test_tasks_yaml_describes_what_was_written(bench):
    entries = yaml.safe_load((bench / "tasks.yaml").read_text())
    assert len(entries) >= 7
    assert [e["name"] for e in entries] == [t.name for t in TASKS]
    fields = set()
    for entry in entries:
        assert list(entry) == ["name", "format", "root", "modalities", "classes", "field", "loss_weight"]
        assert entry["format"] == "folder" and entry["name"].isidentifier()
        root = bench / entry["root"]
        reader = get_reader("folder")
        assert set(reader.classes(root)) == set(entry["classes"])
        train = reader.samples(root, entry["classes"], entry["modalities"], "train")
        test = reader.samples(root, entry["classes"], entry["modalities"], "test")
        assert len(train) == 3 * len(entry["classes"]) and len(test) == 4 * len(entry["classes"])
        assert sum(s.label for s in test) == 2 * len(entry["classes"])
        fields.add(entry["field"])
    assert fields == {"industrial", "medical"}
    mods = {tuple(e["modalities"]) for e in entries}
    assert ("rgb", "depth") in mods and ("infrared",) in mods
    assert ("mri_flair", "mri_t1", "mri_t1ce", "mri_t2") in mods


def test_every_defect_has_a_small_non_empty_mask_of_the_image_size(bench):
    for mask_path in bench.rglob("ground_truth/*/*.png"):
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == (32, 32)
        assert 0 < (mask > 0).mean() < 0.25, mask_path


def test_every_defect_type_renders_at_the_default_size():
    for task_index, task in enumerate(TASKS):
        for cls_index, cls in enumerate(task.classes):
            for defect in (None, *cls.defects):
                rng = benchmark.sample_rng(0, task_index, cls_index, "test", 0)
                images, mask = cls.render(rng, 64, defect)
                assert set(images) == set(task.modalities)
                assert mask.any() == (defect is not None), (task.name, cls.name, defect)
                for array in images.values():
                    assert array.shape[:2] == (64, 64) and np.isfinite(array).all()


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(benchmark, "write_task", boom)
    with pytest.raises(RuntimeError):
        write_benchmark(tmp_path / "out", n_train=1, n_test=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_writes_and_registers_format(tmp_path):
    out = tmp_path / "s"
    result = CliRunner().invoke(main, ["synth", "--out", str(out), "--train", "2", "--test", "2", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert "add-task --from" in result.output and (out / "tasks.yaml").is_file()
    assert (out / "bagel_rgbd/bagel/train/good/depth/000.tiff").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-size", "8"], "--image-size must be at least 32"),
        (["--train", "0"], "--train must be at least 1"),
        (["--test", "1"], "--test must be at least 2"),
    ],
)
def test_cli_bad_flags_one_line_error_nothing_written(tmp_path, args, message):
    out = tmp_path / "s"
    result = CliRunner().invoke(main, ["synth", "--out", str(out), *args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists()


def test_cli_refuses_a_non_empty_out_unless_overwrite(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["synth", "--out", str(out), "--train", "1", "--test", "2"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: --out")
    assert (out / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(main, ["synth", "--out", str(out), "--train", "1", "--test", "2", "--overwrite"])
    assert result.exit_code == 0 and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
