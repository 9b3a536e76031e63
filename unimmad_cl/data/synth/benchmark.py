"""The synthetic multi-modal benchmark: its tasks, and writing them in the `folder` layout.

Seven tasks mimic the paper's fields and modality sets (industrial RGB textures, RGB+depth
objects, infrared parts, 4-sequence MRI, gray CT/OCT). Every sample is drawn from its own
generator seeded by `(seed, task, class, split, index)`, so the output is a pure function of
the arguments: the same seed gives identical bytes, and `--train 50` extends `--train 24`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from unimmad_cl.data.synth import scenes
from unimmad_cl.errors import UserError

DEFAULT_IMAGE_SIZE = 64
DEFAULT_TRAIN, DEFAULT_TEST = 24, 16
LARGE_TRAIN, LARGE_TEST = 200, 100
SPLIT_IDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class SynthClass:
    name: str
    render: Callable
    defects: tuple[str, ...]


@dataclass(frozen=True)
class SynthTask:
    name: str
    field: str
    modalities: tuple[str, ...]
    classes: tuple[SynthClass, ...]
    loss_weight: float = 1.0


TASKS: tuple[SynthTask, ...] = (
    SynthTask("fabric", "industrial", ("rgb",), (
        SynthClass("weave", scenes.weave, ("scratch", "broken_thread", "stain")),
        SynthClass("leather", scenes.leather, ("scratch", "fold", "stain")),
    )),
    SynthTask("tiles", "industrial", ("rgb",), (
        SynthClass("ceramic", scenes.ceramic, ("crack", "chip", "stain")),
        SynthClass("marble", scenes.marble, ("crack", "spot", "stain")),
    )),
    SynthTask("bagel_rgbd", "industrial", ("rgb", "depth"), (
        SynthClass("bagel", scenes.bagel, ("dent", "stain", "crack")),
        SynthClass("cookie", scenes.cookie, ("dent", "stain", "crack")),
    )),
    SynthTask("pcb_ir", "industrial", ("infrared",), (
        SynthClass("pcb", scenes.pcb, ("hotspot", "short", "cold_part")),
        SynthClass("cube", scenes.cube, ("hotspot", "void", "crack")),
    )),
    SynthTask("brain_mri", "medical", ("mri_flair", "mri_t1", "mri_t1ce", "mri_t2"), (
        SynthClass("brain", scenes.brain, ("tumour", "edema")),
    )),
    SynthTask("liver_ct", "medical", ("ct",), (SynthClass("liver", scenes.liver, ("lesion", "cyst")),)),
    SynthTask("retina_oct", "medical", ("oct",), (SynthClass("retina", scenes.retina, ("fluid", "drusen")),)),
)


def sample_rng(seed: int, task: int, cls: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, task, cls, SPLIT_IDS[split], index])


def defect_plan(defects: tuple[str, ...], count: int) -> list[str | None]:
    """The defect of each test index: the first half good (None), then defects in turn."""
    good = (count + 1) // 2
    return [None] * good + [defects[i % len(defects)] for i in range(count - good)]


def _to_u8(unit: np.ndarray) -> np.ndarray:
    return (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_modality(path_no_ext: Path, modality: str, array: np.ndarray) -> Path:
    """Write one modality image; returns the file written.

    colour -> 8-bit RGB PNG; CT -> 16-bit PNG (CT has more than 8 bits of contrast);
    other gray -> 8-bit PNG; depth -> float32 TIFF in metres.
    """
    from PIL import Image

    if modality == "depth":
        import tifffile

        path = path_no_ext.with_suffix(".tiff")
        tifffile.imwrite(path, array.astype(np.float32))
        return path
    path = path_no_ext.with_suffix(".png")
    if modality == "ct":
        pixels = (np.clip(array, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        Image.fromarray(pixels).save(path)
    else:
        Image.fromarray(_to_u8(array)).save(path)
    return path


def save_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_sample(class_dir: Path, split: str, defect: str | None, stem: str, images: dict, mask: np.ndarray) -> None:
    group = class_dir / split / (defect or "good")
    for modality, array in images.items():
        (group / modality).mkdir(parents=True, exist_ok=True)
        save_modality(group / modality / stem, modality, array)
    if defect is not None:
        if not mask.any():
            raise RuntimeError(f"synthetic defect {defect!r} of {class_dir.name} produced an empty mask")
        gt = class_dir / "ground_truth" / defect
        gt.mkdir(parents=True, exist_ok=True)
        save_mask(gt / f"{stem}.png", mask)


def write_task(root: Path, task_index: int, task: SynthTask, seed: int, size: int, n_train: int, n_test: int) -> None:
    """All classes of one task under `root/<task.name>/<class>/...` (folder layout)."""
    for cls_index, cls in enumerate(task.classes):
        class_dir = root / task.name / cls.name
        plan = [("train", i, None) for i in range(n_train)]
        plan += [("test", i, d) for i, d in enumerate(defect_plan(cls.defects, n_test))]
        for split, index, defect in plan:
            rng = sample_rng(seed, task_index, cls_index, split, index)
            images, mask = cls.render(rng, size, defect)
            ordered = {m: images[m] for m in task.modalities}
            write_sample(class_dir, split, defect, f"{index:03d}", ordered, mask)


def task_entries(tasks: tuple[SynthTask, ...] = TASKS) -> list[dict]:
    """The `tasks.yaml` mappings (roots relative to the YAML file's folder)."""
    return [
        {
            "name": t.name,
            "format": "folder",
            "root": t.name,
            "modalities": list(t.modalities),
            "classes": [c.name for c in t.classes],
            "field": t.field,
            "loss_weight": float(t.loss_weight),
        }
        for t in tasks
    ]


def write_benchmark(
    out: str | Path,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    n_train: int = DEFAULT_TRAIN,
    n_test: int = DEFAULT_TEST,
    overwrite: bool = False,
) -> list[dict]:
    """Write every task and `<out>/tasks.yaml`; returns the task entries.

    Written into a sibling temporary folder and renamed into place at the end, so a failure
    leaves nothing behind and `out` is either absent, untouched or complete.
    """
    import yaml

    out = Path(out)
    if image_size < 32:
        raise UserError(f"--image-size must be at least 32, got {image_size}")
    if n_train < 1:
        raise UserError(f"--train must be at least 1, got {n_train}")
    if n_test < 2:
        raise UserError(f"--test must be at least 2 (good and defect samples), got {n_test}")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        for index, task in enumerate(TASKS):
            write_task(staging, index, task, seed, image_size, n_train, n_test)
        entries = task_entries()
        (staging / "tasks.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return entries


def _replace(staging: Path, out: Path) -> None:
    """Move `staging` to `out`, swapping out an existing `out` only once the new one is ready."""
    if out.exists():
        retired = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired)
    else:
        staging.rename(out)
