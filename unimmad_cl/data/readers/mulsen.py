"""MulSen-AD (RGB and/or infrared; the point clouds are meshes, not images: out of scope)::

    <root>/<class>/RGB/train/<n>.png
    <root>/<class>/RGB/test/<type|good>/<n>.png
    <root>/<class>/RGB/GT/<type>/<n>.png
    <root>/<class>/Infrared/{train, test/<type|good>, GT/<type>}

File names are unpadded integers (sorted numerically). A defect may show in one sensor only,
so each modality's own GT mask decides its label: a sample in a `<type>` folder is anomalous
for a modality when that modality's mask exists and has a non-zero pixel. The sample's label
is 1 when any requested modality is anomalous; its mask is the first such modality's mask
(the sensors are not pixel-registered, so one mask is kept). The per-modality labels in
`data.csv` agree with the masks by construction and are not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from unimmad_cl.data.images import check_mask_size
from unimmad_cl.data.readers._files import (
    check_request,
    class_folders,
    find_mask,
    mask_is_empty,
    pair_by_stem,
    require_dir,
    require_supported,
    subdirs,
)
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError

DEFAULT_MODALITIES = ("infrared",)  # what the UniMMAD paper uses
SENSORS = {"rgb": "RGB", "infrared": "Infrared"}
GOOD = "good"
LAYOUT = "<root>/<class>/{RGB, Infrared}/{train, test/<type|good>, GT/<type>}"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, tuple(SENSORS.values()), LAYOUT)


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    require_supported(mods, tuple(SENSORS), "mulsen")
    out: list[Sample] = []
    for cls in classes:
        sensors = [require_dir(root / cls / SENSORS[m], f"{m} folder") for m in mods]
        if split == "train":
            pairs = pair_by_stem([(m, s / "train") for m, s in zip(mods, sensors)])
            out.extend(
                Sample(None, cls, split, mods, tuple(map(str, files)), 0, None, GOOD, stem)
                for stem, files in pairs
            )
            continue
        for kind in subdirs(require_dir(sensors[0] / "test", "test folder")):
            pairs = pair_by_stem([(m, s / "test" / kind) for m, s in zip(mods, sensors)])
            for stem, files in pairs:
                mask = None if kind == GOOD else _first_anomalous_mask(mods, sensors, kind, files)
                label = int(mask is not None)
                out.append(Sample(None, cls, split, mods, tuple(map(str, files)), label, mask, kind, stem))
    return out


def _first_anomalous_mask(
    mods: tuple[str, ...], sensors: list[Path], kind: str, files: tuple[Path, ...]
) -> str | None:
    """The first requested modality's non-empty GT mask; error if no modality has a mask file."""
    masks = [find_mask(sensor / "GT" / kind, image.stem) for sensor, image in zip(sensors, files)]
    if all(m is None for m in masks):
        expected = sensors[0] / "GT" / kind / f"{files[0].stem}.png"
        raise UserError(f"defect image {files[0]} has no mask; expected {expected}")
    for mask, image in zip(masks, files):
        if mask is not None:
            check_mask_size(mask, image)
            if not mask_is_empty(mask):
                return str(mask)
    return None
