"""Synthetic defects on real photographs, as the anomaly-synthesis literature makes them.

CutPaste / DRAEM-style: a foreign photo pasted under a Perlin-noise mask, thin curved
scratches, smooth stains, dark holes with shading, hue/saturation shifts in a Perlin region,
small bright spots; for depth, dents and bumps (depth only) and impacts (depth and colour).

A defect is `defect(scene, rng) -> Change`. It proposes new pixels and says exactly where
they apply (`image_support`, `depth_support`); the caller keeps the clean pixels everywhere
else, so the ground-truth mask (the union of the supports) is exactly where the sample
differs from its clean version. Shapes: images float32 `[H, W, C]` (C = 1 gray or 3 RGB) in
[0, 1]; depth float32 `[H, W]` in metres, 0 = no measurement; masks bool `[H, W]`.
Sizes are fractions of the image area, so defects scale with the output size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from unimmad_cl.data.synth.perlin import fractal, perlin

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Scene:
    """The clean sample a defect is drawn on.

    image: float32 `[H, W, C]` in [0, 1]. centres: bool `[H, W]`, where a defect may be
    centred (on the object). paintable: bool `[H, W]`, where a defect may change pixels (e.g.
    the fundus disc, not the black surround). depth: float32 `[H, W]` metres or None.
    foreign: `foreign(rng) -> float32 [H, W, C]`, a crop of some other photo (for patches).
    """

    image: np.ndarray
    centres: np.ndarray
    paintable: np.ndarray
    depth: np.ndarray | None = None
    foreign: Callable[[np.random.Generator], np.ndarray] | None = None


@dataclass(frozen=True)
class Change:
    """Proposed pixels and where they apply (None: that modality is untouched)."""

    image: np.ndarray | None = None
    image_support: np.ndarray | None = None
    depth: np.ndarray | None = None
    depth_support: np.ndarray | None = None

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The ground truth: every pixel this change touches, bool `[H, W]`."""
        out = np.zeros(shape, dtype=bool)
        for support in (self.image_support, self.depth_support):
            if support is not None:
                out |= support
        return out


# --------------------------------------------------------------------------- geometry


def luminance(image: np.ndarray) -> np.ndarray:
    """float32 `[H, W]` luma of `[H, W, C]`."""
    return image[:, :, 0] if image.shape[2] == 1 else image @ LUMA


