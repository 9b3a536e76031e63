"""The real-photo benchmark (`synth --kind photos`): determinism, exact masks, the MVTec
readers and the registry on its tree, the loader, offline photos, the CLI's bad inputs."""

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner
from PIL import Image

from cli import main
from registry.definitions import load_definitions
from unimmad_cl.data.images import load_sample
from unimmad_cl.data.readers import list_samples
from unimmad_cl.data.synth import perlin, photos
from unimmad_cl.data.synth.benchmark import defect_plan

SIZE, TRAIN, TEST = 64, 2, 10  # 10 test samples: 5 good, then one of each defect (at most 5)
TASKS = {t.name: t for t in photos.TASKS}


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos") / "bench"
    photos.write_photo_benchmark(out, seed=1, image_size=SIZE, n_train=TRAIN, n_test=TEST)
    return out


def test_every_task_has_its_own_seed_and_enough_test_samples_for_each_defect():
    assert len({t.ident for t in photos.TASKS}) == len(photos.TASKS)
    assert all(len(t.defects) <= TEST // 2 for t in photos.TASKS)
    kinds = {t.kind for t in photos.TASKS}
    assert {"texture", "microscopy", "fundus", "object", "rgbd"} <= kinds


def test_same_seed_gives_identical_bytes(bench, tmp_path):
    again = tmp_path / "again"
    photos.write_photo_benchmark(again, seed=1, image_size=SIZE, n_train=TRAIN, n_test=TEST)
    assert digest(again) == digest(bench)
    assert any(name.endswith(".tiff") for name in digest(bench))
    # one task alone: the same bytes as in the full set (seeds do not depend on the selection)
    alone = tmp_path / "alone"
    photos.write_photo_benchmark(alone, seed=1, image_size=SIZE, n_train=TRAIN, n_test=TEST, tasks=["motorcycle"])
    assert digest(alone / "mvtec3d") == digest(bench / "mvtec3d")
    other = tmp_path / "other"
    photos.write_photo_benchmark(other, seed=2, image_size=SIZE, n_train=TRAIN, n_test=TEST, tasks=["brick"])
    assert digest(other / "mvtec" / "brick") != digest(bench / "mvtec" / "brick")


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=2) if a.ndim == 3 else a != b


@pytest.mark.parametrize("task", photos.TASKS, ids=lambda t: t.name)
def test_masks_are_exactly_where_pixels_changed(task):
    for defect in task.defect_names:
        for index in range(2):
            s = photos.render_sample(task, 5, "test", index, 96, defect)
            mask = s.mask
            assert mask.shape == s.image.shape[:2] and mask.dtype == bool
            assert photos.MIN_AREA <= mask.mean() <= photos.MAX_AREA, (defect, mask.mean())
            rgb = _changed(s.image, s.clean_image)
            assert not rgb[~mask].any(), f"{task.name}/{defect}: pixels changed outside the mask"
            changed = rgb.copy()
            if s.xyz is not None:
                depth = _changed(s.xyz, s.clean_xyz)
                assert not depth[~mask].any(), f"{task.name}/{defect}: depth changed outside the mask"
                assert (s.xyz[:, :, 2] == 0).sum() > 0 and not s.xyz[s.xyz[:, :, 2] == 0].any()
                changed |= depth
                if defect in ("dent", "bump"):  # depth only, invisible in RGB
                    assert not rgb.any() and depth[mask].mean() >= 0.95
                elif defect == "stain":  # RGB only, invisible in depth
                    assert not depth.any() and rgb[mask].mean() >= 0.95
                else:  # both
                    assert depth[mask].mean() >= 0.95 and rgb[mask].mean() >= 0.95
            assert changed[mask].mean() >= 0.95, (task.name, defect, changed[mask].mean())


def test_normal_samples_vary_and_have_the_output_size():
    for task in photos.TASKS:
        a = photos.render_sample(task, 0, "train", 0, 96)
        b = photos.render_sample(task, 0, "train", 1, 96)
        assert a.mask is None and a.image.shape[:2] == photos.out_shape(task, 96)
        assert a.image.ndim == (2 if task.gray else 3)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 2, task.name


def test_files_are_the_rendered_samples(bench):
    """What is on disk is what `render_sample` returns (so the mask property holds for files)."""
    for task in photos.TASKS:
        plan = defect_plan(task.defect_names, TEST)
        index = plan.index(task.defect_names[-1])
        s = photos.render_sample(task, 1, "test", index, SIZE, task.defect_names[-1])
        base = bench / task.format / task.name
        if task.format == "mvtec3d":
            folder = base / "test" / task.defect_names[-1]
            image = np.asarray(Image.open(folder / "rgb" / "000.png"))
            mask = np.asarray(Image.open(folder / "gt" / "000.png"))
            assert np.array_equal(tifffile.imread(folder / "xyz" / "000.tiff"), s.xyz)
        else:
            image = np.asarray(Image.open(base / "test" / task.defect_names[-1] / "000.png"))
            mask = np.asarray(Image.open(base / "ground_truth" / task.defect_names[-1] / "000_mask.png"))
        assert np.array_equal(image, s.image), task.name
        assert np.array_equal(mask > 0, s.mask) and set(np.unique(mask)) == {0, 255}


