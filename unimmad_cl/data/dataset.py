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
import os
from dataclasses import dataclass, fields
from typing import Hashable, Iterator, Sequence

import numpy as np
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

    def pin_memory(self) -> "Batch":
        """Page-locked copies of the tensors (DataLoader's `pin_memory=True` calls this),
        so `to(cuda, non_blocking=True)` overlaps the copy with compute."""
        pinned = {f.name: getattr(self, f.name).pin_memory() for f in fields(self) if f.name != "samples"}
        return Batch(**pinned, samples=self.samples)

    def __len__(self) -> int:
        return len(self.samples)


# Decoded-image cache of training loaders (`MultiTaskDataset.enable_image_cache`): default
# budget per process, overridden by the environment variable UNIMMAD_IMAGE_CACHE_MB (0: off).
IMAGE_CACHE_MB = 1024
IMAGE_CACHE_ENV = "UNIMMAD_IMAGE_CACHE_MB"


def image_cache_budget_bytes() -> int:
    """The decoded-image cache budget: UNIMMAD_IMAGE_CACHE_MB if set, else IMAGE_CACHE_MB."""
    raw = os.environ.get(IMAGE_CACHE_ENV)
    if raw is None or raw.strip() == "":
        return IMAGE_CACHE_MB * 2**20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise UserError(f"{IMAGE_CACHE_ENV}={raw!r}: expected a number of megabytes >= 0 (0 turns the image cache off)")
    return int(mb * 2**20)


class DecodedImageCache:
    """Decoded, resized and normalized samples kept in memory across epochs, up to a byte
    budget: a training epoch then decodes only what did not fit. Filled first come, never
    evicted (with random class-balanced draws an evicting cache would keep replacing what the
    next epoch needs). Keyed by the sample's files, image size and normalization, so the same
    file in two datasets (a task and a replay buffer) is held once. Cached arrays are never
    written to: `collate` copies them into each batch. All-zero masks (good samples) are not
    stored."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self.refused = 0  # samples decoded but not kept: the budget was spent
        self._items: dict[tuple, tuple] = {}

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def key(sample: Sample, size: int, normalization: Normalization) -> tuple:
        return (sample.paths, sample.modalities, sample.mask_path, size, tuple(tuple(v) for v in normalization))

    def get(self, key: tuple):
        item = self._items.get(key)
        if item is None:
            self.misses += 1
        else:
            self.hits += 1
        return item

    def put(self, key: tuple, images, mask) -> None:
        size = images.nbytes + (mask.nbytes if mask is not None else 0)
        if self.used_bytes + size > self.budget_bytes:
            self.refused += 1
            return
        self._items[key] = (images, mask)
        self.used_bytes += size


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
        # Set by MultiTaskDataset.enable_image_cache (training loaders): decoded samples kept.
        self.image_cache: DecodedImageCache | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        """The sample's images `[K, 3, S, S]` and mask `[S, S]` (numpy float32), from the
        decoded-image cache when it holds them."""
        sample = self.samples[index]
        cache = self.image_cache
        if cache is None:
            return load_sample(sample, self.image_size, self.normalization)
        key = cache.key(sample, self.image_size, self.normalization)
        hit = cache.get(key)
        if hit is None:
            images, mask = load_sample(sample, self.image_size, self.normalization)
            cache.put(key, images, mask if mask.any() else None)
            return images, mask
        images, mask = hit
        return images, mask if mask is not None else np.zeros((self.image_size, self.image_size), dtype=np.float32)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        images, mask = self.load(index)
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

    def enable_image_cache(self, budget_bytes: int) -> DecodedImageCache | None:
        """Keep decoded samples in memory across epochs (one cache shared by every task
        dataset, `budget_bytes` in all; 0: off). Enabling again keeps the cache already
        there. Returns the cache."""
        if budget_bytes <= 0:
            for d in self.datasets:
                d.image_cache = None
            return None
        current = {id(d.image_cache): d.image_cache for d in self.datasets}
        if len(current) == 1:
            cache = next(iter(current.values()))
            if cache is not None and cache.budget_bytes == budget_bytes:
                return cache
        cache = DecodedImageCache(budget_bytes)
        for d in self.datasets:
            d.image_cache = cache
        return cache

    @property
    def image_cache(self) -> DecodedImageCache | None:
        return self.datasets[0].image_cache

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
