"""MVTec AD layout (one RGB image per sample)::

    <root>/<class>/train/good/*.png
    <root>/<class>/test/<good|defect>/*.png
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png   (some copies: <stem>.png)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from unimmad_cl.data.readers._files import (
    check_request,
    class_folders,
    list_images,
    require_dir,
    require_mask,
    single_image_modality,
    subdirs,
)
from unimmad_cl.data.records import Sample

DEFAULT_MODALITIES = ("rgb",)
GOOD = "good"
LAYOUT = "<root>/<class>/{train/good, test/<good|defect>, ground_truth/<defect>}"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, ("train",), LAYOUT)


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    single_image_modality(mods, "mvtec")
    out: list[Sample] = []
    for cls in classes:
        out.extend(_class_samples(root / cls, cls, mods, split))
    return out


def _class_samples(base: Path, cls: str, mods: tuple[str, ...], split: str) -> list[Sample]:
    """Samples of one class folder; defect images need a mask under ground_truth/<defect>/."""
    if split == "train":
        folder = require_dir(base / "train" / GOOD, "training folder")
        return [
            Sample(None, cls, split, mods, (str(p),), 0, None, GOOD, p.stem)
            for p in list_images(folder)
        ]
    test = require_dir(base / "test", "test folder")
    out = []
    for defect in subdirs(test):
        for image in list_images(test / defect):
            if defect == GOOD:
                out.append(Sample(None, cls, split, mods, (str(image),), 0, None, GOOD, image.stem))
            else:
                mask = require_mask(base / "ground_truth" / defect, image)
                out.append(
                    Sample(None, cls, split, mods, (str(image),), 1, str(mask), defect, image.stem)
                )
    return out
