"""The sample record every reader produces and every consumer (Dataset, registry) reads.

Paths only, no pixels: listing a dataset must stay cheap and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One sample: its modality files in task order, its label and ground-truth mask.

    `task` is None when the reader does not know the task; the caller fills it (`with_task`).
    `mask_path` is None for good samples and for image-level-only datasets; the Dataset then
    yields an all-zero mask.
    """

    task: str | None
    cls: str
    split: str
    modalities: tuple[str, ...]
    paths: tuple[str, ...]
    label: int
    mask_path: str | None
    defect: str
    stem: str

    def with_task(self, task: str) -> "Sample":
        return replace(self, task=task)
