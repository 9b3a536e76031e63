"""Decoding one file into the model's input: 3 channels, normalized, resized to a square.

numpy, PIL and tifffile are imported inside the functions (the registry imports the readers,
which import nothing from here at module level, but keep this module cheap all the same).

Shapes: images come back as float32 `[3, S, S]`, masks as float32 `[S, S]` in {0, 1}.
"""

from __future__ import annotations

from pathlib import Path

from unimmad_cl.data.modalities import get_modality
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (mean, std) per channel applied to colour and gray modalities: what the backbone's ImageNet
# weights expect (`UniMMAD.normalization`; EfficientNet-Lite: 0.5 / 0.5). Depth has its own.
Normalization = tuple[tuple[float, ...], tuple[float, ...]]
IMAGENET: Normalization = (IMAGENET_MEAN, IMAGENET_STD)
# Reference UniMMAD scaling of centred depth in metres: 1 cm of relief -> 1.0.
DEPTH_SCALE = 100.0
# A plain 16-bit depth PNG (not Eyecandies) holds millimetres; 0 = no measurement.
DEPTH_PNG_UNITS_PER_METRE = 1000.0
TIFF_SUFFIXES = (".tif", ".tiff")


def read_array(path: str | Path):
    """The file's pixels as a numpy array `[H, W]` or `[H, W, C]` in its native dtype."""
    import numpy as np

    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as img:
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LA", "1"):
                img = img.convert("RGBA" if "A" in img.mode else "RGB")
            return np.asarray(img)
    except FileNotFoundError:
        raise UserError(f"image file not found: {path}") from None
    except Exception as exc:  # any decoder failure means the file is unusable
        raise UserError(f"cannot read image {path}: {exc}") from None


def image_hw(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, reading only its header."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tuple(tif.pages[0].shape[:2])
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
            return height, width
    except FileNotFoundError:
        raise UserError(f"image file not found: {path}") from None
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def check_mask_size(mask: str | Path, image: str | Path) -> None:
    """A mask annotates the pixels of its image: their sizes must agree (headers only)."""
    mask_hw, image_hw_ = image_hw(mask), image_hw(image)
    if mask_hw != image_hw_:
        raise UserError(
            f"mask {mask} is {mask_hw[1]}x{mask_hw[0]} but image {image} "
            f"is {image_hw_[1]}x{image_hw_[0]} (width x height); they must match"
        )


def to_unit(arr):
    """Integer pixels -> float32 in [0, 1] by their bit depth (8-bit /255, else /65535)."""
    import numpy as np

    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.integer):
        # PIL reads 16-bit PNGs as uint16 or int32; both hold 16-bit values.
        return arr.astype(np.float32) / 65535.0
    return arr.astype(np.float32)


def to_color(arr):
    """`[H, W]` or `[H, W, C]` -> float32 `[3, H, W]` in [0, 1] (gray replicated, alpha dropped)."""
    import numpy as np

    unit = to_unit(arr)
    if unit.ndim == 2:
        unit = np.repeat(unit[:, :, None], 3, axis=2)
    return np.ascontiguousarray(unit[:, :, :3].transpose(2, 0, 1))


def to_gray(arr):
    """`[H, W]` or `[H, W, C]` -> float32 `[H, W]` in [0, 1] (ITU-R 601 luma for colour)."""
    unit = to_unit(arr)
    if unit.ndim == 3:
        if unit.shape[2] == 1:
            return unit[:, :, 0]
        rgb = unit[:, :, :3]
        return 0.299 * rgb[:, :, 0] + 0.587 * rgb[:, :, 1] + 0.114 * rgb[:, :, 2]
    return unit


def _eyecandies_depth_range(path: Path) -> tuple[float, float] | None:
    """(min, max) metres from the `<idx>_info_depth.yaml` beside an Eyecandies `<idx>_depth.png`."""
    if not path.stem.endswith("_depth"):
        return None
    info = path.with_name(path.stem[: -len("_depth")] + "_info_depth.yaml")
    if not info.is_file():
        return None
    import yaml

    try:
        norm = yaml.safe_load(info.read_text())["normalization"]
        return float(norm["min"]), float(norm["max"])
    except Exception as exc:
        raise UserError(f"cannot read depth range from {info}: {exc}") from None


