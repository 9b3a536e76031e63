"""Perlin gradient noise in numpy (the smooth random fields DRAEM-style defect masks are cut from).

Classic 2-D Perlin noise: a lattice of random unit gradients, the dot product of each corner's
gradient with the offset to the pixel, blended with the quintic fade 6t^5 - 15t^4 + 10t^3.
Everything is drawn from the `numpy.random.Generator` passed in, so a seeded generator gives
the same field on every machine.
"""

from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin(shape: tuple[int, int], periods: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One octave of Perlin noise, float32 `[H, W]` in about [-1, 1] (0 on the lattice points).

    `periods` = (rows, cols): lattice cells across the image; larger means finer blobs.
    """
    h, w = shape
    py, px = max(1, int(periods[0])), max(1, int(periods[1]))
    angles = rng.uniform(0.0, 2.0 * np.pi, (py + 1, px + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = (np.arange(h) + 0.5) * (py / h)
    x = (np.arange(w) + 0.5) * (px / w)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    r0, r1 = y0[:, None], y0[:, None] + 1
    c0, c1 = x0[None, :], x0[None, :] + 1

    def corner(r, c, dy, dx):
        return gy[r, c] * dy + gx[r, c] * dx

    n00 = corner(r0, c0, fy, fx)
    n01 = corner(r0, c1, fy, fx - 1.0)
    n10 = corner(r1, c0, fy - 1.0, fx)
    n11 = corner(r1, c1, fy - 1.0, fx - 1.0)
    u, v = _fade(fx), _fade(fy)
    top = n00 + u * (n01 - n00)
    bottom = n10 + u * (n11 - n10)
    return (np.sqrt(2.0) * (top + v * (bottom - top))).astype(np.float32)


def fractal(
    shape: tuple[int, int],
    periods: tuple[int, int],
    rng: np.random.Generator,
    octaves: int = 3,
    persistence: float = 0.5,
) -> np.ndarray:
    """Sum of `octaves` Perlin octaves (periods doubling, amplitude x`persistence` each),
    rescaled to float32 `[H, W]` in [0, 1] (min 0, max 1)."""
    total = np.zeros(shape, dtype=np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        scale = 2**octave
        total += amplitude * perlin(shape, (periods[0] * scale, periods[1] * scale), rng)
        amplitude *= persistence
    low, high = float(total.min()), float(total.max())
    return ((total - low) / max(high - low, 1e-6)).astype(np.float32)
