"""The generic multi-modal folder layout (the user's own data; what `synth` writes)::

    <root>/<class>/train/good/<modality>/<stem>.<ext>
    <root>/<class>/test/<good|defect>/<modality>/<stem>.<ext>
    <root>/<class>/ground_truth/<defect>/<stem>.png      (<stem>_mask.png also accepted)

`<modality>` folders are named after the modality table (rgb, depth, infrared, ...). Every
modality folder of a `<split>/<defect>` folder must hold the same stems; masks annotate the
pixel grid of the first modality. Depth is a float32 TIFF in metres (HxW, or HxWx3 xyz) or a
16-bit PNG in millimetres; 0 means no measurement.
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
    subdirs,
)
from unimmad_cl.data.records import Sample

DEFAULT_MODALITIES: tuple[str, ...] = ()  # the user's data: the task names its modalities
GOOD = "good"
LAYOUT = "<root>/<class>/{train/good, test/<good|defect>}/<modality>/<stem>.<ext>"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, ("train",), LAYOUT)


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    out: list[Sample] = []
    for cls in classes:
        base = root / cls
        if split == "train":
            train = require_dir(base / "train" / GOOD, "training folder")
            out.extend(_group_samples(base, train, cls, split, mods, GOOD))
            continue
        test = require_dir(base / "test", "test folder")
        for defect in subdirs(test):
            out.extend(_group_samples(base, test / defect, cls, split, mods, defect))
    return out


def _group_samples(
    base: Path, group: Path, cls: str, split: str, mods: tuple[str, ...], defect: str
) -> list[Sample]:
    """Samples of one `<split>/<defect>` folder; defect samples need a ground-truth mask."""
    out = []
    for stem, files in pair_by_stem([(m, group / m) for m in mods]):
        paths = tuple(str(p) for p in files)
        if defect == GOOD:
            out.append(Sample(None, cls, split, mods, paths, 0, None, GOOD, stem))
        else:
            mask = require_mask(base / "ground_truth" / defect, files[0])
            out.append(Sample(None, cls, split, mods, paths, 1, str(mask), defect, stem))
    return out
