"""Anomaly-map overlays: one PNG per sample with three panels,
input | input + ground-truth contour | anomaly map (jet, alpha) over the input + contour.

matplotlib (Agg, no pyplot and so no global figure state) is imported only when a PNG is
written; torch is never imported (tensors are accepted by duck typing).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unimmad_cl.evaluation.metrics import to_numpy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_NORMS = ("imagenet", "minmax", "unit")


def displayable(image, image_norm="imagenet") -> np.ndarray:
    """An image as `[H, W, 3]` float in [0, 1] for display.

    image: `[3, H, W]`, `[H, W, 3]` or `[H, W]`, numpy or torch. image_norm says what the
    values are: a `(mean, std)` pair (normalized with it, as the model's colour and gray inputs
    are with `UniMMAD.normalization`: undone exactly), "imagenet" (ImageNet mean/std),
    "minmax" (any range, e.g. centred depth: stretched to [0, 1] with one affine map for all
    channels), "unit" (already in [0, 1]: clipped only).
    """
    x = to_numpy(image).astype(np.float32)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    elif x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [3, H, W], [H, W, 3] or [H, W], got {list(x.shape)}")
    x = np.broadcast_to(x, (*x.shape[:2], 3))
    if image_norm == "imagenet":
        image_norm = (IMAGENET_MEAN, IMAGENET_STD)
    if isinstance(image_norm, (tuple, list)):
        mean, std = image_norm
        x = x * np.array(std, np.float32) + np.array(mean, np.float32)
    elif image_norm == "minmax":
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    elif image_norm != "unit":
        raise ValueError(f"image_norm must be one of {IMAGE_NORMS}, got {image_norm!r}")
    return np.clip(x, 0.0, 1.0)


def write_heatmap(
    path: str | os.PathLike,
    image,
    anomaly_map,
    gt_mask=None,
    *,
    image_norm="imagenet",
    map_range: tuple[float, float] | None = None,
    alpha: float = 0.5,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the three-panel overlay PNG to `path` atomically (temp file + rename).

    image: the input (first modality), see `displayable` for shapes and `image_norm`;
    anomaly_map `[H, W]`; gt_mask `[H, W]` (bool/0-1) or None (no contour). map_range:
    the (low, high) of the colour scale; None stretches each map to its own min/max (pass
    one range for a whole test set to make colours comparable across samples).
    Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rgb = displayable(image, image_norm)
    amap = to_numpy(anomaly_map).astype(np.float32)
    if amap.shape != rgb.shape[:2]:
        raise ValueError(f"anomaly_map {list(amap.shape)} must match the image size {list(rgb.shape[:2])}")
    mask = None if gt_mask is None else to_numpy(gt_mask).astype(np.float32)
    if mask is not None and mask.shape != amap.shape:
        raise ValueError(f"gt_mask {list(mask.shape)} must match the anomaly map {list(amap.shape)}")
    lo, hi = map_range if map_range is not None else (float(amap.min()), float(amap.max()))

    height, width = rgb.shape[:2]
    panel = max(2.5, min(5.0, width / dpi))
    fig = Figure(figsize=(3 * panel + 0.6, panel * height / width + 0.5), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(rgb)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(rgb)
    axes[1].set_title("ground truth" if mask is not None else "ground truth: none", fontsize=9)
    axes[2].imshow(rgb)
    overlay = axes[2].imshow(amap, cmap="jet", alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
    axes[2].set_title("anomaly map", fontsize=9)
    if mask is not None and mask.any():
        for ax in axes[1:]:
            ax.contour(mask, levels=[0.5], colors="lime", linewidths=1.2)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(overlay, ax=axes[2], fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", bbox_inches="tight")
        os.replace(tmp, path)  # readers never see a half-written PNG
    finally:
        tmp.unlink(missing_ok=True)
    return path
