"""MulSen-AD (RGB and/or infrared; the point clouds are meshes, not images: out of scope)::

    <root>/<class>/RGB/train/<n>.png
    <root>/<class>/RGB/test/<type|good>/<n>.png
    <root>/<class>/RGB/GT/<type>/<n>.png  + data.csv (object, rgb_label, infrared_label, pointcloud_label)
    <root>/<class>/Infrared/{train, test/<type|good>, GT/<type>}

File names are unpadded integers (sorted numerically). A defect may show in one sensor only,
so labels are per modality. The dataset defines them in `RGB/GT/<type>/data.csv` (one row
per sample: `object` is its number, `<modality>_label` 0 or 1); where that file has a row
for a sample, its label wins. Only where it has none does the modality's own GT mask decide
(anomalous when the mask exists and has a non-zero pixel). Each sample's labels from the
file are compared with its masks; `checked_test_samples` returns the disagreements (a
label 1 with an empty or missing mask, or a label 0 with a non-empty mask) so that
`add-task` can report them.

The sample's label is 1 when any requested modality is anomalous; its mask is the first
anomalous modality's non-empty mask (the sensors are not pixel-registered, so one mask is
kept; an anomalous sample without one has no mask: all its pixels count as normal).
A modality labelled 0 contributes no mask even where its mask file has pixels set.
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
CSV_NAME = "data.csv"


def classes(root: str | Path) -> list[str]:
    return class_folders(root, tuple(SENSORS.values()), LAYOUT)


def samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
) -> list[Sample]:
    root, mods = check_request(root, list(classes), modalities, split)
    require_supported(mods, tuple(SENSORS), "mulsen")
    if split == "test":
        return checked_test_samples(root, classes, mods)[0]
    out: list[Sample] = []
    for cls in classes:
        sensors = [require_dir(root / cls / SENSORS[m], f"{m} folder") for m in mods]
        pairs = pair_by_stem([(m, s / "train") for m, s in zip(mods, sensors)])
        out.extend(
            Sample(None, cls, split, mods, tuple(map(str, files)), 0, None, GOOD, stem)
            for stem, files in pairs
        )
    return out


def checked_test_samples(
    root: str | Path, classes: Sequence[str], modalities: Sequence[str]
) -> tuple[list[Sample], list[dict]]:
    """The test samples, labelled as `data.csv` defines them, and the disagreements between
    `data.csv` and the masks: `{class, defect, stem, modality, csv_label, mask_label, mask}`
    (mask: the mask file, or None when there is none)."""
    root, mods = check_request(root, list(classes), modalities, "test")
    require_supported(mods, tuple(SENSORS), "mulsen")
    out: list[Sample] = []
    disagreements: list[dict] = []
    for cls in classes:
        sensors = [require_dir(root / cls / SENSORS[m], f"{m} folder") for m in mods]
        for kind in subdirs(require_dir(sensors[0] / "test", "test folder")):
            pairs = pair_by_stem([(m, s / "test" / kind) for m, s in zip(mods, sensors)])
            table = None if kind == GOOD else read_labels(root / cls, kind, mods)
            for stem, files in pairs:
                mask, label = None, 0
                if kind != GOOD:
                    mask, label, notes = _labels(mods, sensors, kind, stem, files, table)
                    disagreements += [{"class": cls, "defect": kind, "stem": stem, **n} for n in notes]
                out.append(Sample(None, cls, "test", mods, tuple(map(str, files)), label, mask, kind, stem))
    return out, disagreements


def read_labels(class_root: Path, kind: str, mods: Sequence[str]) -> dict[str, dict[str, int]] | None:
    """`stem -> {modality: 0|1}` from `<class>/RGB/GT/<kind>/data.csv` (or the Infrared
    copy), for the requested modalities; None when there is no such file."""
    import csv

    path = next((p for p in (class_root / SENSORS[m] / "GT" / kind / CSV_NAME for m in ("rgb", "infrared"))
                 if p.is_file()), None)
    if path is None:
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not rows:
        return {}
    wanted = ["object"] + [f"{m}_label" for m in mods]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r}; expected the columns "
                        "object, rgb_label, infrared_label, pointcloud_label")
    table: dict[str, dict[str, int]] = {}
    for line, row in enumerate(rows, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None}
        stem = Path(row["object"]).stem if "." in row["object"] else row["object"]
        labels = {}
        for m in mods:
            value = row[f"{m}_label"]
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if number not in (0.0, 1.0):
                raise UserError(f"{path} line {line}: {m}_label {value!r} is not 0 or 1")
            labels[m] = int(number)
        table[stem] = labels
    return table


def _labels(
    mods: tuple[str, ...], sensors: list[Path], kind: str, stem: str, files: tuple[Path, ...],
    table: dict[str, dict[str, int]] | None,
) -> tuple[str | None, int, list[dict]]:
    """(mask kept, label, disagreements) of one test sample in a defect folder."""
    masks = [find_mask(sensor / "GT" / kind, image.stem) for sensor, image in zip(sensors, files)]
    from_csv = None if table is None else table.get(stem)
    if from_csv is None and all(m is None for m in masks):
        expected = sensors[0] / "GT" / kind / f"{files[0].stem}.png"
        raise UserError(f"defect image {files[0]} has no mask; expected {expected}")
    chosen, label, notes = None, 0, []
    for modality, mask, image in zip(mods, masks, files):
        if mask is not None:
            check_mask_size(mask, image)
        mask_label = int(mask is not None and not mask_is_empty(mask))
        modality_label = mask_label if from_csv is None else from_csv[modality]
        if from_csv is not None and modality_label != mask_label:
            notes.append({"modality": modality, "csv_label": modality_label, "mask_label": mask_label,
                          "mask": None if mask is None else str(mask)})
        if modality_label:
            label = 1
            if chosen is None and mask_label:
                chosen = str(mask)
    return chosen, label, notes
