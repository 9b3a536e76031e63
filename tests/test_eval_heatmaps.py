"""Overlay PNGs: layouts, normalizations, atomic write."""

import numpy as np
import pytest
from PIL import Image

from unimmad_cl.evaluation.heatmaps import IMAGENET_MEAN, IMAGENET_STD, displayable, write_heatmap


def test_displayable_undoes_imagenet_normalization_and_accepts_layouts():
    rgb = np.random.default_rng(0).random((8, 6, 3)).astype(np.float32)
    normalized = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)  # [3, H, W]
    np.testing.assert_allclose(displayable(normalized, "imagenet"), rgb, atol=1e-6)
    np.testing.assert_allclose(displayable(rgb, "unit"), rgb)
    gray = displayable(np.arange(12.0).reshape(3, 4) * 100 - 50, "minmax")
    assert gray.shape == (3, 4, 3) and gray.min() == 0 and gray.max() == 1
    assert (displayable(np.full((4, 4), 7.0), "minmax") == 0).all()  # constant: no division by 0


def test_displayable_rejects_bad_input():
    with pytest.raises(ValueError, match="image_norm"):
        displayable(np.zeros((4, 4)), "zscore")
    with pytest.raises(ValueError, match="image must be"):
        displayable(np.zeros((2, 4, 4, 3)))


@pytest.mark.parametrize("with_mask", [True, False])
def test_write_heatmap_png(tmp_path, with_mask):
    rng = np.random.default_rng(1)
    mask = np.zeros((32, 32), bool)
    mask[10:16, 8:20] = True
    amap = rng.random((32, 32)) + mask
    out = write_heatmap(
        tmp_path / "sub" / "x.png", rng.normal(size=(3, 32, 32)), amap, mask if with_mask else None,
        title="bottle / crack / 000", map_range=(0.0, 2.0),
    )
    assert out == tmp_path / "sub" / "x.png" and [p.name for p in out.parent.iterdir()] == ["x.png"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 2 * im.height  # three panels side by side


def test_write_heatmap_torch_and_shape_checks(tmp_path):
    torch = pytest.importorskip("torch")
    write_heatmap(tmp_path / "t.png", torch.rand(3, 16, 16), torch.rand(16, 16), torch.zeros(16, 16), image_norm="unit")
    assert (tmp_path / "t.png").exists()
    with pytest.raises(ValueError, match="anomaly_map"):
        write_heatmap(tmp_path / "bad.png", np.zeros((16, 16, 3)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="gt_mask"):
        write_heatmap(tmp_path / "bad.png", np.zeros((16, 16, 3)), np.zeros((16, 16)), np.zeros((8, 8)))
    assert not (tmp_path / "bad.png").exists()
