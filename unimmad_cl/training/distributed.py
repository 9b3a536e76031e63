"""DistributedDataParallel support: several processes (torchrun) train one stage together.

Under `torchrun --nproc_per_node=N unimmad-cl train-base …` every process trains on its shard
of each epoch's class-balanced draw and DDP averages the gradients. Rank 0 alone reads and
writes the registry and the workspace files: every decision that depends on them is taken
on rank 0 and broadcast (`decide`), so ranks never race on the registry. Without torchrun
(WORLD_SIZE unset) everything runs in one process and none of this is active.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def init_from_env(device: str) -> Dist:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); SINGLE otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        # gloo for the small CPU collectives (loss means, broadcast decisions) beside NCCL for
        # the gradients; a long timeout because rank 0 evaluates every task while the others wait.
        dist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo", timeout=timedelta(hours=6)
        )
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def rank_device(d: Dist, device: torch.device) -> torch.device:
    """Under torchrun each rank uses its own GPU (cuda:LOCAL_RANK)."""
    if d.active and device.type == "cuda":
        return torch.device(f"cuda:{d.local_rank}")
    return device


def decide(d: Dist, work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only and give every rank its result (or its exception)."""
    if not d.active:
        return work()
    box: list = [None, None]
    if d.is_main:
        try:
            box = [work(), None]
        except BaseException as exc:  # every rank must learn of the failure, not hang
            box = [None, exc]
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def all_mean(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Mean of a CPU tensor over ranks (for the loss shown in progress lines)."""
    if not d.active:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / d.world


class ShardedSampler(Sampler[int]):
    """Rank r takes items r, r + W, r + 2W, … of the wrapped sampler's draw.

    For batch size B per rank, step s of all ranks together covers exactly items
    s·B·W … (s+1)·B·W − 1 of the draw: the batch a single process with batch size B·W sees.
    The draw's tail beyond a multiple of W is dropped so every rank runs the same number of
    steps (DDP requires it).
    """

    def __init__(self, sampler: Sampler[int], d: Dist):
        self.sampler = sampler
        self.dist = d

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.dist.world

    def __iter__(self) -> Iterator[int]:
        usable = len(self) * self.dist.world
        return iter(list(self.sampler)[:usable][self.dist.rank :: self.dist.world])
