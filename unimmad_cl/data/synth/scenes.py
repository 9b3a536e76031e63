"""Renderers of the synthetic classes: one normal image family each, and its subtle defects.

A renderer is `render(rng, size, defect) -> (images, mask)`: `defect` is None for a normal
sample or one of the class's defect names; `images` maps modality name -> array (colour
`[S, S, 3]` and gray `[S, S]` in [0, 1], depth `[S, S]` float32 metres); `mask` is bool
`[S, S]`, non-empty exactly for defects. Normal samples vary (pose, phase, illumination,
noise) so that "normal" is a distribution, and defects stay small and low-contrast: thin
1-pixel scratches, faint stains, millimetre dents, lesions of a few pixels.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from unimmad_cl.data.synth.textures import (
    blob,
    curve,
    dilate,
    ellipse_radius,
    gaussian_spot,
    grid,
    point_inside,
    shade,
    smooth_noise,
    soften,
)


def _scratch(rng, size, region, length_frac=(0.25, 0.45)):
    """A thin curve starting inside `region`, clipped to it; never empty."""
    start = point_inside(rng, region)
    line = curve(rng, size, start, rng.uniform(*length_frac) * size, rng.uniform(0, 2 * np.pi))
    line &= region
    line[int(start[0]), int(start[1])] = True
    return line


def _stain(rng, size, region, radius_frac=(0.05, 0.09)):
    """A soft irregular blob inside `region`: (bool mask, soft weight in [0, 1])."""
    spot = blob(rng, size, point_inside(rng, region), rng.uniform(*radius_frac) * size) & region
    return spot, soften(spot, 1.0) * dilate(spot, 1)


def _finish_color(rgb, rng, noise=0.012):
    return np.clip(rgb + rng.normal(0.0, noise, rgb.shape), 0.0, 1.0)


def _finish_gray(gray, rng, noise=0.012):
    return np.clip(gray + rng.normal(0.0, noise, gray.shape), 0.0, 1.0)


def _tint(rgb, weight, factor, tint):
    """Multiply colours by `factor` and pull them towards `tint`, both scaled by `weight`."""
    w = weight[:, :, None]
    return rgb * (1 - w * (1 - factor)) + w * 0.5 * (np.asarray(tint) - rgb) * (1 - factor)


# ---------------------------------------------------------------- industrial RGB textures


def weave(rng, size, defect):
    """Plain-weave fabric: alternating thread bumps, slow illumination changes."""
    yy, xx = grid(size)
    period = size / 10.5 * rng.uniform(0.96, 1.04)
    u, v = (xx + rng.uniform(0, 2 * period)) / period, (yy + rng.uniform(0, 2 * period)) / period
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    pattern = np.where(over, np.sin(np.pi * (u % 1)), np.sin(np.pi * (v % 1)))
    everywhere = np.ones((size, size), dtype=bool)
    mask = np.zeros_like(everywhere)
    if defect == "broken_thread":  # one thread loses its bumps over a stretch
        row = np.floor(v) == np.floor(v[int(rng.integers(size // 5, 4 * size // 5)), 0])
        start = rng.uniform(0, 0.6) * size
        mask = row & (xx > start) & (xx < start + rng.uniform(0.2, 0.35) * size)
        pattern = np.where(mask, 0.45 + 0.1 * np.sin(np.pi * (v % 1)), pattern)
    base = np.array([0.34, 0.40, 0.55]) * rng.uniform(0.95, 1.05, 3)
    light = 1 + 0.06 * smooth_noise(rng, size, size / 4)
    rgb = base * ((0.62 + 0.38 * pattern) * light)[:, :, None]
    if defect == "scratch":
        mask = _scratch(rng, size, everywhere)
        rgb = rgb + 0.09 * mask[:, :, None]
    elif defect == "stain":
        mask, weight = _stain(rng, size, everywhere)
        rgb = _tint(rgb, weight, 0.86, (0.55, 0.45, 0.2))
    return {"rgb": _finish_color(rgb, rng)}, mask


def leather(rng, size, defect):
    """Leather grain: fine and coarse noise with sparse pores."""
    grain = 0.05 * smooth_noise(rng, size, size / 60) + 0.04 * smooth_noise(rng, size, size / 10)
    pores = soften(rng.random((size, size)) > 0.985, 0.7)
    base = np.array([0.47, 0.31, 0.20]) * rng.uniform(0.96, 1.04, 3)
    rgb = base * (1 + grain - 0.12 * pores)[:, :, None]
    everywhere = np.ones((size, size), dtype=bool)
    mask = np.zeros_like(everywhere)
    if defect == "scratch":
        mask = _scratch(rng, size, everywhere)
        rgb = rgb * (1 + 0.16 * mask[:, :, None])
    elif defect == "fold":  # a crease: dark line with a lit flank
        mask = _scratch(rng, size, everywhere, (0.3, 0.5))
        flank = dilate(mask, 1) & ~mask
        rgb = rgb * (1 - 0.14 * mask + 0.07 * flank)[:, :, None]
        mask = dilate(mask, 1)
    elif defect == "stain":
        mask, weight = _stain(rng, size, everywhere)
        rgb = _tint(rgb, weight, 0.88, (0.2, 0.15, 0.1))
    return {"rgb": _finish_color(rgb, rng)}, mask


def ceramic(rng, size, defect):
    """Square tiles with grout lines; every tile has its own slight shade."""
    yy, xx = grid(size)
    period = size / 4
    oy, ox = rng.uniform(0, period, 2)
    ty, tx = np.floor((yy + oy) / period), np.floor((xx + ox) / period)
    grout = (((yy + oy) % period) < 1.5) | (((xx + ox) % period) < 1.5)
    tile_shade = 1 + 0.03 * np.sin(12.9898 * ty + 78.233 * tx + rng.uniform(0, 6.3))
    base = np.array([0.86, 0.82, 0.74]) * rng.uniform(0.97, 1.03, 3)
    rgb = base * (tile_shade * (1 + 0.02 * smooth_noise(rng, size, 1.5)))[:, :, None]
    rgb = np.where(grout[:, :, None], np.array([0.55, 0.54, 0.52]), rgb)
    surface = ~dilate(grout, 1)
    mask = np.zeros((size, size), dtype=bool)
    if defect == "crack":
        mask = _scratch(rng, size, surface, (0.12, 0.22))
        rgb = rgb * (1 - 0.2 * mask[:, :, None])
    elif defect == "chip":  # a small flake missing at a tile edge
        edge = dilate(grout, 2) & ~grout
        mask = blob(rng, size, point_inside(rng, edge), rng.uniform(0.03, 0.05) * size) & ~grout
        rgb = np.where(mask[:, :, None], rgb * 0.86 + 0.04, rgb)
    elif defect == "stain":
        mask, weight = _stain(rng, size, surface)
        rgb = _tint(rgb, weight, 0.92, (0.6, 0.5, 0.3))
    return {"rgb": _finish_color(rgb, rng)}, mask


def marble(rng, size, defect):
    """Marble: turbulent veins on a pale slab."""
    yy, xx = grid(size)
    theta = rng.uniform(-0.3, 0.3) + 0.8
    turbulence = smooth_noise(rng, size, size / 8) + 0.5 * smooth_noise(rng, size, size / 20)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) / size * 3.0 + 0.35 * turbulence
    veins = np.abs(np.sin(np.pi * phase)) ** 8
    base = np.array([0.88, 0.87, 0.84]) * rng.uniform(0.98, 1.02, 3)
    rgb = base * (1 - 0.28 * veins)[:, :, None] + 0.015 * smooth_noise(rng, size, 2.0)[:, :, None]
    everywhere = np.ones((size, size), dtype=bool)
    mask = np.zeros_like(everywhere)
    if defect == "crack":  # straighter and thinner than a vein
        mask = curve(rng, size, point_inside(rng, everywhere), rng.uniform(0.25, 0.4) * size,
                     rng.uniform(0, 2 * np.pi), wiggle=0.05)
        rgb = rgb * (1 - 0.18 * mask[:, :, None])
    elif defect == "spot":
        mask = blob(rng, size, point_inside(rng, everywhere), rng.uniform(0.025, 0.04) * size)
        rgb = rgb * (1 - 0.14 * soften(mask, 0.7))[:, :, None]
    elif defect == "stain":
        mask, weight = _stain(rng, size, everywhere)
        rgb = _tint(rgb, weight, 0.93, (0.7, 0.55, 0.35))
    return {"rgb": _finish_color(rgb, rng)}, mask


# ---------------------------------------------------------------- RGB + depth objects

PLANE_DEPTH = 0.55  # metres from the sensor to the table


def _rgbd(rng, size, height_m, albedo, defect):
    """RGB + depth of an object given its height (m) and albedo `[S, S, 3]`.

    dent: depth only (the colour image is shaded from the undented surface); stain: RGB only;
    crack: both (a groove in depth and a dark line in colour).
    """
    yy, xx = grid(size)
    obj = height_m > 0.25 * height_m.max()
    lit = shade(height_m / height_m.max(), relief=size / 8)
    rgb = albedo * (0.45 + 0.55 * lit)[:, :, None]
    tilt = rng.uniform(-0.004, 0.004, 2)
    depth = PLANE_DEPTH + tilt[0] * (yy / size - 0.5) + tilt[1] * (xx / size - 0.5) - height_m
    mask = np.zeros((size, size), dtype=bool)
    if defect == "dent":
        sigma = rng.uniform(0.025, 0.04) * size
        bump = gaussian_spot(size, point_inside(rng, obj & (height_m > 0.5 * height_m.max())), sigma)
        depth = depth + rng.uniform(0.0015, 0.0025) * bump  # pushed away from the sensor
        mask = (bump > 0.35) & obj
    elif defect == "stain":
        mask, weight = _stain(rng, size, obj, (0.04, 0.07))
        rgb = _tint(rgb, weight, 0.85, (0.25, 0.2, 0.12))
    elif defect == "crack":
        mask = _scratch(rng, size, obj, (0.15, 0.25))
        depth = depth + 0.0012 * mask
        rgb = rgb * (1 - 0.15 * mask[:, :, None])
    depth = depth + rng.normal(0.0, 0.00008, depth.shape)  # ~0.1 mm sensor noise
    return {"rgb": _finish_color(rgb, rng), "depth": depth.astype(np.float32)}, mask


def bagel(rng, size, defect):
    """A torus-shaped bagel, golden on top; pose and size vary."""
    center = size * (0.5 + rng.uniform(-0.05, 0.05, 2))
    rho = ellipse_radius(size, center, (1.0, 1.0))
    major, tube = size * rng.uniform(0.24, 0.28), size * rng.uniform(0.11, 0.13)
    profile = np.sqrt(np.clip(1 - ((rho - major) / tube) ** 2, 0, None))
    height = 0.03 * profile * (1 + 0.04 * smooth_noise(rng, size, size / 16))
    toast = np.clip(profile, 0, 1)[:, :, None]
    albedo = np.array([0.78, 0.55, 0.28]) * (0.75 + 0.25 * toast) * (1 + 0.05 * smooth_noise(rng, size, size / 24))[:, :, None]
    albedo = np.where(profile[:, :, None] > 0, albedo, 0.22)
    return _rgbd(rng, size, height, albedo, defect)


def cookie(rng, size, defect):
    """A flat round cookie with rounded rim and chocolate chips at random places."""
    center = size * (0.5 + rng.uniform(-0.05, 0.05, 2))
    radius = size * rng.uniform(0.3, 0.34)
    rho = ellipse_radius(size, center, (radius, radius))
    profile = np.sqrt(np.clip((1 - rho) / 0.25, 0, 1))
    body = profile > 0
    chips = np.zeros((size, size))
    for _ in range(rng.integers(6, 10)):
        chips = np.maximum(chips, gaussian_spot(size, point_inside(rng, rho < 0.8), size * 0.025))
    height = 0.012 * (profile + 0.25 * chips * body) * (1 + 0.03 * smooth_noise(rng, size, size / 20))
    albedo = np.array([0.82, 0.62, 0.38]) * (1 + 0.04 * smooth_noise(rng, size, size / 30))[:, :, None]
    albedo = albedo * (1 - 0.6 * (chips > 0.5))[:, :, None]
    albedo = np.where(body[:, :, None], albedo, 0.22)
    return _rgbd(rng, size, height, albedo, defect)


# ---------------------------------------------------------------- infrared thermography

_PCB_LAYOUT_SEED = 20240917  # the board design is fixed; only its thermal state varies


def pcb(rng, size, defect):
    """Thermal image of a powered board: warm components on a cooler substrate."""
    layout = np.random.default_rng(_PCB_LAYOUT_SEED)
    yy, xx = grid(size)
    shift = rng.integers(-1, 2, 2)
    board = (yy > 0.08 * size) & (yy < 0.92 * size) & (xx > 0.08 * size) & (xx < 0.92 * size)
    temp = np.where(board, 0.32, 0.12) + rng.uniform(-0.02, 0.02)
    parts = []
    for _ in range(7):
        h, w = layout.uniform(0.08, 0.2, 2) * size
        y0, x0 = layout.uniform(0.12 * size, 0.88 * size - h), layout.uniform(0.12 * size, 0.88 * size - w)
        part = (yy >= y0 + shift[0]) & (yy < y0 + h + shift[0]) & (xx >= x0 + shift[1]) & (xx < x0 + w + shift[1])
        parts.append(part)
        temp = np.where(part, layout.uniform(0.5, 0.8) + rng.uniform(-0.025, 0.025), temp)
    heat = gaussian_filter(temp, size / 40)
    substrate = board & ~dilate(np.any(parts, axis=0), 2)
    mask = np.zeros((size, size), dtype=bool)
    if defect == "hotspot":  # subsurface: a faint, diffuse warm spot under the substrate
        bump = gaussian_spot(size, point_inside(rng, substrate), rng.uniform(0.03, 0.045) * size)
        heat = heat + rng.uniform(0.06, 0.09) * bump
        mask = bump > 0.5
    elif defect == "short":  # a warm trace between parts
        mask = _scratch(rng, size, substrate, (0.15, 0.3))
        heat = heat + 0.08 * soften(dilate(mask, 1), 0.6)
    elif defect == "cold_part":  # one component draws no power
        mask = parts[int(rng.integers(len(parts)))]
        heat = np.where(mask, heat - 0.08, heat)
    return {"infrared": _finish_gray(heat, rng, 0.01)}, mask


def cube(rng, size, defect):
    """A block heated from one side (MulSen-like infrared object), slightly rotated."""
    center = size * (0.5 + rng.uniform(-0.04, 0.04, 2))
    half = size * rng.uniform(0.28, 0.32)
    angle = rng.uniform(-0.15, 0.15)
    yy, xx = grid(size)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xx - center[1]) * cos + (yy - center[0]) * sin
    v = -(xx - center[1]) * sin + (yy - center[0]) * cos
    obj = (np.abs(u) < half) & (np.abs(v) < half)
    gradient = 0.5 + 0.12 * (u / half) + 0.03 * smooth_noise(rng, size, size / 6)
    heat = gaussian_filter(np.where(obj, gradient, 0.1), size / 64)
    inner = obj & (np.abs(u) < 0.8 * half) & (np.abs(v) < 0.8 * half)
    mask = np.zeros((size, size), dtype=bool)
    if defect in ("hotspot", "void"):
        bump = gaussian_spot(size, point_inside(rng, inner), rng.uniform(0.035, 0.05) * size)
        sign = 1 if defect == "hotspot" else -1
        heat = heat + sign * rng.uniform(0.05, 0.07) * bump
        mask = bump > 0.5
    elif defect == "crack":
        mask = _scratch(rng, size, inner, (0.15, 0.3))
        heat = heat + 0.07 * mask
    return {"infrared": _finish_gray(heat, rng, 0.01)}, mask


# ---------------------------------------------------------------- medical

# Tissue intensities per MRI sequence: scalp, CSF, grey matter, white matter.
_MRI = {
    "mri_flair": (0.55, 0.10, 0.55, 0.45),
    "mri_t1": (0.85, 0.15, 0.45, 0.62),
    "mri_t1ce": (0.85, 0.15, 0.47, 0.62),
    "mri_t2": (0.50, 0.90, 0.55, 0.40),
}
# Lesion contrast per sequence (edema, core): FLAIR/T2 show the edema, T1CE the rim.
_LESION = {
    "mri_flair": (0.22, 0.18),
    "mri_t1": (-0.03, -0.08),
    "mri_t1ce": (0.0, -0.06),
    "mri_t2": (0.20, 0.30),
}


def brain(rng, size, defect):
    """Axial brain slice in four MRI sequences; 'tumour' shows in all, 'edema' only in FLAIR/T2."""
    center = size * (0.5 + rng.uniform(-0.03, 0.03, 2))
    axes = size * np.array([rng.uniform(0.40, 0.44), rng.uniform(0.33, 0.37)])
    angle = rng.uniform(-0.12, 0.12)
    head = ellipse_radius(size, center, axes, angle)
    brain_r = ellipse_radius(size, center, axes * 0.86, angle)
    ventricles = np.zeros((size, size), dtype=bool)
    for side in (-1, 1):
        offset = np.array([-0.04, side * 0.06]) * size
        ventricles |= ellipse_radius(size, center + offset, size * np.array([0.1, 0.035]), angle + side * 0.3) < 1
    inside = brain_r < 1
    white = (smooth_noise(rng, size, size / 14) + 1.2 * (1 - brain_r) > 0.7) & inside
    tissue = np.select(
        [ventricles & inside, white, inside, head < 1], [1, 3, 2, 0], default=-1
    )
    mask = np.zeros((size, size), dtype=bool)
    edema = core = np.zeros((size, size))
    if defect is not None:
        spot = point_inside(rng, (brain_r < 0.75) & ~dilate(ventricles, 2))
        radius = rng.uniform(0.04, 0.07) * size
        edema_mask = blob(rng, size, spot, radius * 1.5) & inside
        core_mask = blob(rng, size, spot, radius * 0.7) & inside if defect == "tumour" else np.zeros_like(mask)
        edema, core = soften(edema_mask, 0.8), soften(core_mask, 0.6)
        rim = dilate(core_mask, 1) & ~core_mask
        mask = edema_mask | core_mask
    bias = 1 + 0.08 * smooth_noise(rng, size, size / 3)
    images = {}
    for name, levels in _MRI.items():
        img = np.where(tissue >= 0, np.take(levels, np.clip(tissue, 0, 3)), 0.0)
        img = gaussian_filter(img, 0.6) * bias
        if defect is not None:
            img = img + _LESION[name][0] * edema + _LESION[name][1] * core
            if name == "mri_t1ce" and defect == "tumour":
                img = img + 0.25 * rim
        images[name] = _finish_gray(img, rng, 0.015)
    return images, mask


def liver(rng, size, defect):
    """Abdominal CT slice: body, fat rim, spine and a liver with faint hypodense lesions."""
    center = size * (0.52 + rng.uniform(-0.02, 0.02, 2))
    body = ellipse_radius(size, center, size * np.array([0.36, 0.45]) * rng.uniform(0.95, 1.05))
    liver_c = center + size * np.array([-0.05 + rng.uniform(-0.02, 0.02), -0.15])
    liver_r = ellipse_radius(size, liver_c, size * np.array([0.2, 0.16]), rng.uniform(-0.3, 0.3))
    liver_r = liver_r + 0.08 * smooth_noise(rng, size, size / 10)
    spine = ellipse_radius(size, center + size * np.array([0.3, 0.0]), size * np.array([0.06, 0.06]))
    kidney = ellipse_radius(size, center + size * np.array([0.15, 0.22]), size * np.array([0.08, 0.05]))
    img = np.where(body < 1, 0.30, 0.0)
    img = np.where(body < 0.92, 0.44 + 0.02 * smooth_noise(rng, size, size / 12), img)
    img = np.where(kidney < 1, 0.50, img)
    img = np.where(liver_r < 1, 0.55, img)
    img = np.where(spine < 1, 0.9, img)
    organ = (liver_r < 0.8) & (body < 0.9)
    mask = np.zeros((size, size), dtype=bool)
    if defect == "lesion":  # hypodense, ill-defined
        mask = blob(rng, size, point_inside(rng, organ), rng.uniform(0.035, 0.06) * size) & organ
        img = img - rng.uniform(0.05, 0.07) * soften(mask, 1.0)
    elif defect == "cyst":  # darker, sharp, small
        mask = ellipse_radius(size, point_inside(rng, organ), size * rng.uniform(0.02, 0.035, 2)) < 1
        mask &= organ
        img = np.where(mask, img - 0.12, img)
    img = gaussian_filter(img, 0.5)
    return {"ct": _finish_gray(img, rng, 0.02)}, mask


# Retinal layer bands below the surface (thickness in px at 64, intensity).
_OCT_LAYERS = ((2.0, 0.75), (2.5, 0.42), (2.0, 0.55), (2.0, 0.28), (1.5, 0.5), (4.0, 0.22), (1.0, 0.85), (1.5, 0.95))


def retina(rng, size, defect):
    """OCT B-scan: curved layered retina with a foveal pit and speckle."""
    yy, xx = grid(size)
    xs = xx[0] / size
    surface = size * (0.3 + rng.uniform(-0.03, 0.03) + rng.uniform(0.05, 0.12) * (xs - 0.5) ** 2)
    surface = surface + size * 0.04 * np.exp(-((xs - 0.5 - rng.uniform(-0.05, 0.05)) ** 2) / 0.004)
    scale = size / 64
    depth_below = yy - surface[None, :]
    img = np.full((size, size), 0.05)
    top = 0.0
    bounds = []
    for thickness, level in _OCT_LAYERS:
        band = (depth_below >= top) & (depth_below < top + thickness * scale)
        img = np.where(band, level, img)
        bounds.append(top)
        top += thickness * scale
    rpe_bottom = top
    choroid = depth_below >= top
    img = np.where(choroid, 0.35 + 0.08 * smooth_noise(rng, size, 1.5 * scale), img)
    mask = np.zeros((size, size), dtype=bool)
    if defect == "fluid":  # a small dark pocket in the outer nuclear layer
        layer = (depth_below >= bounds[5]) & (depth_below < bounds[6]) & (np.abs(xs - 0.5) < 0.35)[None, :]
        c = point_inside(rng, layer)
        mask = ellipse_radius(size, c, (rng.uniform(1.5, 2.5) * scale, rng.uniform(3, 6) * scale)) < 1
        img = np.where(mask, 0.07, img)
    elif defect == "drusen":  # the pigment epithelium bulges up
        x0 = rng.uniform(0.2, 0.8)
        lift = rng.uniform(1.5, 2.5) * scale * np.exp(-((xs - x0) ** 2) / (2 * rng.uniform(0.02, 0.035) ** 2))
        moved = (depth_below + lift[None, :] >= bounds[6]) & (depth_below + lift[None, :] < rpe_bottom)
        mask = moved & ~((depth_below >= bounds[6]) & (depth_below < rpe_bottom)) & (lift[None, :] > 0.5)
        img = np.where(mask, 0.9, img)
    speckle = rng.gamma(6.0, 1 / 6.0, img.shape)
    return {"oct": np.clip(gaussian_filter(img, 0.5 * scale) * speckle, 0, 1)}, mask
