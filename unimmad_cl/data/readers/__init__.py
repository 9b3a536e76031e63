"""Readers: one module per dataset layout, each listing `Sample` records (no pixels, no torch).

A reader module provides
- `DEFAULT_MODALITIES`: the modality list a task of this format gets when none is given
  (empty for `folder`, whose modalities are the user's);
- `classes(root) -> list[str]`;
- `samples(root, classes, modalities, split) -> list[Sample]` with split "train" or "test".
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, Sequence

from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError

FORMATS = ("mvtec", "visa", "mvtec3d", "eyecandies", "mulsen", "bmad", "brats", "folder")


class Reader(Protocol):
    DEFAULT_MODALITIES: tuple[str, ...]

    def classes(self, root: str | Path) -> list[str]: ...

    def samples(
        self, root: str | Path, classes: Sequence[str], modalities: Sequence[str], split: str
    ) -> list[Sample]: ...


def get_reader(fmt: str) -> Reader:
    """The reader module of format `fmt`; UserError listing the formats otherwise."""
    if fmt not in FORMATS:
        raise UserError(f"unknown dataset format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{fmt}")


def list_samples(
    fmt: str,
    root: str | Path,
    modalities: Sequence[str],
    split: str,
    classes: Sequence[str] | None = None,
    task: str | None = None,
) -> list[Sample]:
    """Samples of one split of a task; all classes found under `root` when `classes` is None."""
    reader = get_reader(fmt)
    chosen = list(classes) if classes else reader.classes(root)
    found = reader.samples(root, chosen, list(modalities), split)
    return [s.with_task(task) for s in found] if task is not None else found
