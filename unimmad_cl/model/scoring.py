"""Anomaly maps and image scores (model.md, "Inference")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unimmad_cl.model.losses import cosine_distance


def anomaly_map(
    priors: list[torch.Tensor],
    decoded: list[torch.Tensor],
    sample_index: torch.Tensor,
    batch_size: int,
    image_size: tuple[int, int],
) -> torch.Tensor:
    """Root-sum-of-squares of `1 − cos(p, d)` over every scale and every modality of a sample.

    priors, decoded: per scale `[n, C_l, h_l, w_l]` for n (sample, modality) pairs →
    unblurred maps `[B, H, W]`.
    """
    total = None
    for p, d in zip(priors, decoded):
        a = cosine_distance(p, d).unsqueeze(1)
        # align_corners=True follows the reference implementations of RD4AD-style models.
        a = F.interpolate(a, size=image_size, mode="bilinear", align_corners=True)[:, 0]
        total = a.pow(2) if total is None else total + a.pow(2)
    per_sample = total.new_zeros(batch_size, *image_size).index_add_(0, sample_index, total)
    return per_sample.sqrt()


def gaussian_kernel(sigma: float, size: int) -> torch.Tensor:
    """Normalized 1-D Gaussian `[size]`."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, size: int = 15) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders: `[B, H, W]` → `[B, H, W]`."""
    k = gaussian_kernel(sigma, size).to(maps)
    x = maps.unsqueeze(1)
    pad = size // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, size))
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, size, 1))
    return x[:, 0]


def image_score(maps: torch.Tensor, top_fraction: float = 0.001) -> torch.Tensor:
    """Mean of the top ⌊H·W·top_fraction⌋ pixels (at least one): `[B, H, W]` → `[B]`."""
    flat = maps.flatten(1)
    k = max(1, math.floor(flat.shape[1] * top_fraction))
    return flat.topk(k, dim=1).values.mean(dim=1)
