"""The real-photo benchmark (`unimmad-cl synth --kind photos`): scikit-image's bundled
photographs, cropped with real variation, with synthetic defects and exact masks.

Each task is one class made from one photograph that ships inside the scikit-image wheel
(read from the installed files, no network): textures (brick, grass, gravel; gray),
immunohistochemistry microscopy (ihc), a fundus photograph (retina), two objects (coffee,
chelsea) and a real stereo scene with ground-truth disparity (motorcycle: RGB + depth). The
single-image tasks are written in the MVTec AD layout under `<out>/mvtec/<task>/`, the RGB +
depth task in the MVTec 3D-AD layout under `<out>/mvtec3d/<task>/` (`xyz/*.tiff`: H x W x 3
float32 organized point cloud in metres from the disparity and the published calibration).

A normal sample is a crop of the photo: position, scale and rotation jitter (objects stay
framed: a large crop with small jitter), then lighting jitter (gain, contrast, gamma, white
balance). A defective sample is a normal sample with one defect from `defects`; its pixels
change only inside the mask, and at least 95% of the mask's pixels change (checked here,
a defect that would not is redrawn). Every sample draws from its own generator seeded by
`(seed, task id, split, index)`, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from unimmad_cl.data.synth import defects as D
from unimmad_cl.data.synth.benchmark import _replace, defect_plan
from unimmad_cl.errors import UserError

DEFAULT_IMAGE_SIZE = 256
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 64, 1024
DEFAULT_TRAIN, DEFAULT_TEST = 60, 40
LARGE_TRAIN, LARGE_TEST = 200, 100
SPLIT_IDS = {"train": 0, "test": 1}
# A defect is redrawn until its mask covers this share of the image ...
MIN_AREA, MAX_AREA = 0.004, 0.16
# ... and at least this share of the mask's pixels differ from the clean sample.
MIN_CHANGED = 0.95
MAX_TRIES = 40
# Photos pasted as foreign patches (never a class photo).
FOREIGN_PHOTOS = ("astronaut.png", "rocket.jpg", "camera.png", "coins.png", "hubble_deep_field.jpg", "moon.png")
# Middlebury 2014 "Motorcycle" at 1/4 resolution, as documented by skimage.data.stereo_motorcycle.
FOCAL_PX, CENTRE_X, CENTRE_Y, DISPARITY_OFFSET, BASELINE_M = 994.978, 311.193, 254.877, 31.086, 0.193001


@dataclass(frozen=True)
class Framing:
    """How a normal sample is cropped from its photo.

    height: crop height as a fraction of the photo height (uniform range). centre (y, x) as
    fractions of the photo, jittered by up to `shift` x crop height; `free`: anywhere the
    rotated crop fits instead (textures). rotation: max |angle| in degrees. aspect: output
    width / height. flip: random horizontal and vertical flips (textures, microscopy). border:
    scipy `map_coordinates` mode for pixels outside the photo.
    """

    height: tuple[float, float]
    centre: tuple[float, float] = (0.5, 0.5)
    shift: float = 0.0
    free: bool = False
    rotation: float = 0.0
    aspect: float = 1.0
    flip: bool = False
    border: str = "reflect"


@dataclass(frozen=True)
class PhotoTask:
    """One task = one class from one photo. `ident` is its fixed seed component (never reuse
    one), `region` where defects go ("all", "centre", "disc" or "near"), `defects` the
    `(folder name, defect function)` pairs."""

    name: str
    ident: int
    kind: str
    photo: str
    format: str
    modalities: tuple[str, ...]
    field: str
    framing: Framing
    defects: tuple[tuple[str, Callable], ...]
    region: str = "all"
    gray: bool = False

    @property
    def defect_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.defects)


P = functools.partial
GRAY_STAINS = ((0.12,), (0.88,))
TEXTURE = Framing(height=(0.45, 0.6), free=True, rotation=8.0, flip=True)
TEXTURE_DEFECTS = (
    ("foreign_patch", D.foreign_patch),
    ("scratch", D.scratch),
    ("stain", P(D.stain, colours=GRAY_STAINS)),
    ("hole", D.hole),
)

TASKS: tuple[PhotoTask, ...] = (
    PhotoTask("brick", 1, "texture", "brick.png", "mvtec", ("gray",), "industrial", TEXTURE, TEXTURE_DEFECTS, gray=True),
    PhotoTask("grass", 2, "texture", "grass.png", "mvtec", ("gray",), "industrial", TEXTURE, TEXTURE_DEFECTS, gray=True),
    PhotoTask("gravel", 3, "texture", "gravel.png", "mvtec", ("gray",), "industrial", TEXTURE, TEXTURE_DEFECTS, gray=True),
    PhotoTask(
        "ihc", 4, "microscopy", "ihc.png", "mvtec", ("histopathology",), "medical",
        Framing(height=(0.4, 0.55), free=True, rotation=180.0, flip=True),
        (
            ("foreign_patch", D.foreign_patch),
            ("scratch", D.scratch),
            ("stain", P(D.stain, colours=((0.45, 0.25, 0.1), (0.25, 0.3, 0.6)))),
            ("hole", P(D.hole, bright=True)),
            ("color_shift", D.color_shift),
        ),
    ),
    PhotoTask(
        "retina", 5, "fundus", "retina.jpg", "mvtec", ("rgb",), "medical",
        Framing(height=(0.92, 1.0), shift=0.02, rotation=10.0, border="constant"),
        (
            ("haemorrhage", P(D.stain, colours=((0.35, 0.02, 0.02), (0.15, 0.0, 0.0)), area=(0.02, 0.06))),
            ("exudates", D.spots),
            ("color_shift", D.color_shift),
            ("foreign_patch", D.foreign_patch),
        ),
        region="disc",
    ),
    PhotoTask(
        "coffee", 6, "object", "coffee.png", "mvtec", ("rgb",), "industrial",
        Framing(height=(0.84, 0.94), centre=(0.5, 0.39), shift=0.03, rotation=5.0),
        (
            ("foreign_patch", D.foreign_patch),
            ("scratch", D.scratch),
            ("stain", P(D.stain, colours=((0.3, 0.17, 0.07), (0.9, 0.88, 0.8)))),
            ("color_shift", D.color_shift),
        ),
        region="centre",
    ),
    PhotoTask(
        "chelsea", 7, "object", "chelsea.png", "mvtec", ("rgb",), "industrial",
        Framing(height=(0.86, 0.96), centre=(0.5, 0.55), shift=0.03, rotation=6.0),
        (
            ("foreign_patch", D.foreign_patch),
            ("scratch", D.scratch),
            ("stain", P(D.stain, colours=((0.12, 0.1, 0.08), (0.92, 0.9, 0.85)))),
            ("color_shift", D.color_shift),
        ),
        region="centre",
    ),
    PhotoTask(
        "motorcycle", 8, "rgbd", "motorcycle_left.png", "mvtec3d", ("rgb", "depth"), "industrial",
        Framing(height=(0.82, 0.9), centre=(0.52, 0.53), shift=0.03, rotation=3.0, aspect=1.5),
        (
            ("dent", D.dent),
            ("bump", D.bump),
            ("stain", P(D.stain, colours=((0.07, 0.06, 0.05), (0.8, 0.78, 0.7)))),
            ("impact", D.impact),
        ),
        region="near",
    ),
)
TASK_NAMES = tuple(t.name for t in TASKS)


# --------------------------------------------------------------------------- photos


def data_dir() -> Path:
    """scikit-image's bundled data folder (inside the installed wheel)."""
    try:
        import skimage.data
    except ImportError:
        raise UserError("--kind photos needs scikit-image: pip install 'scikit-image>=0.22'") from None
    return Path(os.path.dirname(skimage.data.__file__))


