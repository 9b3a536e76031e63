"""MVTec 3D-AD layout (RGB + organized point cloud; also Eyecandies converted to it)::

    <root>/<class>/train/good/{rgb/NNN.png, xyz/NNN.tiff}
    <root>/<class>/validation/good/{rgb, xyz}          (not used: no split reads it)
    <root>/<class>/test/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}

Modality `rgb` reads rgb/, `depth` reads xyz/ (depth = channel z, see data.images). The stem
is shared across rgb/xyz/gt; every requested modality must hold every stem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from unimmad_cl.data.readers._files import (
    check_request,
    class_folders,
    pair_by_stem,
    require_dir,
    require_mask,
    require_supported,
    subdirs,
)
from unimmad_cl.data.records import Sample

DEFAULT_MODALITIES = ("rgb", "depth")
FOLDERS = {"rgb": "rgb", "depth": "xyz"}
GOOD = "good"
LAYOUT = "<root>/<class>/{train/good, test/<good|defect>}/{rgb, xyz, gt}"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, ("train",), LAYOUT)


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str, fmt: str = "mvtec3d"
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    require_supported(mods, tuple(FOLDERS), fmt)
    out: list[Sample] = []
    for cls in classes:
        base = root / cls
        if split == "train":
            train = require_dir(base / "train" / GOOD, "training folder")
            out.extend(_folder_samples(train, cls, split, mods, GOOD))
            continue
        test = require_dir(base / "test", "test folder")
        for defect in subdirs(test):
            out.extend(_folder_samples(test / defect, cls, split, mods, defect))
    return out


def _folder_samples(folder: Path, cls: str, split: str, mods: tuple[str, ...], defect: str) -> list[Sample]:
    """Samples of one `<split>/<defect>` folder; defect samples need `gt/<stem>.png`."""
    out = []
    for stem, files in pair_by_stem([(m, folder / FOLDERS[m]) for m in mods]):
        paths = tuple(str(p) for p in files)
        if defect == GOOD:
            out.append(Sample(None, cls, split, mods, paths, 0, None, GOOD, stem))
        else:
            mask = require_mask(folder / "gt", files[0])
            out.append(Sample(None, cls, split, mods, paths, 1, str(mask), defect, stem))
    return out