def pick_centre(centres: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random pixel centre `(y, x)` among the True pixels of `centres` (any pixel if none)."""
    candidates = np.flatnonzero(centres)
    if candidates.size == 0:
        candidates = np.arange(centres.size)
    y, x = divmod(int(candidates[rng.integers(candidates.size)]), centres.shape[1])
    return y + 0.5, x + 0.5


def ellipse_distance(
    shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float
) -> np.ndarray:
    """Normalized elliptic radius float32 `[H, W]`: 0 at `centre`, 1 on the ellipse."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32) + 0.5
    dy, dx = yy - centre[0], xx - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    return np.sqrt((u / radii[1]) ** 2 + (v / radii[0]) ** 2).astype(np.float32)


def blob_distance(
    shape: tuple[int, int], rng: np.random.Generator, centres: np.ndarray, area: tuple[float, float],
    roughness: float = 0.3,
) -> np.ndarray:
    """An irregular blob as a distance field float32 `[H, W]` (< 1 inside).

    Its ellipse covers a fraction of the image area drawn from `area`; the outline is
    perturbed by low-frequency Perlin noise of relative amplitude `roughness`.
    """
    h, w = shape
    target = rng.uniform(*area) * h * w
    ratio = rng.uniform(0.55, 1.0)
    r_major = np.sqrt(target / (np.pi * ratio))
    centre = pick_centre(centres, rng)
    dist = ellipse_distance(shape, centre, (r_major * ratio, r_major), rng.uniform(0, np.pi))
    cells = max(2, int(round(6 * max(h, w) / (4 * r_major))))
    wobble = perlin(shape, (max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))), rng)
    return dist * (1.0 + roughness * wobble)


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _periods(shape: tuple[int, int], cells: float) -> tuple[int, int]:
    """Perlin lattice periods giving cells of about `max(H, W) / cells` px in both directions."""
    h, w = shape
    scale = cells / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def polyline_distance(shape: tuple[int, int], points: np.ndarray, reach: float) -> np.ndarray:
    """Distance float32 `[H, W]` from each pixel centre to the polyline through `points`
    `[N, 2]` (y, x); computed only within `reach` px of the curve's bounding box (inf beyond)."""
    best = np.full(shape, np.inf, dtype=np.float32)
    top, left = np.floor(points.min(axis=0) - reach).astype(int)
    bottom, right = np.ceil(points.max(axis=0) + reach).astype(int)
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, shape[0]), min(right, shape[1])
    if top >= bottom or left >= right:
        return best
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32) + 0.5
    window = best[top:bottom, left:right]
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        dy, dx = y1 - y0, x1 - x0
        length2 = max(dy * dy + dx * dx, 1e-9)
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / length2, 0.0, 1.0)
        window[...] = np.minimum(window, np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return best


def bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 32) -> np.ndarray:
    """Points `[n, 2]` on the quadratic Bezier curve p0 -> p2 with control point p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _contrasting(colours: tuple, reference: np.ndarray) -> np.ndarray:
    """The colour of `colours` farthest from `reference` `[C]` (keeps a stain visible)."""
    options = np.asarray(colours, dtype=np.float32).reshape(len(colours), -1)
    if options.shape[1] != reference.shape[0]:  # RGB colours on a gray image: their luma
        options = (options @ LUMA)[:, None] if options.shape[1] == 3 else options
    return options[int(np.argmax(np.abs(options - reference).sum(axis=1)))]


def _blend(image: np.ndarray, target, alpha: np.ndarray) -> np.ndarray:
    """image + alpha (target - image); `alpha` `[H, W]`, `target` `[C]` or `[H, W, C]`."""
    return image + alpha[:, :, None] * (np.asarray(target, dtype=np.float32) - image)


# --------------------------------------------------------------------------- image defects


def foreign_patch(scene: Scene, rng: np.random.Generator, area=(0.03, 0.10)) -> Change:
    """DRAEM-style: another photo shows through a Perlin-noise mask near one spot.

    The mask is a thresholded fractal Perlin field inside an irregular blob; the patch is
    blended with opacity 0.7-1 (so some of the underlying texture may show through).
    """
    shape = scene.image.shape[:2]
    envelope = blob_distance(shape, rng, scene.centres, (area[0] * 2.0, area[1] * 2.0), roughness=0.2) < 1.0
    field = fractal(shape, _periods(shape, rng.uniform(4, 9)), rng, octaves=3)
    support = envelope & (field > np.quantile(field[envelope], 0.45) if envelope.any() else envelope)
    support &= scene.paintable
    opacity = rng.uniform(0.7, 1.0)
    foreign = scene.foreign(rng)
    return Change(image=_blend(scene.image, foreign, np.full(shape, opacity, np.float32)), image_support=support)


def scratch(scene: Scene, rng: np.random.Generator) -> Change:
    """1-3 thin curved strokes, bright (scraped) or dark, 2-3.5 px wide at 256 px."""
    image = scene.image
    h, w = image.shape[:2]
    side = min(h, w)
    width = rng.uniform(2.0, 3.5) * side / 256.0
    start = np.array(pick_centre(scene.centres, rng))
    heading = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.3, 0.55) * side
    support = np.zeros((h, w), dtype=bool)
    for stroke in range(int(rng.integers(1, 4))):
        offset = np.array([-np.sin(heading), np.cos(heading)]) * stroke * rng.uniform(4, 10) * side / 256.0
        direction = np.array([np.sin(heading), np.cos(heading)]) * length * rng.uniform(0.7, 1.0)
        p0 = start + offset + direction * rng.uniform(-0.5, -0.3)
        p2 = p0 + direction
        bend = np.array([-direction[1], direction[0]]) * rng.uniform(-0.3, 0.3)
        p1 = (p0 + p2) / 2 + bend
        support |= polyline_distance((h, w), bezier(p0, p1, p2, n=24), width) < width / 2
    support &= scene.paintable
    under = float(luminance(image)[support].mean()) if support.any() else 0.5
    tone = rng.uniform(0.85, 0.97) if under < 0.55 else rng.uniform(0.03, 0.15)
    grain = 0.75 + 0.2 * fractal((h, w), _periods((h, w), 24), rng, octaves=1)
    return Change(image=_blend(image, np.full(image.shape[2], tone, np.float32), grain), image_support=support)


def stain(
    scene: Scene, rng: np.random.Generator, colours=((0.25, 0.16, 0.08), (0.85, 0.82, 0.72)), area=(0.03, 0.10)
) -> Change:
    """A smooth blob tinted towards a stain colour (the one of `colours` most unlike the
    surface under it), stronger in the middle, with a faint drying rim."""
    image = scene.image
    shape = image.shape[:2]
    dist = blob_distance(shape, rng, scene.centres, area, roughness=0.35)
    support = (dist < 1.0) & scene.paintable
    reference = image[support].mean(axis=0) if support.any() else image.reshape(-1, image.shape[2]).mean(axis=0)
    colour = _contrasting(colours, reference)
    strength = rng.uniform(0.5, 0.75)
    inner = smoothstep((1.0 - dist) / 0.5)
    rim = np.exp(-(((1.0 - dist) / 0.08) ** 2))
    texture = 0.85 + 0.15 * fractal(shape, _periods(shape, 12), rng, octaves=2)
    alpha = np.clip(strength * (0.45 + 0.55 * inner + 0.3 * rim) * texture, 0.0, 0.95).astype(np.float32)
    return Change(image=_blend(image, colour, alpha), image_support=support)


def hole(scene: Scene, rng: np.random.Generator, bright: bool = False, area=(0.02, 0.06)) -> Change:
    """A hole: a dark pit shaded by a light from one side with a lit far wall, showing a
    trace of the texture; `bright` makes it a tear showing a bright background (microscopy)."""
    image = scene.image
    shape = image.shape[:2]
    dist = blob_distance(shape, rng, scene.centres, area, roughness=0.25)
    support = (dist < 1.0) & scene.paintable
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    ys, xs = np.nonzero(support) if support.any() else (yy.ravel()[:1], xx.ravel()[:1])
    cy, cx = float(ys.mean()), float(xs.mean())
    radius = max(float(np.sqrt(max(support.sum(), 1) / np.pi)), 1.0)
    side = np.clip(((yy - cy) * np.sin(light) + (xx - cx) * np.cos(light)) / radius, -1.0, 1.0)
    wall = np.exp(-(((1.0 - dist) / 0.25) ** 2))
    if bright:
        level = rng.uniform(0.86, 0.95) + 0.03 * side - 0.12 * wall * (side < 0)
        target = np.repeat(level[:, :, None], image.shape[2], axis=2)
        return Change(image=_blend(image, target, np.full(shape, 0.9, np.float32)), image_support=support)
    level = rng.uniform(0.03, 0.09) + 0.07 * (side + 1.0) / 2.0 + 0.3 * wall * np.clip(side, 0.0, 1.0)
    target = level[:, :, None] + 0.15 * image
    return Change(image=np.clip(target, 0.0, 1.0), image_support=support)


def color_shift(scene: Scene, rng: np.random.Generator, area=(0.04, 0.12)) -> Change:
    """Hue rotated by 0.05-0.12 turns and saturation raised, in a Perlin-shaped region."""
    from skimage.color import hsv2rgb, rgb2hsv

    image = scene.image
    shape = image.shape[:2]
    envelope = blob_distance(shape, rng, scene.centres, (area[0] * 1.6, area[1] * 1.6), roughness=0.2)
    field = fractal(shape, _periods(shape, rng.uniform(3, 6)), rng, octaves=2)
    inside = envelope < 1.0
    support = inside & (field > np.quantile(field[inside], 0.3) if inside.any() else inside)
    support &= scene.paintable
    hsv = rgb2hsv(image)
    shift = rng.uniform(0.05, 0.12) * rng.choice([-1.0, 1.0])
    hsv[:, :, 0] = (hsv[:, :, 0] + shift) % 1.0
    hsv[:, :, 1] += (1.0 - hsv[:, :, 1]) * rng.uniform(0.15, 0.35)  # grays get a tint too
    shifted = hsv2rgb(hsv).astype(np.float32)
    alpha = (0.65 + 0.35 * smoothstep((1.0 - envelope) / 0.4)).astype(np.float32)
    return Change(image=_blend(image, shifted, alpha), image_support=support)


def spots(scene: Scene, rng: np.random.Generator, colour=(0.97, 0.88, 0.45)) -> Change:
    """A cluster of small bright spots (fundus exudates): a fine Perlin field thresholded high
    inside a region."""
    image = scene.image
    shape = image.shape[:2]
    region = blob_distance(shape, rng, scene.centres, (0.06, 0.14), roughness=0.3) < 1.0
    field = fractal(shape, _periods(shape, rng.uniform(14, 22)), rng, octaves=2)
    support = region & (field > np.quantile(field[region], 0.8) if region.any() else region)
    support &= scene.paintable
    target = np.asarray(colour, dtype=np.float32)[: image.shape[2]]
    return Change(image=_blend(image, target, np.full(shape, rng.uniform(0.7, 0.85), np.float32)), image_support=support)


# --------------------------------------------------------------------------- depth defects


def _relief(scene: Scene, rng: np.random.Generator, area) -> tuple[np.ndarray, np.ndarray]:
    """A smooth bump profile float32 `[H, W]` in [0, 1] and its support (profile > 0.05, valid depth)."""
    dist = blob_distance(scene.depth.shape, rng, scene.centres, area, roughness=0.15)
    profile = np.clip(1.0 - dist**2, 0.0, 1.0) ** 2
    return profile.astype(np.float32), (profile > 0.05) & (scene.depth > 0) & scene.paintable


def dent(scene: Scene, rng: np.random.Generator, sign: float = 1.0, area=(0.03, 0.09)) -> Change:
    """Depth only: the surface pushed away from the camera (sign +1) or towards it (-1, a
    bump) by 2-5 cm at the centre, smoothly; the colour image is untouched."""
    profile, support = _relief(scene, rng, area)
    depth = scene.depth + np.float32(sign * rng.uniform(0.02, 0.05)) * profile
    return Change(depth=depth.astype(np.float32), depth_support=support)


def bump(scene: Scene, rng: np.random.Generator) -> Change:
    """Depth only: a dent towards the camera."""
    return dent(scene, rng, sign=-1.0)


def impact(scene: Scene, rng: np.random.Generator, colour=(0.55, 0.5, 0.45), area=(0.03, 0.08)) -> Change:
    """Depth and colour: a dent (1.5-4 cm) whose paint is scuffed towards a dull gray-brown."""
    profile, support = _relief(scene, rng, area)
    depth = scene.depth + np.float32(rng.uniform(0.015, 0.04)) * profile
    shape = scene.depth.shape
    grain = fractal(shape, _periods(shape, 20), rng, octaves=2)
    alpha = np.clip(0.45 + 0.4 * profile + 0.2 * (grain - 0.5), 0.2, 0.95).astype(np.float32)
    image = _blend(scene.image, np.asarray(colour, np.float32)[: scene.image.shape[2]], alpha)
    return Change(image=image, image_support=support, depth=depth.astype(np.float32), depth_support=support)
