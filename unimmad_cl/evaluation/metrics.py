"""Anomaly-detection metrics, exact and vectorized (numpy + scipy.ndimage, no torch import).

Image level: AUROC, AP, F1-max over the image scores. Pixel level: AUROC, AP, F1-max over all
pixels of all maps, and AUPRO (MVTec 3D-AD convention) integrated up to a false-positive
rate `aupro_limit` and divided by it. All values are fractions in [0, 1].

How it stays exact and fast. Every curve is evaluated at *distinct* score values, tied scores
grouped as scikit-learn does. Recall, PRO and the positive-class counts change only at the
distinct scores of the anomalous (positive) pixels, and between two of those only false
positives are added, which (for AUROC/AP/F1-max) cannot improve any figure and (for the PRO
curve) only extends a horizontal segment. So the curves are fully determined by:

* one sort of the positive scores (descending; a few % of the pixels), carrying the
  per-region PRO weights with them, and
* one in-place sort of the negative scores, queried with `searchsorted` at the distinct
  positive scores for "how many negatives score >= t" and "... > t" (both needed for ties).

No threshold loop, no per-region loop, no int64 index array over all pixels: the extra
memory is one copy of the negative scores (in the maps' dtype) plus O(positives).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

METRIC_KEYS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")

# Connected-component labelling is done this many pixels at a time, to bound the int32
# label buffer scipy allocates (16 MiB) whatever the size of the test set.
_LABEL_CHUNK_PIXELS = 1 << 22


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is undefined for the given data (e.g. one class only) and was set to NaN."""


@dataclass(frozen=True)
class _PositiveCurve:
    """Counts at each distinct positive score `t` (descending), shapes `[K]`.

    `tp`: positives scoring >= t; `fp_ge` / `fp_gt`: negatives scoring >= t / > t;
    `n_pos`, `n_neg`: class sizes.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp_ge: np.ndarray
    fp_gt: np.ndarray
    n_pos: int
    n_neg: int


def to_numpy(x) -> np.ndarray:
    """A numpy view/copy of a numpy array, a list or a torch tensor (duck-typed, any device).

    Torch is never imported here: the `report` command uses this module without torch.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        # numpy has no bfloat16; half-precision maps are widened once, here.
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _as_scores(x: np.ndarray) -> np.ndarray:
    """Keep float32/float64 as given (ties must stay those of the caller); widen the rest."""
    if x.dtype in (np.float32, np.float64):
        return x
    if x.dtype == np.float16:
        return x.astype(np.float32)
    return x.astype(np.float64)


def _as_binary(x: np.ndarray, name: str) -> np.ndarray:
    """Bool array from bool, {0, 1} integers, or float masks (> 0.5 is anomalous)."""
    if x.dtype == np.bool_:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x > 0.5
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must hold 0/1 values, got values in [{x.min()}, {x.max()}]")
    return x.astype(bool)


def _check_finite(x: np.ndarray, name: str) -> None:
    if x.size and np.isnan(x).any():
        raise ValueError(f"{name} contains NaN")


def _warn_undefined(what: str) -> None:
    warnings.warn(f"{what}; set to NaN", UndefinedMetricWarning, stacklevel=3)


def _positive_curve(pos_desc: np.ndarray, neg_asc: np.ndarray) -> tuple[_PositiveCurve, np.ndarray]:
    """Counts at the distinct positive scores.

    pos_desc: `[P]` positive scores sorted descending; neg_asc: `[Nn]` negative scores sorted
    ascending. Returns the curve and `ends` `[K]`, the index in `pos_desc` of the last
    element of each group of equal scores (so `ends + 1` positives score >= that value).
    """
    # `!=` rather than `np.diff(...) != 0`: inf - inf is NaN, but inf == inf.
    ends = np.append(np.flatnonzero(pos_desc[1:] != pos_desc[:-1]), pos_desc.size - 1)
    thresholds = pos_desc[ends]
    n_neg = neg_asc.size
    curve = _PositiveCurve(
        thresholds=thresholds,
        tp=ends + 1,
        fp_ge=n_neg - np.searchsorted(neg_asc, thresholds, side="left"),
        fp_gt=n_neg - np.searchsorted(neg_asc, thresholds, side="right"),
        n_pos=pos_desc.size,
        n_neg=n_neg,
    )
    return curve, ends


def _auroc(c: _PositiveCurve) -> float:
    """Mann-Whitney AUROC with ties counted 1/2, in exact integer arithmetic.

    Equal to the trapezoidal area under the tie-grouped ROC curve (scikit-learn's value).
    """
    pos_in_group = np.diff(c.tp, prepend=0)
    neg_below = c.n_neg - c.fp_ge
    neg_tied = c.fp_ge - c.fp_gt
    twice_u = int(np.dot(pos_in_group, 2 * neg_below + neg_tied))
    return twice_u / (2 * c.n_pos * c.n_neg)