def read_depth(path: str | Path):
    """Metric depth `[H, W]` float32 and its validity mask `[H, W]` bool.

    - TIFF `[H, W, 3]`: MVTec 3D organized point cloud; depth = z; (0, 0, 0) = missing.
    - TIFF `[H, W]`: depth in metres; 0 or non-finite = missing.
    - 16-bit PNG with an Eyecandies `info_depth` YAML beside it:
      metres = png / 65535 * (max - min) + min; every pixel valid.
    - other 16-bit PNG: millimetres; 0 = missing.
    """
    import numpy as np

    path = Path(path)
    arr = read_array(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        if arr.ndim == 3 and arr.shape[2] == 3:
            z = arr[:, :, 2].astype(np.float32)
        elif arr.ndim == 2:
            z = arr.astype(np.float32)
        else:
            raise UserError(f"depth TIFF {path} has shape {arr.shape}; expected HxW or HxWx3")
        return z, np.isfinite(z) & (z != 0)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"depth image {path} must be a single-channel 16-bit PNG or a TIFF")
    span = _eyecandies_depth_range(path)
    raw = arr.astype(np.float32)
    if span is not None:
        low, high = span
        return raw / 65535.0 * (high - low) + low, np.ones(raw.shape, dtype=bool)
    return raw / DEPTH_PNG_UNITS_PER_METRE, raw != 0


def normalize_depth(z, valid):
    """Fill missing points with the foreground mean, centre on it, scale x100 -> `[H, W]`."""
    import numpy as np

    if not valid.any():
        return np.zeros(z.shape, dtype=np.float32)
    mean = float(z[valid].mean())
    return (np.where(valid, z, mean) - mean).astype(np.float32) * DEPTH_SCALE


def resize_channels(chw, size: int, nearest: bool = False):
    """Resize float32 `[C, H, W]` to `[C, size, size]` (bilinear, or nearest for masks)."""
    import numpy as np
    from PIL import Image

    if chw.shape[1:] == (size, size):
        return chw
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    planes = [
        np.asarray(Image.fromarray(plane).resize((size, size), resample))
        for plane in chw.astype(np.float32)
    ]
    return np.stack(planes)


def load_modality(path: str | Path, modality: str, size: int, normalization: Normalization = IMAGENET):
    """One modality file -> float32 `[3, size, size]`, normalized as the modality table says
    (colour and gray: [0, 1] then `normalization`'s mean/std)."""
    import numpy as np

    decode = get_modality(modality).decode
    if decode == "depth":
        depth = resize_channels(normalize_depth(*read_depth(path))[None], size)
        return np.repeat(depth, 3, axis=0)
    arr = read_array(path)
    chw = to_color(arr) if decode == "color" else np.repeat(to_gray(arr)[None], 3, axis=0)
    chw = resize_channels(chw, size)
    mean = np.asarray(normalization[0], dtype=np.float32)[:, None, None]
    std = np.asarray(normalization[1], dtype=np.float32)[:, None, None]
    return (chw - mean) / std


def load_mask(path: str | Path, size: int):
    """Mask file -> float32 `[size, size]` in {0, 1}; any non-zero pixel is anomalous."""
    import numpy as np

    arr = read_array(path)
    fg = (arr > 0).any(axis=2) if arr.ndim == 3 else arr > 0
    return resize_channels(fg[None].astype(np.float32), size, nearest=True)[0]


def load_sample(sample: Sample, size: int, normalization: Normalization = IMAGENET):
    """A sample's modality images `[K, 3, size, size]` and mask `[size, size]`.

    The mask must have the pixel size of the sample's first modality image (masks annotate
    that image); a mismatch means mask and image do not belong together.
    """
    import numpy as np

    images = np.stack([load_modality(p, m, size, normalization) for p, m in zip(sample.paths, sample.modalities)])
    if sample.mask_path is None:
        return images, np.zeros((size, size), dtype=np.float32)
    check_mask_size(sample.mask_path, sample.paths[0])
    return images, load_mask(sample.mask_path, size)
