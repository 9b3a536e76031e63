"""BraTS multi-sequence slices: four MRI sequences are the four modalities of one sample::

    <root>/<class>/{train,test}/**/<case>_flair.png   (and _t1, _t1ce, _t2)
    <root>/<class>/{train,test}/**/<case>_seg.png     (segmentation; any tumour label = anomalous)

Files are grouped by `<case>` within a folder (any depth below the split folder; suffixes
match case-insensitively). A sample is anomalous when its seg mask has a non-zero pixel.
A test slice without a seg file is accepted only below a folder named `good`; a train slice
whose seg shows a tumour is an error (training data must be normal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from unimmad_cl.data.images import check_mask_size
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

DEFAULT_MODALITIES = ("mri_flair", "mri_t1", "mri_t1ce", "mri_t2")
SEQUENCES = {"mri_flair": "flair", "mri_t1": "t1", "mri_t1ce": "t1ce", "mri_t2": "t2"}
SEG = "seg"
LAYOUT = "<root>/<class>/{train,test}/**/<case>_{flair,t1,t1ce,t2,seg}.png"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, ("train", "test"), LAYOUT)


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    require_supported(mods, tuple(SEQUENCES), "brats")
    out: list[Sample] = []
    for cls in classes:
        split_dir = require_dir(root / cls / split, f"{split} folder")
        for (folder, case), files in sorted(_cases(split_dir).items(), key=_case_order):
            out.append(_sample(folder, case, files, cls, split, mods, split_dir))
    return out


def _case_order(item) -> list:
    (folder, case), _ = item
    return natural_key(str(folder)) + natural_key(case)


def _cases(split_dir: Path) -> dict[tuple[Path, str], dict[str, Path]]:
    """`(folder, case) -> {sequence or 'seg': file}` for every `<case>_<sequence>.png` below."""
    known = set(SEQUENCES.values()) | {SEG}
    cases: dict[tuple[Path, str], dict[str, Path]] = {}
    for path in split_dir.rglob("*"):
        if path.suffix.lower() != ".png" or "_" not in path.stem:
            continue
        case, suffix = path.stem.rsplit("_", 1)
        if suffix.lower() in known:
            cases.setdefault((path.parent, case), {})[suffix.lower()] = path
    return cases


def _sample(
    folder: Path, case: str, files: dict[str, Path], cls: str, split: str,
    mods: tuple[str, ...], split_dir: Path,
) -> Sample:
    """One case: every requested sequence required; the label comes from the seg mask."""
    paths = []
    for name in mods:
        if SEQUENCES[name] not in files:
            raise UserError(f"{name} file missing for case {case!r}: expected {folder / case}_{SEQUENCES[name]}.png")
        paths.append(str(files[SEQUENCES[name]]))
    seg = files.get(SEG)
    if seg is None:
        if split == "test" and "good" not in folder.relative_to(split_dir).parts:
            raise UserError(f"test case {folder / case} has no segmentation mask {folder / case}_seg.png")
        return Sample(None, cls, split, mods, tuple(paths), 0, None, "good", case)
    check_mask_size(seg, paths[0])
    if mask_is_empty(seg):
        return Sample(None, cls, split, mods, tuple(paths), 0, None, "good", case)
    if split == "train":
        raise UserError(f"training case {folder / case} shows a tumour in {seg}; train slices must be normal")
    return Sample(None, cls, split, mods, tuple(paths), 1, str(seg), "tumour", case)
