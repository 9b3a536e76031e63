"""Eyecandies, raw or converted to the MVTec 3D layout.

Raw layout (per class)::

    <root>/<Class>/{train, val, test_public}/data/<idx>_<item>.<ext>

with items `image_0..image_5` (RGB under six lightings), `depth` (16-bit PNG, de-normalized
with `<idx>_info_depth.yaml`, see data.images), `normals`, `mask`, ... The `rgb` modality
reads `image_4` (the lighting the common MVTec-3D conversion copies), `depth` reads `depth`,
`normals` reads `normals`. train -> `train/`, test -> `test_public/` (`val/` is not used).
A test sample is anomalous when its `<idx>_mask.png` has a non-zero pixel.

A class folder holding `train/good/` instead of `train/data/` is the converted tree and is
read by the MVTec 3D reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from unimmad_cl.data.images import check_mask_size
from unimmad_cl.data.readers import mvtec3d
from unimmad_cl.data.readers._files import (
    check_request,
    class_folders,
    mask_is_empty,
    natural_key,
    require_dir,
    require_supported,
)
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError

DEFAULT_MODALITIES = ("rgb", "depth")
ITEMS = {"rgb": "image_4", "depth": "depth", "normals": "normals"}
SPLIT_FOLDERS = {"train": "train", "test": "test_public"}
LAYOUT = "<root>/<Class>/{train, test_public}/data/<idx>_<item>.png (or the MVTec 3D layout)"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, ("train",), LAYOUT)


def is_converted(class_dir: Path) -> bool:
    return (class_dir / "train" / "good").is_dir()


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    out: list[Sample] = []
    for cls in classes:
        if is_converted(root / cls):
            out.extend(mvtec3d.samples(root, [cls], mods, split, fmt="eyecandies"))
            continue
        require_supported(mods, tuple(ITEMS), "eyecandies")
        data = require_dir(root / cls / SPLIT_FOLDERS[split] / "data", "Eyecandies data folder")
        out.extend(_raw_samples(data, cls, mods, split))
    return out


def _raw_samples(data: Path, cls: str, mods: tuple[str, ...], split: str) -> list[Sample]:
    """One sample per `<idx>` holding the first requested item; test labels come from the mask."""
    indices = sorted(
        {p.name.split("_", 1)[0] for p in data.glob(f"*_{ITEMS[mods[0]]}.png")}, key=natural_key
    )
    out = []
    for idx in indices:
        paths = []
        for name in mods:
            path = data / f"{idx}_{ITEMS[name]}.png"
            if not path.is_file():
                raise UserError(f"{name} file missing for sample {idx} of {data}: expected {path}")
            paths.append(str(path))
        label, mask = 0, None
        if split == "test":
            mask_path = data / f"{idx}_mask.png"
            if not mask_path.is_file():
                raise UserError(f"test sample {idx} of {data} has no mask: expected {mask_path}")
            check_mask_size(mask_path, paths[0])
            if not mask_is_empty(mask_path):
                label, mask = 1, str(mask_path)
        defect = "bad" if label else "good"
        out.append(Sample(None, cls, split, mods, tuple(paths), label, mask, defect, idx))
    return out
