"""Drawing primitives for the synthetic benchmark: noise, shapes, thin curves.

All functions take an explicit `numpy.random.Generator` (no global RNG state) and work in
pixel units of a square `size` x `size` image. Arrays are float64 `[size, size]` unless said.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(yy, xx)`, each `[size, size]`."""
    axis = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(axis, axis, indexing="ij")


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise with correlation length `sigma` px."""
    field = gaussian_filter(rng.standard_normal((size, size)), max(sigma, 0.3), mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def ellipse_radius(size: int, center, axes, angle: float = 0.0) -> np.ndarray:
    """Normalized elliptic radius: < 1 inside the ellipse (`center`, `axes` in px, `angle` rad)."""
    yy, xx = grid(size)
    dy, dx = yy - center[0], xx - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    return np.sqrt((u / axes[1]) ** 2 + (v / axes[0]) ** 2)


def blob(rng: np.random.Generator, size: int, center, radius: float, roughness: float = 0.35) -> np.ndarray:
    """Irregular filled blob (bool) around `center`; always contains the centre pixel."""
    wobble = roughness * smooth_noise(rng, size, max(radius / 2, 1.0))
    inside = ellipse_radius(size, center, (radius, radius)) + wobble * 0.5 < 1.0
    cy, cx = (int(np.clip(c, 0, size - 1)) for c in center)
    inside[cy, cx] = True
    return inside


def gaussian_spot(size: int, center, sigma: float) -> np.ndarray:
    """Gaussian bump with peak 1 at `center`."""
    yy, xx = grid(size)
    return np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * sigma**2))


def curve(rng: np.random.Generator, size: int, start, length: float, angle: float, wiggle: float = 0.15) -> np.ndarray:
    """A 1-pixel-wide random-walk curve (bool) of `length` px from `start` at `angle` rad."""
    line = np.zeros((size, size), dtype=bool)
    y, x = float(start[0]), float(start[1])
    for _ in range(int(max(length, 2) * 2)):
        yi, xi = int(round(y)), int(round(x))
        if 0 <= yi < size and 0 <= xi < size:
            line[yi, xi] = True
        angle += rng.normal(0.0, wiggle)
        y, x = y + 0.5 * np.sin(angle), x + 0.5 * np.cos(angle)
    if not line.any():  # a start outside the image still leaves a mark at the clipped start
        line[int(np.clip(start[0], 0, size - 1)), int(np.clip(start[1], 0, size - 1))] = True
    return line


def dilate(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    return binary_dilation(mask, iterations=pixels) if pixels > 0 else mask


def soften(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Float version of a bool mask with blurred edges, scaled so that its peak is 1."""
    soft = gaussian_filter(mask.astype(np.float64), sigma)
    return soft / max(soft.max(), 1e-12)


def point_inside(rng: np.random.Generator, region: np.ndarray) -> tuple[float, float]:
    """A uniformly chosen pixel centre of the bool `region` (must be non-empty)."""
    ys, xs = np.nonzero(region)
    pick = rng.integers(len(ys))
    return float(ys[pick]) + 0.5, float(xs[pick]) + 0.5


def shade(height: np.ndarray, light=(0.5, -0.6, 0.62), relief: float = 1.0) -> np.ndarray:
    """Lambertian shading in [0, 1] of a height field (px units scaled by `relief`)."""
    gy, gx = np.gradient(height * relief)
    normal = np.stack([-gx, -gy, np.ones_like(height)])
    normal /= np.linalg.norm(normal, axis=0, keepdims=True)
    light = np.asarray(light) / np.linalg.norm(light)
    return np.clip(np.tensordot(light, normal, axes=1), 0.0, 1.0)
