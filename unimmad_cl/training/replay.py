"""Replay buffers: which training samples of a trained task are kept for later stages.

The choice is avalanche-lib's `ClassBalancedBuffer` (per-class reservoir sampling with the
capacity split evenly over classes), run over a dataset whose items are sample indices and
whose targets are class ids, under a fixed torch seed so the buffer is reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from unimmad_cl.data.records import Sample

POLICY = "avalanche.ClassBalancedBuffer"


class _IndexDataset(torch.utils.data.Dataset):
    """Item i is (i, class id of sample i): what avalanche's buffers select over."""

    def __init__(self, targets: list[int]):
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, self.targets[index]


def buffer_size(num_samples: int, num_classes: int, ratio: float) -> int:
    """`ratio` of the samples, rounded, but at least one per class; 0 when ratio is 0."""
    if ratio <= 0 or num_samples == 0:
        return 0
    return min(num_samples, max(num_classes, round(ratio * num_samples)))


def select_replay(samples: Sequence[Sample], ratio: float, seed: int) -> list[Sample]:
    """The samples to keep, in training-set order."""
    classes = sorted({s.cls for s in samples})
    size = buffer_size(len(samples), len(classes), ratio)
    if size == 0:
        return []
    with warnings.catch_warnings():
        # avalanche pulls in qpsolvers, which warns about solvers no replay policy needs
        warnings.simplefilter("ignore", UserWarning)
        from avalanche.benchmarks.utils import as_classification_dataset
        from avalanche.training.storage_policy import ClassBalancedBuffer

    class_id = {c: i for i, c in enumerate(classes)}
    dataset = as_classification_dataset(_IndexDataset([class_id[s.cls] for s in samples]))
    buffer = ClassBalancedBuffer(max_size=size, adaptive_size=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        buffer.update_from_dataset(dataset)
    # items are (index, class id, avalanche task label)
    chosen = sorted(int(item[0]) for group in buffer.buffer_groups.values() for item in group.buffer)
    return [samples[i] for i in chosen]