def test_readers_registry_and_loader_read_every_task(bench):
    entries = yaml.safe_load((bench / "tasks.yaml").read_text())
    assert [e["name"] for e in entries] == list(TASKS)
    for entry in entries:
        assert list(entry) == ["name", "format", "root", "modalities", "classes", "field", "loss_weight"]
        task = TASKS[entry["name"]]
        root = bench / entry["root"]
        train = list_samples(entry["format"], root, entry["modalities"], "train", entry["classes"], entry["name"])
        test = list_samples(entry["format"], root, entry["modalities"], "test", entry["classes"], entry["name"])
        assert len(train) == TRAIN and len(test) == TEST
        bad = [s for s in test if s.label == 1]
        assert len(bad) == TEST // 2 and {s.defect for s in bad} == set(task.defect_names)
        assert all(s.mask_path and Path(s.mask_path).is_file() for s in bad)
        assert all(s.mask_path is None for s in test if s.label == 0)
        if entry["format"] == "mvtec":
            assert all(s.mask_path.endswith("_mask.png") for s in bad)
        else:
            assert all(s.paths[1].endswith(".tiff") for s in test)
        images, mask = load_sample(bad[0], 32)
        assert images.shape == (len(entry["modalities"]), 3, 32, 32) and np.isfinite(images).all()
        assert mask.shape == (32, 32) and mask.sum() > 0
        images, mask = load_sample(train[0], 32)
        assert mask.sum() == 0 and images.std() > 0
    specs = load_definitions(bench / "tasks.yaml", data_root=bench)
    assert [s.name for s in specs] == list(TASKS)


def test_photos_come_from_the_installed_wheel_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    photos.load_photo.cache_clear()
    photos.scaled_photo.cache_clear()
    photos.motorcycle_depth.cache_clear()
    import skimage

    assert photos.data_dir().is_relative_to(Path(skimage.__file__).parent)
    for task in photos.TASKS:
        photos.render_sample(task, 0, "test", 0, 64, task.defect_names[0])  # also loads foreign photos
    for name in photos.FOREIGN_PHOTOS:
        assert photos.load_photo(name).shape[2] == 3


def test_perlin_is_seeded_smooth_and_in_range():
    a = perlin.fractal((40, 60), (2, 3), np.random.default_rng(0))
    b = perlin.fractal((40, 60), (2, 3), np.random.default_rng(0))
    assert a.shape == (40, 60) and a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() == 0.0 and a.max() == 1.0
    one = perlin.perlin((64, 64), (4, 4), np.random.default_rng(1))
    assert np.abs(one).max() <= 1.0 + 1e-5 and np.abs(np.diff(one, axis=1)).max() < 0.2


def test_a_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(photos, "write_task", boom)
    with pytest.raises(RuntimeError):
        photos.write_photo_benchmark(tmp_path / "out", image_size=64, n_train=1, n_test=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_photo_tasks_and_keeps_procedural_the_default(tmp_path):
    out = tmp_path / "p"
    args = ["synth", "--kind", "photos", "--out", str(out), "--task", "coffee", "--task", "brick",
            "--train", "1", "--test", "2", "--image-size", "64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in yaml.safe_load((out / "tasks.yaml").read_text())] == ["coffee", "brick"]
    assert Image.open(out / "mvtec/brick/train/good/000.png").mode == "L"
    assert Image.open(out / "mvtec/coffee/train/good/000.png").mode == "RGB"
    result = CliRunner().invoke(main, args)  # not empty now
    assert result.exit_code == 2 and result.output.startswith("error: --out")
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    default = tmp_path / "d"
    result = CliRunner().invoke(main, ["synth", "--out", str(default), "--train", "1", "--test", "2", "--image-size", "32"])
    assert result.exit_code == 0 and (default / "bagel_rgbd").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "drawings"], "Invalid value for '--kind': 'drawings' is not one of 'procedural', 'photos'"),
        (["--kind", "photos", "--task", "nope"], "--task 'nope' is not a photo task; expected one of: brick,"),
        (["--kind", "photos", "--task", "ihc", "--task", "ihc"], "--task 'ihc' is given twice"),
        (["--task", "brick"], "--task needs --kind photos"),
        (["--kind", "photos", "--image-size", "32"], "--image-size must be between 64 and 1024 for --kind photos, got 32"),
        (["--kind", "photos", "--image-size", "4096"], "--image-size must be between 64 and 1024"),
        (["--kind", "photos", "--train", "0"], "--train must be at least 1, got 0"),
        (["--kind", "photos", "--test", "1"], "--test must be at least 2"),
    ],
)
def test_cli_bad_arguments_one_line_exit_2_nothing_written(tmp_path, args, message):
    out = tmp_path / "p"
    result = CliRunner().invoke(main, ["synth", "--out", str(out), *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []
