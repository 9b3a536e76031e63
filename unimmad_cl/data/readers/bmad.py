"""BMAD medical benchmark (one gray image per sample)::

    <root>/<Category>/train/good/*.png
    <root>/<Category>/test/good/img/*.png
    <root>/<Category>/test/Ungood/img/*.png
    <root>/<Category>/test/Ungood/label/*.png          (some copies: anomaly_mask/)

Image-level-only categories (e.g. OCT2017) are flat: `test/{good,Ungood}/*.png`; their
anomalous samples have no mask. `valid/` is not read. Masks match images by stem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from unimmad_cl.data.images import check_mask_size
from unimmad_cl.data.readers._files import (
    check_request,
    class_folders,
    find_mask,
    list_images,
    require_dir,
    single_image_modality,
)
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError

DEFAULT_MODALITIES = ("gray",)
GOOD, BAD = "good", "Ungood"
MASK_FOLDERS = ("label", "anomaly_mask")
LAYOUT = "<root>/<Category>/{train/good, test/{good,Ungood}/img, test/Ungood/label}"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, ("train",), LAYOUT)


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    single_image_modality(mods, "bmad")
    out: list[Sample] = []
    for cls in classes:
        base = root / cls
        if split == "train":
            folder = require_dir(base / "train" / GOOD, "training folder")
            out.extend(_samples(folder, cls, split, mods, GOOD, None))
            continue
        test = require_dir(base / "test", "test folder")
        pixel_level = (test / BAD / "img").is_dir()
        for kind in (GOOD, BAD):
            folder = require_dir(test / kind / "img" if pixel_level else test / kind, f"{kind} folder")
            masks = _mask_folder(test / BAD) if pixel_level and kind == BAD else None
            out.extend(_samples(folder, cls, split, mods, kind, masks))
    return out


def _mask_folder(bad: Path) -> Path:
    for name in MASK_FOLDERS:
        if (bad / name).is_dir():
            return bad / name
    raise UserError(f"defect images in {bad / 'img'} have no masks; expected {bad / 'label'}")


def _samples(
    folder: Path, cls: str, split: str, mods: tuple[str, ...], kind: str, masks: Path | None
) -> list[Sample]:
    """Samples of one image folder; with a mask folder, each image needs its mask."""
    out = []
    for image in list_images(folder):
        label = int(kind == BAD)
        mask = None
        if masks is not None:
            mask = find_mask(masks, image.stem)
            if mask is None:
                raise UserError(f"defect image {image} has no mask; expected {masks / image.name}")
            check_mask_size(mask, image)
        out.append(
            Sample(None, cls, split, mods, (str(image),), label, str(mask) if mask else None, kind, image.stem)
        )
    return out
