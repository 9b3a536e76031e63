"""The epoch loop: class-balanced batches, Adam with a cosine schedule, bf16 autocast on CUDA,
a progress bar with loss and speed, and a checkpoint after every epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from unimmad_cl.config import TrainConfig
from unimmad_cl.data.dataset import ClassBalancedSampler, MultiTaskDataset, collate, image_cache_budget_bytes
from unimmad_cl.training.distributed import SINGLE, Dist, ShardedSampler, all_mean


def cosine_lr(base_lr: float, epoch: int, total_epochs: int) -> float:
    """Cosine annealing from `base_lr` (epoch 0) towards 0 (epoch = total); a pure function of
    the epoch so that a resumed stage continues on the same schedule."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / total_epochs))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    consistency: float
    load_balance: float
    samples: int
    seconds: float


def make_sampler(dataset: MultiTaskDataset, config: TrainConfig, d: Dist = SINGLE):
    """Class-balanced sampling (probability ∝ 1 / class size, as model.md states); in an
    incremental stage the new task keeps `config.new_task_share` of the draws however many
    replayed classes there are. Under DDP each rank gets its shard of the same draw."""
    sampler = ClassBalancedSampler(
        dataset.class_keys(), seed=config.seed, replay=dataset.replay_flags(), new_share=config.new_task_share
    )
    return ShardedSampler(sampler, d) if d.active else sampler


def drop_last(sampler, config: TrainConfig) -> bool:
    # A last batch of one sample would give BatchNorm a single value per channel.
    return len(sampler) > config.batch_size


def make_loader(dataset: MultiTaskDataset, config: TrainConfig, d: Dist = SINGLE) -> DataLoader:
    """Batches of `make_sampler`'s draws. Decoded samples stay in memory across epochs
    (`MultiTaskDataset.enable_image_cache`: UNIMMAD_IMAGE_CACHE_MB, default 1024 per
    process), so images are decoded and resized once per stage, not once per epoch. With
    `num_workers` > 0 the workers persist across epochs (each keeps its own cache: the budget
    is split among them), and batches are pinned when the device is CUDA."""
    workers = config.num_workers
    dataset.enable_image_cache(image_cache_budget_bytes() // max(workers, 1))
    sampler = make_sampler(dataset, config, d)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        drop_last=drop_last(sampler, config),
        persistent_workers=workers > 0,
        pin_memory=resolve_device(config.device).type == "cuda",
    )


def make_feature_batches(table, dataset: MultiTaskDataset, config: TrainConfig, d: Dist = SINGLE):
    """`make_loader`'s batches served from precomputed trunk features (training/features.py):
    same sampler, batch size and drop_last, so the same samples in every batch."""
    from unimmad_cl.training.features import FeatureBatches, dataset_loss_weights

    sampler = make_sampler(dataset, config, d)
    return FeatureBatches(table, sampler, config.batch_size, drop_last(sampler, config), dataset_loss_weights(dataset))


class _Decode(torch.nn.Module):
    """The C-MoE half of the model as a module, so that DDP can wrap it (DDP syncs gradients
    of what runs through its forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model.decode(features)


def train_epochs(
    model,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    start_epoch: int = 0,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    d: Dist = SINGLE,
) -> list[EpochStats]:
    """Train from `start_epoch` to `config.epochs`; `on_epoch_end` runs after each epoch
    (checkpointing). `loader` yields image batches (`make_loader`: the full forward) or
    cached trunk features (`make_feature_batches`: only `model.decode` runs). Under DDP the
    forward runs through the DDP wrapper, which averages the gradients over ranks; the loss
    is computed by the wrapped model."""
    from tqdm import tqdm

    autocast = device.type == "cuda" and config.amp
    cached = getattr(loader, "cached_features", False)
    net = _Decode(model) if cached else model
    if d.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    history = []
    for epoch in range(start_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config.lr, epoch, config.epochs)
        loader.sampler.set_epoch(epoch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)
        seen, start = 0, time.perf_counter()
        bar = tqdm(
            loader, desc=f"{desc} epoch {epoch + 1}/{config.epochs}", disable=not progress or not d.is_main,
            leave=False, unit="batch",
        )
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                output = net(batch.features) if cached else net(batch.images, batch.modality_mask)
                losses = model.loss(output, batch.loss_weight, epoch, config.epochs, config.load_balance_weight)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            optimizer.step()
            n = len(batch)
            seen += n
            totals += torch.tensor([losses.total.item(), losses.consistency.item(), losses.load_balance.item()]) * n
            bar.set_postfix(loss=f"{totals[0].item() / seen:.4f}", samples_per_s=f"{seen / (time.perf_counter() - start):.1f}")
        bar.close()
        mean = all_mean(d, totals / max(seen, 1)).tolist()
        stats = EpochStats(epoch, mean[0], mean[1], mean[2], seen, time.perf_counter() - start)
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    return history