def _average_precision(c: _PositiveCurve) -> float:
    """sum_k (R_k - R_{k-1}) * P_k: recall only moves at distinct positive scores."""
    precision = c.tp / (c.tp + c.fp_ge)
    return float(np.dot(np.diff(c.tp, prepend=0), precision)) / c.n_pos


def _f1_max(c: _PositiveCurve) -> float:
    """max_t 2 TP / (TP + FP + P); for a given TP the highest threshold (least FP) is best."""
    return float(np.max(2 * c.tp / (c.tp + c.fp_ge + c.n_pos)))


def _ranking_metrics(pos: np.ndarray, neg: np.ndarray, level: str) -> dict[str, float]:
    """AUROC, AP, F1-max of positives `pos` `[P]` against negatives `neg` `[Nn]`.

    `neg` is sorted in place (callers pass a private copy). Undefined values are NaN with an
    `UndefinedMetricWarning`: AUROC needs both classes, AP and F1-max need positives.
    """
    if pos.size == 0:
        _warn_undefined(f"{level}: no anomalous (positive) examples, AUROC/AP/F1-max undefined")
        return {"auroc": math.nan, "ap": math.nan, "f1max": math.nan}
    neg.sort()
    curve, _ = _positive_curve(np.sort(pos)[::-1], neg)
    if curve.n_neg == 0:
        _warn_undefined(f"{level}: no normal (negative) examples, AUROC undefined")
        auroc = math.nan
    else:
        auroc = _auroc(curve)
    return {"auroc": auroc, "ap": _average_precision(curve), "f1max": _f1_max(curve)}


def binary_metrics(y_true, y_score) -> dict[str, float]:
    """AUROC, AP and F1-max of scores `y_score` `[N]` for binary labels `y_true` `[N]`.

    Returns `{"auroc", "ap", "f1max"}`; numpy arrays or torch tensors accepted.
    """
    y_true = _as_binary(to_numpy(y_true).ravel(), "labels")
    y_score = _as_scores(to_numpy(y_score).ravel())
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} differ in length")
    _check_finite(y_score, "scores")
    return _ranking_metrics(y_score[y_true], y_score[~y_true], "image level")


