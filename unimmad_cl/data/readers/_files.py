"""File-tree helpers shared by the readers: listing, natural sort, required folders and masks.

Every failure is a UserError that names the path and what was expected there.
"""

from __future__ import annotations

import re
from pathlib import Path

from unimmad_cl.data.images import check_mask_size
from unimmad_cl.data.modalities import check_modalities, get_modality
from unimmad_cl.data.records import SPLITS
from unimmad_cl.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def natural_key(name: str) -> list:
    """Sort key that orders '2.png' before '10.png' (MulSen names are unpadded integers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} not found: {path}")
    return path


def subdirs(directory: Path) -> list[str]:
    """Names of the visible sub-folders, naturally sorted."""
    return sorted(
        (p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=natural_key,
    )


def list_images(directory: Path) -> list[Path]:
    """Image files directly in `directory` (any case of suffix), naturally sorted by name."""
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def images_by_stem(directory: Path) -> dict[str, Path]:
    """`stem -> file` for the images in `directory`; two files with one stem are ambiguous."""
    found: dict[str, Path] = {}
    for path in list_images(directory):
        if path.stem in found:
            raise UserError(f"two files share the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def find_mask(gt_dir: Path, stem: str) -> Path | None:
    """The mask for `stem` in `gt_dir`: `<stem>.png` or MVTec's `<stem>_mask.png` (any suffix case)."""
    if not gt_dir.is_dir():
        return None
    wanted = {stem.lower(), f"{stem}_mask".lower()}
    for path in sorted(gt_dir.iterdir()):
        if path.suffix.lower() in MASK_SUFFIXES and path.stem.lower() in wanted:
            return path
    return None


def require_mask(gt_dir: Path, image: Path) -> Path:
    """The mask of a defect image, which must exist and have the image's size."""
    mask = find_mask(gt_dir, image.stem)
    if mask is None:
        raise UserError(
            f"defect image {image} has no mask; expected {gt_dir / (image.stem + '.png')} "
            f"or {gt_dir / (image.stem + '_mask.png')}"
        )
    check_mask_size(mask, image)
    return mask


def mask_is_empty(path: Path) -> bool:
    """True when the mask has no non-zero pixel (reads the file; PIL imported lazily)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.getbbox() is None
    except Exception as exc:
        raise UserError(f"cannot read mask {path}: {exc}") from None


def check_request(root: str | Path, classes: list[str], modalities, split: str) -> tuple[Path, tuple[str, ...]]:
    """Common argument checks of `samples()`: root exists, split known, classes given, modalities valid."""
    root = require_dir(Path(root), "dataset root")
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not classes:
        raise UserError(f"no classes given for {root}")
    for cls in classes:
        require_dir(root / cls, f"class folder {cls!r}")
    return root, check_modalities(modalities)


def require_supported(modalities: tuple[str, ...], supported: tuple[str, ...], fmt: str) -> None:
    for name in modalities:
        if name not in supported:
            raise UserError(
                f"format {fmt!r} has no modality {name!r}; it provides: {', '.join(supported)}"
            )


def single_image_modality(modalities: tuple[str, ...], fmt: str) -> None:
    """Single-image formats (MVTec AD, VisA, BMAD): exactly one non-depth modality names the images."""
    if len(modalities) != 1 or get_modality(modalities[0]).decode == "depth":
        raise UserError(
            f"format {fmt!r} holds one image per sample: give exactly one image modality "
            f"(e.g. rgb, gray, ct), got {list(modalities)}"
        )


def class_folders(root: str | Path, markers: tuple[str, ...], layout: str) -> list[str]:
    """Sub-folders of `root` holding any of `markers` (e.g. 'train'); UserError if none do."""
    root = require_dir(Path(root), "dataset root")
    found = [n for n in subdirs(root) if any((root / n / m).exists() for m in markers)]
    if not found:
        raise UserError(f"no class folders under {root}; expected {layout}")
    return found


def pair_by_stem(folders: list[tuple[str, Path]]) -> list[tuple[str, tuple[Path, ...]]]:
    """Match the files of per-modality folders by stem: `[(stem, (path per modality))]`.

    `folders` is `[(modality, folder)]` in task order. Every folder must hold the same stems;
    a stem missing from one folder is an error naming the partner that exists and the file
    that was expected.
    """
    files = [images_by_stem(require_dir(folder, f"{name} folder")) for name, folder in folders]
    stems = sorted(set().union(*files), key=natural_key)
    for stem in stems:
        for (name, folder), found in zip(folders, files):
            if stem not in found:
                partner = next(f[stem] for f in files if stem in f)
                raise UserError(
                    f"{name} file missing for {partner}: expected {folder / stem}.<ext>"
                )
    return [(stem, tuple(found[stem] for found in files)) for stem in stems]
