"""torch side of the data: Datasets over `Sample`s, the collate into a `Batch`, the sampler.

A `Batch` is what the model takes (see docs/CONTRACTS.md):
  images        float32 [B, M, 3, H, W]   M = MAX_MODALITIES; present slots first, zeros after
  modality_mask bool    [B, M]
  mask          float32 [B, H, W]         ground truth in {0, 1}
  label         long    [B]
  task_id       long    [B]
  class_id      long    [B]               index of the sample's class in its task's class list
  loss_weight   float32 [B]
  samples       list[Sample]
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, fields
from typing import Hashable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from unimmad_cl.data.images import IMAGENET, Normalization, load_sample
from unimmad_cl.data.modalities import MAX_MODALITIES, check_modalities
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError


@dataclass
class Batch:
    images: torch.Tensor
    modality_mask: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor
    task_id: torch.Tensor
    class_id: torch.Tensor
    loss_weight: torch.Tensor
    samples: list[Sample]

    @property
    def general_input(self) -> torch.Tensor:
        """The padded modality stack `[B, M*3, H, W]` the general encoder takes."""
        return self.images.flatten(1, 2)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if f.name != "samples"
        }
        return Batch(**moved, samples=self.samples)

    def __len__(self) -> int:
        return len(self.samples)


class TaskDataset(Dataset):
    """The samples of one task, loaded at `image_size` x `image_size`.

    Items are dicts: images `[K, 3, S, S]` (K = the sample's modality count), mask `[S, S]`,
    and the scalars label / task_id / class_id / loss_weight, plus the `Sample` itself.
    `classes` fixes the class ids (pass the same list for the train and the test split);
    `normalization` is the model's (`UniMMAD.normalization`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        task_id: int = 0,
        loss_weight: float = 1.0,
        classes: Sequence[str] | None = None,
        normalization: Normalization = IMAGENET,
    ) -> None:
        if image_size < 8:
            raise UserError(f"image size must be at least 8 pixels, got {image_size}")
        self.samples = list(samples)
        for sample in self.samples:
            check_modalities(sample.modalities)
        self.image_size = image_size
        self.normalization = normalization
        self.task_id = task_id
        self.loss_weight = float(loss_weight)
        self.classes = list(classes) if classes is not None else sorted({s.cls for s in self.samples})
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        unknown = {s.cls for s in self.samples} - set(self._class_index)
        if unknown:
            raise UserError(f"samples of classes {sorted(unknown)} are not in the class list {self.classes}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        images, mask = load_sample(sample, self.image_size, self.normalization)
        return {
            "images": torch.from_numpy(images),
            "mask": torch.from_numpy(mask),
            "label": sample.label,
            "task_id": self.task_id,
            "class_id": self._class_index[sample.cls],
            "loss_weight": self.loss_weight,
            "sample": sample,
        }

    def class_keys(self) -> list[tuple[int, str]]:
        """`(task_id, class)` per item: the key the class-balanced sampler counts."""
        return [(self.task_id, s.cls) for s in self.samples]


class MultiTaskDataset(Dataset):
    """Several `TaskDataset`s (same image size) behind one index, in the given order:
    the stage's own tasks first, then the replay buffers of earlier tasks (`replay`)."""

    def __init__(self, datasets: Sequence[TaskDataset], replay: Sequence[TaskDataset] = ()) -> None:
        self.num_replay_items = sum(len(d) for d in replay)
        datasets = list(datasets) + list(replay)
        if not datasets:
            raise UserError("no task datasets given")
        sizes = {d.image_size for d in datasets}
        if len(sizes) != 1:
            raise UserError(f"task datasets must share one image size, got {sorted(sizes)}")
        self.datasets = list(datasets)
        self.image_size = sizes.pop()
        self._offsets = []
        total = 0
        for d in self.datasets:
            self._offsets.append(total)
            total += len(d)
        self._length = total

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._length:
            raise IndexError(index)
        position = bisect.bisect_right(self._offsets, index) - 1
        return self.datasets[position][index - self._offsets[position]]

    def class_keys(self) -> list[tuple[int, str]]:
        return [key for d in self.datasets for key in d.class_keys()]

    def replay_flags(self) -> list[bool]:
        """True for the items that come from replay buffers (they are last)."""
        return [False] * (self._length - self.num_replay_items) + [True] * self.num_replay_items


def collate(items: Sequence[dict]) -> Batch:
    """Stack dataset items into a `Batch`, zero-padding modality slots up to MAX_MODALITIES."""
    first = items[0]["images"]
    size = first.shape[-1]
    images = torch.zeros(len(items), MAX_MODALITIES, 3, size, size, dtype=first.dtype)
    modality_mask = torch.zeros(len(items), MAX_MODALITIES, dtype=torch.bool)
    for row, item in enumerate(items):
        count = item["images"].shape[0]
        images[row, :count] = item["images"]
        modality_mask[row, :count] = True
    return Batch(
        images=images,
        modality_mask=modality_mask,
        mask=torch.stack([item["mask"] for item in items]),
        label=torch.tensor([item["label"] for item in items], dtype=torch.long),
        task_id=torch.tensor([item["task_id"] for item in items], dtype=torch.long),
        class_id=torch.tensor([item["class_id"] for item in items], dtype=torch.long),
        loss_weight=torch.tensor([item["loss_weight"] for item in items], dtype=torch.float32),
        samples=[item["sample"] for item in items],
    )


def class_balanced_weights(class_keys: Sequence[Hashable]) -> list[float]:
    """Per item 1 / (items of its class) / (classes): every class weighs 1 / #classes."""
    counts: dict[Hashable, int] = {}
    for key in class_keys:
        counts[key] = counts.get(key, 0) + 1
    return [1.0 / counts[key] / len(counts) for key in class_keys]


def draw_weights(class_keys: Sequence[Hashable], replay: Sequence[bool] | None, new_share: float) -> list[float]:
    """Probability of drawing each item. Without replay items: class-balanced (model.md).
    With them, the stage's own items share `new_share` of the draws and the replayed ones the
    rest, each part class-balanced: the new task's share stays the same however many old
    classes accumulate (plain class balance would give it 1 / (its classes + old classes))."""
    if not replay or not any(replay) or all(replay):
        return class_balanced_weights(class_keys)
    own = [k for k, r in zip(class_keys, replay) if not r]
    old = [k for k, r in zip(class_keys, replay) if r]
    own_w = iter(class_balanced_weights(own))
    old_w = iter(class_balanced_weights(old))
    return [(1.0 - new_share) * next(old_w) if r else new_share * next(own_w) for r in replay]


class ClassBalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement (UniMMAD training).

    Each epoch draws `num_samples` indices with probability proportional to 1 / (number of
    items sharing the item's class key), so every class is drawn equally often in
    expectation. `class_keys` is one key per dataset item, e.g.
    `MultiTaskDataset.class_keys()` -> `(task_id, class)`.

    In an incremental stage (`replay` flags the replayed items) the stage's own classes get
    `new_share` of the draws and the replayed classes the rest (see `draw_weights`), and an
    epoch draws (own items) / new_share indices, so that the new task's items are drawn about
    once per epoch, as in the base stage. Default `num_samples`: as many as there are keys,
    without replay. The draw is a function of `(seed, epoch)` only; call `set_epoch` each
    epoch for a new draw (as DistributedSampler).
    """

    def __init__(
        self,
        class_keys: Sequence[Hashable],
        seed: int = 0,
        num_samples: int | None = None,
        replay: Sequence[bool] | None = None,
        new_share: float = 0.5,
    ) -> None:
        if not class_keys:
            raise UserError("cannot balance an empty dataset")
        if not 0.0 < new_share <= 1.0:
            raise UserError(f"new task share {new_share}: expected in (0, 1]")
        self.weights = torch.tensor(draw_weights(class_keys, replay, new_share), dtype=torch.double)
        mixed = replay is not None and any(replay) and not all(replay)
        default = math.ceil((len(class_keys) - sum(replay)) / new_share) if mixed else len(class_keys)
        self.num_samples = default if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(drawn.tolist())
