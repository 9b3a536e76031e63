"""The modality table and the decoding of files into normalized 3-channel images."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from unimmad_cl.data.images import (
    DEPTH_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_mask,
    load_modality,
    load_sample,
)
from unimmad_cl.data.modalities import MAX_MODALITIES, MODALITIES, check_modalities, get_modality
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_table_covers_the_spec_modalities():
    for name in ("rgb", "gray", "depth", "infrared", "xray", "ct", "oct", "endoscopy",
                 "mri_flair", "mri_t1", "mri_t1ce", "mri_t2"):
        assert get_modality(name).decode in ("color", "gray", "depth")
    assert all(m.name == key for key, m in MODALITIES.items())
    assert MAX_MODALITIES == 4


def test_unknown_modality_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown modality 'sonar'.*rgb"):
        get_modality("sonar")


@pytest.mark.parametrize("mods", [(), ("rgb", "depth", "infrared", "ct", "oct"), ("rgb", "rgb")])
def test_task_modality_count_and_uniqueness(mods):
    with pytest.raises(UserError):
        check_modalities(mods)


def test_readers_import_without_numpy_or_torch():
    code = (
        "import sys, unimmad_cl.data.readers as r\n"
        "[r.get_reader(f) for f in r.FORMATS]\n"
        "bad = [m for m in ('torch', 'numpy', 'PIL', 'tifffile') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_rgb_is_imagenet_normalized_and_resized(tmp_path):
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = load_modality(save(tmp_path / "a.png", rgb), "rgb", 8)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    expected = (np.array([1.0, 0.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out[:, 4, 4], expected, atol=1e-5)


def test_gray_modalities_repeat_one_channel_and_read_16_bit(tmp_path):
    eight = load_modality(save(tmp_path / "a.png", np.full((6, 6), 255, np.uint8)), "infrared", 6)
    sixteen = load_modality(save(tmp_path / "b.png", np.full((6, 6), 65535, np.uint16)), "ct", 6)
    expected = (1.0 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
    np.testing.assert_allclose(eight[:, 0, 0], expected, atol=1e-5)
    np.testing.assert_allclose(sixteen[:, 0, 0], expected, atol=1e-5)
    colour_as_gray = load_modality(save(tmp_path / "c.png", np.full((6, 6, 3), 255, np.uint8)), "gray", 6)
    np.testing.assert_allclose(colour_as_gray, eight, atol=1e-4)


def test_depth_from_mvtec3d_xyz_fills_centres_and_scales(tmp_path):
    xyz = np.zeros((8, 8, 3), dtype=np.float32)
    xyz[2:6, 2:6, 2] = 0.50
    xyz[2:4, 2:6, 2] = 0.52  # foreground mean 0.51
    tifffile.imwrite(tmp_path / "x.tiff", xyz, photometric="rgb")
    out = load_modality(tmp_path / "x.tiff", "depth", 8)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out[0], out[2])
    assert out[0, 0, 0] == pytest.approx(0.0, abs=1e-5)  # missing point -> foreground mean
    assert out[0, 3, 3] == pytest.approx(0.01 * DEPTH_SCALE, abs=1e-3)
    assert out[0, 5, 5] == pytest.approx(-0.01 * DEPTH_SCALE, abs=1e-3)


def test_depth_png_in_millimetres_and_eyecandies_range(tmp_path):
    mm = np.zeros((4, 4), dtype=np.uint16)
    mm[:, :2], mm[:, 2:] = 500, 520
    out = load_modality(save(tmp_path / "d.png", mm), "depth", 4)
    assert out[0, 0, 0] == pytest.approx(-1.0, abs=1e-4) and out[0, 0, 3] == pytest.approx(1.0, abs=1e-4)

    norm = np.zeros((4, 4), dtype=np.uint16)
    norm[:, 2:] = 65535
    save(tmp_path / "007_depth.png", norm)
    (tmp_path / "007_info_depth.yaml").write_text("normalization:\n  min: 0.4\n  max: 0.42\n")
    eye = load_modality(tmp_path / "007_depth.png", "depth", 4)
    assert eye[0, 0, 0] == pytest.approx(-1.0, abs=1e-3) and eye[0, 0, 3] == pytest.approx(1.0, abs=1e-3)


def test_mask_any_nonzero_is_anomalous_and_resized_nearest(tmp_path):
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0] = 2  # BraTS labels 1/2/4 all count
    out = load_mask(save(tmp_path / "m.png", mask), 8)
    assert out.shape == (8, 8) and set(np.unique(out)) == {0.0, 1.0}
    assert out[:2, :2].all() and out.sum() == 4


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_modality(bad, "rgb", 8)


def test_mask_size_must_match_the_image(tmp_path):
    image = save(tmp_path / "i.png", np.zeros((8, 8, 3), np.uint8))
    mask = save(tmp_path / "m.png", np.zeros((6, 8), np.uint8))
    sample = Sample(None, "c", "test", ("rgb",), (str(image),), 1, str(mask), "cut", "i")
    with pytest.raises(UserError, match=r"mask .*m.png is 8x6 but image .*i.png is 8x8"):
        load_sample(sample, 8)