@functools.lru_cache(maxsize=None)
def load_photo(name: str, gray: bool = False) -> np.ndarray:
    """A bundled photo as float32 `[H, W, C]` in [0, 1] (C = 1 when `gray`, else 3)."""
    from PIL import Image

    path = data_dir() / name
    if not path.is_file():
        raise UserError(f"scikit-image's bundled photo {path} is missing; reinstall scikit-image")
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
    return pixels[:, :, None] if gray else pixels


@functools.lru_cache(maxsize=None)
def scaled_photo(name: str, gray: bool, scale: float) -> np.ndarray:
    """`load_photo` downscaled by `scale` (<= 1) with anti-aliasing, float32 `[h, w, C]`."""
    photo = load_photo(name, gray)
    if scale >= 1.0:
        return photo
    from skimage.transform import rescale

    return rescale(photo, scale, order=1, anti_aliasing=True, channel_axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def motorcycle_depth() -> np.ndarray:
    """Metric depth float32 `[500, 741]` of the left motorcycle image from its ground-truth
    disparity: Z = f * baseline / (d + doffs); 0 where the disparity is unknown."""
    path = data_dir() / "motorcycle_disp.npz"
    if not path.is_file():
        raise UserError(f"scikit-image's bundled disparity {path} is missing; reinstall scikit-image")
    with np.load(path) as data:
        disparity = data["arr_0"].astype(np.float64)
    valid = np.isfinite(disparity)
    depth = np.where(valid, FOCAL_PX * BASELINE_M / (np.where(valid, disparity, 0.0) + DISPARITY_OFFSET), 0.0)
    return depth.astype(np.float32)


def working_scale(photo_height: int, crop_fraction: float, out_height: int) -> float:
    """Downscale factor (<= 1) that leaves about 1.25 photo pixels per output pixel, rounded
    to 1/64 so that a handful of cached copies serve every sample."""
    return min(1.0, np.ceil(64.0 * 1.25 * out_height / (crop_fraction * photo_height)) / 64.0)


# --------------------------------------------------------------------------- sampling


def crop_grid(
    centre: tuple[float, float], height: float, angle: float, out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Photo coordinates (row, col) float64 `[oh, ow]` of each output pixel of a crop `height`
    photo pixels tall around `centre` (row, col), rotated by `angle` radians (pixel centres
    at integer coordinates)."""
    oh, ow = out_hw
    dy = ((np.arange(oh) + 0.5) / oh - 0.5)[:, None]
    dx = (((np.arange(ow) + 0.5) / ow - 0.5) * (ow / oh))[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    rows = centre[0] + height * (sin * dx + cos * dy)
    cols = centre[1] + height * (cos * dx - sin * dy)
    return rows, cols


def warp(photo: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: float = 1.0, mode: str = "reflect") -> np.ndarray:
    """Bilinear samples float32 `[oh, ow, C]` of `photo` `[h, w, C]` (a copy downscaled by
    `scale`) at full-resolution coordinates `rows`, `cols`."""
    from scipy.ndimage import map_coordinates

    coords = np.stack([(rows + 0.5) * scale - 0.5, (cols + 0.5) * scale - 0.5])
    planes = [
        map_coordinates(photo[:, :, c], coords, order=1, mode=mode, cval=0.0) for c in range(photo.shape[2])
    ]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0).astype(np.float32)


def draw_crop(framing: Framing, photo_hw: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator):
    """A random crop of a `photo_hw` photo: `(rows, cols)` as `crop_grid` returns, and the
    flips to apply to the output `(flip_rows, flip_cols)`."""
    ph, pw = photo_hw
    height = rng.uniform(*framing.height) * ph
    angle = np.deg2rad(rng.uniform(-framing.rotation, framing.rotation))
    if framing.free:
        half_h = height / 2 * (abs(np.cos(angle)) + framing.aspect * abs(np.sin(angle)))
        half_w = height / 2 * (framing.aspect * abs(np.cos(angle)) + abs(np.sin(angle)))
        cy = rng.uniform(half_h, ph - half_h) if ph > 2 * half_h else ph / 2
        cx = rng.uniform(half_w, pw - half_w) if pw > 2 * half_w else pw / 2
    else:
        cy = framing.centre[0] * ph + rng.uniform(-framing.shift, framing.shift) * height
        cx = framing.centre[1] * pw + rng.uniform(-framing.shift, framing.shift) * height
    rows, cols = crop_grid((cy - 0.5, cx - 0.5), height, angle, out_hw)
    flips = (bool(rng.integers(2)), bool(rng.integers(2))) if framing.flip else (False, False)
    return rows, cols, flips


def orient(array: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """Apply `(flip_rows, flip_cols)` to the first two axes."""
    if flips[0]:
        array = array[::-1]
    if flips[1]:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def light(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting jitter of float32 `[H, W, C]`: gain 0.9-1.1, contrast 0.88-1.12 about the
    mean, gamma 0.88-1.14, and per-channel white balance 0.97-1.03 for colour."""
    gain, contrast, gamma = rng.uniform(0.9, 1.1), rng.uniform(0.88, 1.12), rng.uniform(0.88, 1.14)
    balance = rng.uniform(0.97, 1.03, image.shape[2]) if image.shape[2] == 3 else np.ones(1)
    mean = float(image.mean())
    out = np.clip((mean + (image - mean) * contrast) * gain * balance.astype(np.float32), 0.0, 1.0)
    return (out ** np.float32(gamma)).astype(np.float32)


def to_u8(unit: np.ndarray) -> np.ndarray:
    return (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def out_shape(task: PhotoTask, image_size: int) -> tuple[int, int]:
    """(height, width) of the task's images: `image_size` tall, `aspect` x as wide."""
    return image_size, int(round(image_size * task.framing.aspect))


def foreign_sampler(shape: tuple[int, int], channels: int) -> Callable[[np.random.Generator], np.ndarray]:
    """`sample(rng) -> float32 [H, W, channels]`: a random rotated crop of a random foreign photo."""

    def sample(rng: np.random.Generator) -> np.ndarray:
        name = FOREIGN_PHOTOS[int(rng.integers(len(FOREIGN_PHOTOS)))]
        photo = load_photo(name)
        framing = Framing(height=(0.25, 0.6), free=True, rotation=180.0, aspect=shape[1] / shape[0])
        scale = working_scale(photo.shape[0], 0.4, shape[0])
        rows, cols, _ = draw_crop(framing, photo.shape[:2], shape, rng)
        patch = warp(scaled_photo(name, False, scale), rows, cols, scale)
        return (patch @ D.LUMA)[:, :, None] if channels == 1 else patch

    return sample


def regions(task: PhotoTask, image: np.ndarray, depth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """`(centres, paintable)` bool `[H, W]` of a clean sample (see `defects.Scene`)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    paintable = np.ones((h, w), dtype=bool)
    if task.region == "disc":  # the fundus, not the black surround
        from scipy.ndimage import distance_transform_edt

        paintable = D.luminance(image) > 0.08
        return distance_transform_edt(paintable) > 0.12 * min(h, w), paintable
    if task.region in ("centre", "near"):
        lo, hi = (0.22, 0.78) if task.region == "centre" else (0.12, 0.8)
        centres = (yy > lo * h) & (yy < hi * h) & (xx > lo * w) & (xx < (1 - lo) * w)
        if task.region == "near":  # on the motorcycle (nearer than the wall behind it)
            centres &= (depth > 0) & (depth < 2.65)
        return centres, paintable
    margin = 0.1
    return (yy > margin * h) & (yy < (1 - margin) * h) & (xx > margin * w) & (xx < (1 - margin) * w), paintable


def point_cloud(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Organized point cloud float32 `[H, W, 3]` (x, y, z metres; (0, 0, 0) where depth is 0)
    of output pixels that look along the camera rays through photo pixels (rows, cols)."""
    x = (cols - CENTRE_X) * depth / FOCAL_PX
    y = (rows - CENTRE_Y) * depth / FOCAL_PX
    return np.stack([x, y, depth], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class Rendered:
    """One sample as written. image: uint8 `[H, W]` (gray) or `[H, W, 3]`; xyz: float32
    `[H, W, 3]` or None; mask: bool `[H, W]` (None for good samples). `clean_*`: the same
    sample without its defect (equal to image/xyz for good samples)."""

    image: np.ndarray
    xyz: np.ndarray | None
    mask: np.ndarray | None
    clean_image: np.ndarray
    clean_xyz: np.ndarray | None


def sample_rng(seed: int, task: PhotoTask, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, task.ident, SPLIT_IDS[split], index])


def render_sample(
    task: PhotoTask, seed: int, split: str, index: int, image_size: int, defect: str | None = None
) -> Rendered:
    """One sample of `task`; `defect` None for a normal sample, else one of its defect names."""
    rng = sample_rng(seed, task, split, index)
    full = load_photo(task.photo, task.gray)
    shape = out_shape(task, image_size)
    scale = working_scale(full.shape[0], float(np.mean(task.framing.height)), shape[0])
    rows, cols, flips = draw_crop(task.framing, full.shape[:2], shape, rng)
    photo = scaled_photo(task.photo, task.gray, scale)
    clean = orient(light(warp(photo, rows, cols, scale, task.framing.border), rng), flips)
    clean_u8 = to_u8(clean)
    depth = xyz = None
    if "depth" in task.modalities:
        depth, xyz = _depth_sample(rows, cols, rng)
    squeeze = (lambda a: a[:, :, 0]) if task.gray else (lambda a: a)
    if defect is None:
        return Rendered(squeeze(clean_u8), xyz, None, squeeze(clean_u8), xyz)
    unit = clean_u8.astype(np.float32) / 255.0
    centres, paintable = regions(task, unit, depth)
    scene = D.Scene(unit, centres, paintable, depth, foreign_sampler(shape, unit.shape[2]))
    make = dict(task.defects)[defect]
    for _ in range(MAX_TRIES):
        change = make(scene, rng)
        image, new_xyz, mask = _apply(change, clean_u8, depth, xyz, rows, cols)
        if mask is not None:
            return Rendered(squeeze(image), new_xyz, mask, squeeze(clean_u8), xyz)
    raise RuntimeError(f"photo task {task.name}: defect {defect!r} failed {MAX_TRIES} times (sample {split} {index})")


def _depth_sample(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator):
    """Depth float32 `[H, W]` (0 = none) and point cloud of the crop; the object distance
    jitters by up to 2%. A pixel is valid when all four photo pixels around it are."""
    from scipy.ndimage import map_coordinates

    full = motorcycle_depth()
    coords = np.stack([rows, cols])
    z = map_coordinates(full, coords, order=1, mode="constant", cval=0.0)
    valid = map_coordinates((full > 0).astype(np.float32), coords, order=1, mode="constant", cval=0.0) > 0.999
    depth = np.where(valid, z * rng.uniform(0.98, 1.02), 0.0).astype(np.float32)
    return depth, point_cloud(depth, rows, cols)


def _apply(change: D.Change, clean_u8, depth, xyz, rows, cols):
    """Write `change` into copies of the clean sample, only inside its supports. Returns
    `(image, xyz, mask)`, or `(.., .., None)` when the defect is too small/large or leaves
    more than 5% of its mask unchanged (the caller draws another)."""
    shape = clean_u8.shape[:2]
    mask = change.mask(shape)
    if not MIN_AREA <= mask.mean() <= MAX_AREA:
        return clean_u8, xyz, None
    image, new_xyz = clean_u8, xyz
    if change.image_support is not None and change.image_support.any():
        support = change.image_support
        image = np.where(support[:, :, None], to_u8(change.image), clean_u8)
        if (image != clean_u8).any(axis=2)[support].mean() < MIN_CHANGED:
            return clean_u8, xyz, None
    if change.depth_support is not None and change.depth_support.any():
        support = change.depth_support
        new_depth = np.where(support, change.depth, depth).astype(np.float32)
        new_xyz = np.where(support[:, :, None], point_cloud(new_depth, rows, cols), xyz)
        if (new_xyz[:, :, 2] != xyz[:, :, 2])[support].mean() < MIN_CHANGED:
            return clean_u8, xyz, None
    return image, new_xyz, mask


# --------------------------------------------------------------------------- writing


def save_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 `[H, W]` (L) or `[H, W, 3]` (RGB) PNG; no metadata, so bytes are reproducible."""
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG", compress_level=3)  # 2.5x faster than 6, 7% larger


def save_xyz(path: Path, xyz: np.ndarray) -> None:
    """MVTec 3D-AD point cloud TIFF: float32 `[H, W, 3]`, contiguous samples, zlib with the
    floating-point predictor (lossless, a third smaller; tifffile reads it without extra
    codecs). No date tag, so bytes are reproducible."""
    import tifffile

    tifffile.imwrite(path, xyz.astype(np.float32), photometric="rgb", planarconfig="contig",
                     compression="zlib", predictor=3, metadata=None)


def write_task(root: Path, task: PhotoTask, seed: int, image_size: int, n_train: int, n_test: int) -> None:
    """All samples of one task under `root/<format>/<task>/` in the MVTec (3D-)AD layout.
    Stems count from 000 in each folder, as in MVTec AD."""
    base = root / task.format / task.name
    plan = [("train", i, None) for i in range(n_train)]
    plan += [("test", i, d) for i, d in enumerate(defect_plan(task.defect_names, n_test))]
    counters: dict[tuple[str, str], int] = {}
    for split, index, defect in plan:
        sample = render_sample(task, seed, split, index, image_size, defect)
        group = defect or "good"
        stem = f"{counters.setdefault((split, group), 0):03d}"
        counters[(split, group)] += 1
        folder = base / split / group
        if task.format == "mvtec3d":
            for sub in ("rgb", "xyz") + (("gt",) if split == "test" else ()):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            save_png(folder / "rgb" / f"{stem}.png", sample.image)
            save_xyz(folder / "xyz" / f"{stem}.tiff", sample.xyz)
            if split == "test":  # MVTec 3D-AD has a (blank) gt for good test samples too
                mask = sample.mask if sample.mask is not None else np.zeros(sample.image.shape[:2], bool)
                save_png(folder / "gt" / f"{stem}.png", mask.astype(np.uint8) * 255)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        save_png(folder / f"{stem}.png", sample.image)
        if sample.mask is not None:
            gt = base / "ground_truth" / group
            gt.mkdir(parents=True, exist_ok=True)
            save_png(gt / f"{stem}_mask.png", sample.mask.astype(np.uint8) * 255)


def task_entries(tasks: tuple[PhotoTask, ...] = TASKS) -> list[dict]:
    """The `tasks.yaml` mappings (roots relative to the YAML file's folder)."""
    return [
        {
            "name": t.name,
            "format": t.format,
            "root": t.format,
            "modalities": list(t.modalities),
            "classes": [t.name],
            "field": t.field,
            "loss_weight": 1.0,
        }
        for t in tasks
    ]


def select_tasks(names) -> tuple[PhotoTask, ...]:
    """The tasks named (in that order), or all when `names` is empty/None."""
    if not names:
        return TASKS
    by_name = {t.name: t for t in TASKS}
    chosen: list[PhotoTask] = []
    for name in names:
        if name not in by_name:
            raise UserError(f"--task {name!r} is not a photo task; expected one of: {', '.join(TASK_NAMES)}")
        if by_name[name] in chosen:
            raise UserError(f"--task {name!r} is given twice")
        chosen.append(by_name[name])
    return tuple(chosen)


def check_arguments(out: Path, image_size: int, n_train: int, n_test: int, overwrite: bool) -> None:
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise UserError(
            f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} for --kind photos, got {image_size}"
        )
    if n_train < 1:
        raise UserError(f"--train must be at least 1, got {n_train}")
    if n_test < 2:
        raise UserError(f"--test must be at least 2 (good and defect samples), got {n_test}")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty (use --overwrite to replace it)")


def write_photo_benchmark(
    out: str | Path,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    n_train: int = DEFAULT_TRAIN,
    n_test: int = DEFAULT_TEST,
    tasks=None,
    overwrite: bool = False,
) -> list[dict]:
    """Write the photo tasks (`tasks`: names, default all) and `<out>/tasks.yaml`; returns
    the task entries. Written into a sibling temporary folder and renamed into place at the
    end: `out` is either absent, untouched or complete."""
    import yaml

    out = Path(out)
    chosen = select_tasks(tasks)
    check_arguments(out, image_size, n_train, n_test, overwrite)
    data_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        for task in chosen:
            write_task(staging, task, seed, image_size, n_train, n_test)
        entries = task_entries(chosen)
        (staging / "tasks.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return entries


# --------------------------------------------------------------------------- preview


def depth_shading(xyz: np.ndarray) -> np.ndarray:
    """A gray hill-shade uint8 `[H, W]` of a point cloud's depth (dents show as shading);
    black where there is no depth."""
    z = xyz[:, :, 2].astype(np.float64)
    valid = z > 0
    filled = np.where(valid, z, z[valid].mean() if valid.any() else 0.0)
    gy, gx = np.gradient(filled * 400.0)
    shade = (1.0 + gx * 0.6 - gy * 0.8) / np.sqrt(1.0 + gx**2 + gy**2)
    near = 1.0 - (filled - filled[valid].min()) / max(np.ptp(filled[valid]), 1e-6) if valid.any() else filled
    return to_u8(np.where(valid, 0.5 * np.clip(shade, 0, 1.3) / 1.3 + 0.45 * near, 0.0))


def contact_sheet(path: str | Path, tasks=None, seed: int = 0, image_size: int = 256, tile: int = 160) -> Path:
    """A PNG preview: per task, two normal samples then one sample of each defect with its
    mask outlined in red (a ring just outside it) (for RGB + depth tasks a second row shows the depth shading)."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import binary_dilation

    rows = []
    for task in select_tasks(tasks):
        cells = [("good", render_sample(task, seed, "train", i, image_size)) for i in range(2)]
        cells += [(d, render_sample(task, seed, "test", 0, image_size, d)) for d in task.defect_names]
        layers = [lambda s: s.image] + ([lambda s: depth_shading(s.xyz)] if task.format == "mvtec3d" else [])
        for layer in layers:
            row = []
            for label, sample in cells:
                pixels = layer(sample)
                rgb = np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels.copy()
                if sample.mask is not None:  # a ring just outside the mask, so the defect shows
                    step = max(1, image_size // 128)
                    ring = binary_dilation(sample.mask, iterations=2 * step) & ~binary_dilation(sample.mask, iterations=step)
                    rgb[ring] = (255, 0, 0)
                img = Image.fromarray(rgb)
                img = img.resize((int(tile * img.width / img.height), tile), Image.Resampling.BILINEAR)
                ImageDraw.Draw(img).text((3, 2), f"{task.name}: {label}", fill=(255, 255, 0))
                row.append(img)
            rows.append(row)
    width = max(sum(i.width + 4 for i in row) for row in rows)
    sheet = Image.new("RGB", (width, len(rows) * (tile + 4)), (32, 32, 32))
    for r, row in enumerate(rows):
        x = 0
        for img in row:
            sheet.paste(img, (x, r * (tile + 4)))
            x += img.width + 4
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)
    return path
