"""compute_metrics against scikit-learn and an independent slow AUPRO reference."""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from unimmad_cl.evaluation import metrics as M
from unimmad_cl.evaluation.metrics import METRIC_KEYS, UndefinedMetricWarning, compute_metrics


def sk_metrics(y, s):
    """The reference: scikit-learn AUROC, AP and F1-max from precision_recall_curve."""
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nanmax(2 * p * r / (p + r))
    return {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s), "f1max": f1}


def slow_aupro(masks, maps, limit=0.3):
    """Threshold sweep over every distinct score, regions looped one by one."""
    regions = []
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(maps[i][region] >= t) for i, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= limit
    x, y = fprs[keep], pros[keep]
    if x[-1] < limit:
        j = int(np.argmax(fprs > limit))
        y_lim = pros[j - 1] + (pros[j] - pros[j - 1]) * (limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1])
        x, y = np.append(x, limit), np.append(y, y_lim)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2 / limit)


def random_set(rng, n=6, size=24, levels=None, dtype=np.float64):
    """Blob-shaped masks on some images and maps correlated with them."""
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n // 2, n):
        for _ in range(rng.integers(1, 4)):
            cy, cx, ry, rx = rng.integers(0, size, 2).tolist() + rng.integers(1, 5, 2).tolist()
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    maps = rng.random((n, size, size)) + masks * rng.random((n, size, size)) * 1.5
    if levels:  # quantize to force ties, including ties between normal and anomalous pixels
        maps = np.round(maps * levels) / levels
    labels = masks.reshape(n, -1).any(1).astype(int)
    scores = maps.reshape(n, -1).max(1)
    return labels, scores, masks, maps.astype(dtype)


@pytest.mark.parametrize("seed", range(8))
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) if seed % 2 else rng.integers(0, 6, n).astype(float)  # odd: ties
    got = M.binary_metrics(y, s)
    ref = sk_metrics(y, s)
    for k in ref:
        assert abs(got[k] - ref[k]) < 1e-6, k


@pytest.mark.parametrize("levels", [None, 8])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pixel_metrics_match_sklearn_and_slow_aupro(levels, dtype):
    rng = np.random.default_rng(1)
    labels, scores, masks, maps = random_set(rng, levels=levels, dtype=dtype)
    got = compute_metrics(labels, scores, masks, maps)
    assert list(got) == list(METRIC_KEYS)
    assert all(type(v) is float for v in got.values())  # plain floats: JSON, registry rows
    img = sk_metrics(labels, scores)
    pix = sk_metrics(masks.ravel(), maps.ravel())
    for k in ("auroc", "ap", "f1max"):
        assert abs(got["i_" + k] - img[k]) < 1e-6
        assert abs(got["p_" + k] - pix[k]) < 1e-6
    assert abs(got["aupro"] - slow_aupro(masks, maps)) < 1e-3
    assert abs(got["aupro"] - slow_aupro(masks, maps)) < 1e-9  # both are exact


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_limits_match_slow_reference(limit):
    labels, scores, masks, maps = random_set(np.random.default_rng(2), n=8, size=20, levels=5)
    got = M.pixel_metrics(masks, maps, aupro_limit=limit)["aupro"]
    assert abs(got - slow_aupro(masks, maps, limit)) < 1e-9


def test_perfect_map_gives_one():
    _, _, masks, _ = random_set(np.random.default_rng(3))
    got = M.pixel_metrics(masks, masks.astype(np.float32))
    assert got["aupro"] == pytest.approx(1.0)
    assert got["p_auroc"] == got["p_ap"] == got["p_f1max"] == 1.0


