"""The modality table: every image modality the platform knows, and how it is decoded.

Adding a modality is one entry in `MODALITIES`. `decode` selects how `unimmad_cl.data.images`
turns the file into a 3-channel, normalized float image:

- ``color``: read as RGB (gray files are replicated), scaled to [0, 1], ImageNet mean/std;
- ``gray``: read as one channel (RGB files are converted to luma; 8-bit / 255, 16-bit / 65535),
  repeated 3x, ImageNet mean/std;
- ``depth``: read as metric depth (MVTec 3D xyz TIFF channel z, float TIFF, or 16-bit PNG),
  missing points filled with the foreground mean, centred on it, scaled x100, repeated 3x.

No numpy/PIL/torch import here: the registry CLI imports this table and must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from unimmad_cl.errors import UserError

# The model's general input holds at most this many modality slots (4 x 3 = 12 channels).
MAX_MODALITIES = 4

@dataclass(frozen=True)
class Modality:
    """One row of the table: `name` as written in task definitions, `decode` (see module doc)."""

    name: str
    decode: str
    description: str


def _table(*rows: Modality) -> dict[str, Modality]:
    return {row.name: row for row in rows}


MODALITIES: dict[str, Modality] = _table(
    Modality("rgb", "color", "colour camera image (MVTec AD, VisA, MVTec 3D, Eyecandies, MulSen)"),
    Modality("gray", "gray", "generic single-channel image"),
    Modality("depth", "depth", "depth map / organized point cloud (MVTec 3D xyz, Eyecandies)"),
    Modality("normals", "color", "surface normals encoded as RGB (Eyecandies)"),
    Modality("infrared", "gray", "thermography image (MulSen-AD)"),
    Modality("xray", "gray", "X-ray radiograph (BMAD chest)"),
    Modality("ct", "gray", "CT slice (BMAD liver)"),
    Modality("oct", "gray", "optical coherence tomography B-scan (BMAD RESC, OCT2017)"),
    Modality("endoscopy", "color", "endoscopic colour image"),
    Modality("histopathology", "color", "stained tissue patch (BMAD Camelyon16)"),
    Modality("mri_flair", "gray", "MRI FLAIR sequence (BraTS)"),
    Modality("mri_t1", "gray", "MRI T1-weighted sequence (BraTS)"),
    Modality("mri_t1ce", "gray", "MRI contrast-enhanced T1 sequence (BraTS)"),
    Modality("mri_t2", "gray", "MRI T2-weighted sequence (BraTS)"),
)


def get_modality(name: str) -> Modality:
    """The table row for `name`; UserError listing the known names otherwise."""
    try:
        return MODALITIES[name]
    except KeyError:
        known = ", ".join(MODALITIES)
        raise UserError(f"unknown modality {name!r}; known modalities: {known}") from None


def check_modalities(modalities: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate an ordered modality list of a task: 1..MAX_MODALITIES known, distinct names."""
    mods = tuple(modalities)
    if not 1 <= len(mods) <= MAX_MODALITIES:
        raise UserError(
            f"a task needs 1 to {MAX_MODALITIES} modalities, got {len(mods)}: {list(mods)}"
        )
    for name in mods:
        get_modality(name)
    if len(set(mods)) != len(mods):
        raise UserError(f"modalities must be distinct, got {list(mods)}")
    return mods