def _split_pixels(masks: np.ndarray, maps: np.ndarray):
    """Separate normal and anomalous pixels and label the ground-truth regions.

    masks `[N, H, W]` bool, maps `[N, H, W]`. Returns `neg` `[Nn]` (a new array, unsorted),
    `pos` `[P]`, `region` `[P]` int32 (region index 0..R-1 of each anomalous pixel; regions
    are 8-connected components, never spanning two images) and `region_size` `[R]`.
    """
    from scipy import ndimage  # imported here: only pixel metrics need it

    # 8-connectivity within each image, none across the image axis: one labelling call per
    # chunk of images instead of one per image.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    n_pos_total = int(np.count_nonzero(masks))
    neg = np.empty(masks.size - n_pos_total, dtype=maps.dtype)
    pos_parts, region_parts = [], []
    n_filled = n_regions = 0
    step = max(1, _LABEL_CHUNK_PIXELS // max(1, masks[0].size))
    for start in range(0, masks.shape[0], step):
        m, s = masks[start : start + step], maps[start : start + step]
        normal = s[~m]
        neg[n_filled : n_filled + normal.size] = normal
        n_filled += normal.size
        if m.any():
            labels, n = ndimage.label(m, structure=structure)
            pos_parts.append(s[m])
            region_parts.append(labels[m] + np.int32(n_regions - 1))  # int32: half the memory
            n_regions += n
    if not pos_parts:
        return neg, np.empty(0, dtype=maps.dtype), np.empty(0, np.int32), np.empty(0, np.int64)
    region = np.concatenate(region_parts)
    return neg, np.concatenate(pos_parts), region, np.bincount(region, minlength=n_regions)


def _area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under the polyline through `(x, y)` (`x` nondecreasing) over
    `[x[0], limit]`, the polyline interpolated linearly at `x = limit`."""
    k = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    area = float(np.sum(np.diff(x[:k]) * (y[1:k] + y[: k - 1])) / 2)
    if k < x.size and x[k - 1] < limit:
        y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += (limit - x[k - 1]) * (y[k - 1] + y_limit) / 2
    return area


def _aupro(curve: _PositiveCurve, pro: np.ndarray, limit: float) -> float:
    """Normalized area under PRO(FPR) for FPR in [0, limit].

    `pro` `[K]`: PRO at each distinct positive score of `curve`. Between two distinct
    positive scores only normal pixels cross the threshold, so the exact curve (one point
    per distinct score of any pixel) reduces to two points per positive score t: just above
    t (FPR counts negatives > t, PRO of the previous t) and at t (negatives >= t, PRO(t)).
    The segment joining them is diagonal only when normal pixels tie with t.
    """
    fpr_gt = curve.fp_gt / curve.n_neg
    fpr_ge = curve.fp_ge / curve.n_neg
    pro_before = np.concatenate([[0.0], pro[:-1]])
    x = np.concatenate([[0.0], np.stack([fpr_gt, fpr_ge], axis=1).ravel(), [1.0]])
    y = np.concatenate([[0.0], np.stack([pro_before, pro], axis=1).ravel(), [pro[-1]]])
    return float(_area_to_limit(x, y, limit) / limit)


def pixel_metrics(masks, maps, aupro_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max and AUPRO over all pixels of a test set.

    masks `[N, H, W]` ground truth (bool, 0/1, or float > 0.5), maps `[N, H, W]` anomaly
    scores; numpy or torch. AUPRO: PRO(t) = mean over ground-truth regions (8-connected
    components, all images pooled, each region weighted equally) of the fraction of the
    region scoring >= t; FPR(t) = fraction of all normal pixels scoring >= t; the exact
    PRO(FPR) polyline is integrated (trapezoid) from FPR 0 to `aupro_limit`, interpolated at
    the limit, and divided by `aupro_limit`. Returns `{"p_auroc", "p_ap", "p_f1max", "aupro"}`.
    """
    if not 0 < aupro_limit <= 1:
        raise ValueError(f"aupro_limit must be in (0, 1], got {aupro_limit}")
    masks = _as_binary(to_numpy(masks), "masks")
    maps = _as_scores(to_numpy(maps))
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be [N, H, W]")
    neg, pos, region, region_size = _split_pixels(masks, maps)
    _check_finite(pos, "maps")
    nan = {"p_auroc": math.nan, "p_ap": math.nan, "p_f1max": math.nan, "aupro": math.nan}
    if pos.size == 0:
        _warn_undefined("pixel level: no anomalous pixels, pixel metrics and AUPRO undefined")
        return nan
    neg.sort()  # in place: `neg` is our own copy; NaNs sort last
    if neg.size:
        _check_finite(neg[-1:], "maps")
    # The one global sort of the anomalous pixels; each carries its PRO weight
    # 1 / (#regions * |its region|), so PRO(t) is a cumulative sum along this order.
    order = np.argsort(pos, kind="stable")[::-1]
    pos_desc = pos[order]
    weight = 1.0 / (region_size.size * region_size.astype(np.float64))
    curve, ends = _positive_curve(pos_desc, neg)
    pro = np.cumsum(weight[region[order]])[ends]
    metrics = {"p_ap": _average_precision(curve), "p_f1max": _f1_max(curve)}
    if curve.n_neg == 0:
        _warn_undefined("pixel level: no normal pixels, pixel AUROC and AUPRO undefined")
        return {**nan, **metrics}
    return {**metrics, "p_auroc": _auroc(curve), "aupro": _aupro(curve, pro, aupro_limit)}


def compute_metrics(labels, scores, masks, maps, aupro_limit: float = 0.3) -> dict[str, float]:
    """All image- and pixel-level metrics of a test set, as fractions in [0, 1].

    labels `[N]` (0 normal, 1 anomalous), scores `[N]` image scores, masks `[N, H, W]`
    ground truth (bool), maps `[N, H, W]` anomaly maps (float); numpy arrays or torch
    tensors. `masks` and `maps` may both be None (image-level-only data): pixel metrics are
    then NaN. Returns a dict with the keys of `METRIC_KEYS`. Undefined metrics (one class
    only, no anomalous pixels) are NaN with an `UndefinedMetricWarning`; NaN inputs raise
    `ValueError`.
    """
    image = binary_metrics(labels, scores)
    out = {"i_auroc": image["auroc"], "i_ap": image["ap"], "i_f1max": image["f1max"]}
    if masks is None and maps is None:
        return {**out, "p_auroc": math.nan, "p_ap": math.nan, "p_f1max": math.nan, "aupro": math.nan}
    if masks is None or maps is None:
        raise ValueError("masks and maps must be given together (or both None)")
    n = to_numpy(labels).size
    if len(masks) != n:
        raise ValueError(f"{len(masks)} masks for {n} labels")
    out.update(pixel_metrics(masks, maps, aupro_limit))
    return {key: out[key] for key in METRIC_KEYS}