def test_regions_of_different_size_weigh_equally():
    # A big region (96 px) scored 0.5, a small one (4 px) scored 1.0; exactly 10 % of the
    # normal pixels score 0.8. Curve: PRO 0.5 on FPR [0, 0.1], then 1 -> area 0.25 / 0.3.
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 2:14, 2:10] = True
    masks[0, 30:32, 30:32] = True
    maps = np.zeros((1, 40, 40))
    maps[0, 2:14, 2:10] = 0.5
    maps[0, 30:32, 30:32] = 1.0
    normal = np.flatnonzero(~masks.ravel())
    maps.ravel()[normal[: normal.size // 10]] = 0.8
    assert normal.size % 10 == 0
    assert M.pixel_metrics(masks, maps)["aupro"] == pytest.approx(0.25 / 0.3)


def test_regions_are_eight_connected():
    # Region 1: a diagonal pair (one component under 8-connectivity), half detected;
    # region 2: undetected. PRO at t=1 is (0.5 + 0) / 2 = 0.25 (4-connectivity: 1/3).
    # Normals all 0: the curve goes (0, p) -> (1, 1), so AUPRO = p + 0.15 (1 - p).
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    masks[0, 5, 5:7] = True
    maps = np.zeros((1, 8, 8))
    maps[0, 0, 0] = 1.0
    assert M.pixel_metrics(masks, maps)["aupro"] == pytest.approx(0.25 + 0.15 * 0.75)


def test_regions_do_not_span_images_and_survive_chunking(monkeypatch):
    labels, scores, masks, maps = random_set(np.random.default_rng(4), n=10, size=16)
    masks[5:] = True  # full-image regions touching across the image axis stay separate
    whole = M.pixel_metrics(masks, maps)
    monkeypatch.setattr(M, "_LABEL_CHUNK_PIXELS", 16 * 16 * 3)  # chunks of 3 images
    assert M.pixel_metrics(masks, maps) == whole
    assert whole["aupro"] == pytest.approx(slow_aupro(masks, maps), abs=1e-9)


def test_constant_scores():
    labels, _, masks, _ = random_set(np.random.default_rng(5))
    scores = np.full(labels.shape, 0.3)
    maps = np.full(masks.shape, 0.7, dtype=np.float32)
    got = compute_metrics(labels, scores, masks, maps)
    img, pix = sk_metrics(labels, scores), sk_metrics(masks.ravel(), maps.ravel())
    assert got["i_auroc"] == got["p_auroc"] == 0.5
    assert got["i_ap"] == pytest.approx(img["ap"]) and got["p_ap"] == pytest.approx(pix["ap"])
    assert got["p_f1max"] == pytest.approx(pix["f1max"])
    # One threshold: the curve is the diagonal (0, 0) -> (1, 1): mean PRO on [0, 0.3] = 0.15.
    assert got["aupro"] == pytest.approx(0.15)
    assert got["aupro"] == pytest.approx(slow_aupro(masks, maps))


def test_one_class_only_is_nan_with_warning_never_a_crash():
    _, _, masks, maps = random_set(np.random.default_rng(6))
    scores = np.arange(6.0)
    with pytest.warns(UndefinedMetricWarning, match="no normal"):
        got = compute_metrics(np.ones(6), scores, masks, maps)
    assert math.isnan(got["i_auroc"]) and got["i_ap"] == 1.0 and got["i_f1max"] == 1.0
    assert got["i_ap"] == average_precision_score(np.ones(6), scores)
    with pytest.warns(UndefinedMetricWarning, match="no anomalous"):
        got = compute_metrics(np.zeros(6), scores, masks, maps)
    assert all(math.isnan(got[k]) for k in ("i_auroc", "i_ap", "i_f1max"))
    assert not math.isnan(got["aupro"])


def test_no_anomalous_pixels_is_nan_with_warning():
    rng = np.random.default_rng(7)
    with pytest.warns(UndefinedMetricWarning, match="no anomalous pixels"):
        got = compute_metrics([0, 1, 0], [0.1, 0.9, 0.2], np.zeros((3, 4, 4), bool), rng.random((3, 4, 4)))
    assert got["i_auroc"] == 1.0
    assert all(math.isnan(got[k]) for k in ("p_auroc", "p_ap", "p_f1max", "aupro"))


def test_no_normal_pixels():
    with pytest.warns(UndefinedMetricWarning, match="no normal pixels"):
        got = M.pixel_metrics(np.ones((2, 3, 3), bool), np.random.default_rng(0).random((2, 3, 3)))
    assert math.isnan(got["p_auroc"]) and math.isnan(got["aupro"]) and got["p_ap"] == 1.0


def test_image_level_only_data():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_metrics([0, 1], [0.2, 0.4], None, None)
    assert got["i_auroc"] == 1.0 and math.isnan(got["aupro"])


def test_torch_inputs_match_numpy():
    torch = pytest.importorskip("torch")
    labels, scores, masks, maps = random_set(np.random.default_rng(8), dtype=np.float32)
    ref = compute_metrics(labels, scores, masks, maps)
    got = compute_metrics(
        torch.tensor(labels), torch.tensor(scores), torch.tensor(masks).float(), torch.tensor(maps)
    )
    assert got == ref
    half = compute_metrics(labels, scores, masks, torch.tensor(maps).bfloat16())
    assert abs(half["aupro"] - ref["aupro"]) < 0.05


def test_bad_inputs_raise():
    ok = dict(labels=[0, 1], scores=[0.1, 0.2], masks=np.zeros((2, 3, 3)), maps=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(**{**ok, "scores": [0.1, math.nan]})
    bad_map = np.zeros((2, 3, 3))
    bad_map[1, 1, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(**{**ok, "maps": bad_map, "masks": bad_map == 0})
    with pytest.raises(ValueError, match="differ"):
        compute_metrics(**{**ok, "scores": [0.1]})
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        compute_metrics(**{**ok, "maps": np.zeros((2, 3, 4))})
    with pytest.raises(ValueError, match="0/1"):
        compute_metrics(**{**ok, "labels": [0, 2]})
    with pytest.raises(ValueError, match="aupro_limit"):
        compute_metrics(**ok, aupro_limit=0)


def test_metrics_module_does_not_import_torch():
    code = "import sys, unimmad_cl.evaluation.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
