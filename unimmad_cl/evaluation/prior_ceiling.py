"""The prior-ceiling baseline: a training-free nearest-neighbour detector on the frozen prior.

UniMMAD's anomaly map compares each modality's frozen prior p[m][l] with what the C-MoE
decodes from the general feature. This baseline asks how far the same frozen features go
without any learning: a PatchCore-style memory bank of the prior's patch features of the
training images (one bank per class, modality slot and scale), and the anomaly of a test
patch is its cosine distance to the nearest patch in the bank. Maps are then combined
exactly like the model's (`unimmad_cl.model.scoring`): bilinear upsampling, root-sum-square
over scales and modalities, Gaussian blur, mean of the top 0.1 % pixels.

Every accuracy figure of the project is reported beside this one: where the model is below
it, the learned part loses information the backbone had; where both are low, the limit is the
backbone (its resolution or its features), not the training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unimmad_cl.model.backbone import PriorGenerator
from unimmad_cl.model.scoring import gaussian_blur, image_score


@dataclass(frozen=True)
class CeilingConfig:
    """pool: local average over pool×pool neighbours before matching (PatchCore's
    locally aware patches; 1 = none). coreset: the share of training patches kept per bank,
    chosen by greedy k-center coreset as in PatchCore (1 = keep all), at most max_bank."""

    pool: int = 3
    coreset: float = 0.1
    max_bank: int = 16384
    seed: int = 0


def patch_features(priors: list[torch.Tensor], pool: int) -> list[torch.Tensor]:
    """Per scale `[n, C_l, h_l, w_l]` → L2-normalized patch features `[n, C_l, h_l, w_l]`."""
    if pool > 1:
        priors = [F.avg_pool2d(p, pool, stride=1, padding=pool // 2, count_include_pad=False) for p in priors]
    return [F.normalize(p.float(), dim=1) for p in priors]


def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """PatchCore's greedy k-center selection: `[N, C]` → the indices `[size]` of patches
    that cover the set (each pick is the patch farthest from those already picked), on a
    random 128-d projection for speed."""
    n = features.shape[0]
    if size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    if features.shape[1] > 128:
        projection = torch.randn(features.shape[1], 128, generator=generator) / 128**0.5
        features = features @ projection
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    distance = (features - features[chosen[0]]).pow(2).sum(1)
    for i in range(1, size):
        chosen[i] = int(distance.argmax())
        distance = torch.minimum(distance, (features - features[chosen[i]]).pow(2).sum(1))
    return chosen


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """`1 − max cos` of each query `[Q, C]` against the bank `[N, C]` (both unit vectors) → `[Q]`."""
    out = torch.empty(queries.shape[0])
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start:start + chunk] @ bank.T
        out[start:start + chunk] = 1.0 - sims.max(dim=1).values
    return out


class PriorNearestNeighbour:
    """Memory banks of one class's training images, per modality slot and scale.

    `fit(images)` with images `[n, K, 3, H, W]` (the class's K modalities, normalized like
    the model's inputs); `predict(images)` → (maps `[B, H, W]`, scores `[B]`).
    """

    def __init__(self, prior: PriorGenerator, config: CeilingConfig = CeilingConfig(),
                 blur_sigma: float = 4.0, blur_kernel_size: int = 15, top_fraction: float = 0.001):
        self.prior = prior
        self.config = config
        self.blur = (blur_sigma, blur_kernel_size)
        self.top_fraction = top_fraction
        self.banks: list[list[torch.Tensor]] = []  # [slot][scale] -> [N, C_l]

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """images `[n, K, 3, H, W]` → [slot][scale] `[n, C_l, h_l, w_l]`."""
        return [patch_features(self.prior(images[:, k]), self.config.pool) for k in range(images.shape[1])]

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> "PriorNearestNeighbour":
        collected: list[list[list[torch.Tensor]]] = []
        for images in batches:
            for k, scales in enumerate(self._features(images)):
                if len(collected) <= k:
                    collected.append([[] for _ in scales])
                for l, f in enumerate(scales):
                    collected[k][l].append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        self.banks = []
        for slot in collected:
            banks = []
            for l, parts in enumerate(slot):
                bank = torch.cat(parts)
                keep = min(round(self.config.coreset * bank.shape[0]), self.config.max_bank)
                if keep < bank.shape[0]:
                    bank = bank[greedy_coreset(bank, max(keep, 1), self.config.seed + l)]
                banks.append(bank)
            self.banks.append(banks)
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.banks:
            raise RuntimeError("fit() first")
        size = tuple(images.shape[-2:])
        total = None
        for slot, scales in enumerate(self._features(images)):
            for bank, f in zip(self.banks[slot], scales):
                n, c, h, w = f.shape
                d = nearest_distance(f.permute(0, 2, 3, 1).reshape(-1, c), bank).view(n, 1, h, w)
                a = F.interpolate(d, size=size, mode="bilinear", align_corners=True)[:, 0]
                total = a.pow(2) if total is None else total + a.pow(2)
        maps = gaussian_blur(total.sqrt(), *self.blur)
        return maps, image_score(maps, self.top_fraction)


def _class_batches(dataset, cls: str, batch_size: int):
    """Collated batches of the dataset's samples of one class, in order."""
    from torch.utils.data import DataLoader, Subset

    from unimmad_cl.data.dataset import collate

    indices = [i for i, s in enumerate(dataset.samples) if s.cls == cls]
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=collate)


def _present(batch) -> torch.Tensor:
    """The K present modality slots of a one-task batch: `[B, K, 3, H, W]`."""
    k = int(batch.modality_mask[0].sum())
    return batch.images[:, :k]


def evaluate_prior_ceiling(
    prior: PriorGenerator,
    train,
    test,
    *,
    task: str | None = None,
    config: CeilingConfig = CeilingConfig(),
    batch_size: int = 16,
    model_config=None,
):
    """The baseline on one task: a bank per class from `train`, scored on `test` (both
    `TaskDataset`s of the same task, normalized like the model's inputs). Returns an
    `EvaluationResult` like the model's runner (per-class metrics and their mean)."""
    import numpy as np

    from unimmad_cl.evaluation.runner import EvaluationResult, _class_metrics, _task_mean

    blur = {} if model_config is None else dict(
        blur_sigma=model_config.blur_sigma, blur_kernel_size=model_config.blur_kernel_size,
        top_fraction=model_config.top_fraction,
    )
    per_class, n_samples = {}, {}
    all_labels, all_scores, all_classes = [], [], []
    for cls in dict.fromkeys(s.cls for s in test.samples):
        detector = PriorNearestNeighbour(prior, config, **blur)
        detector.fit(_present(b) for b in _class_batches(train, cls, batch_size))
        maps, masks, labels, scores = [], [], [], []
        for batch in _class_batches(test, cls, batch_size):
            m, s = detector.predict(_present(batch))
            maps.append(m.numpy())
            scores.append(s.numpy())
            masks.append(batch.mask.numpy() > 0.5)
            labels.append(batch.label.numpy())
        labels_c, scores_c = np.concatenate(labels), np.concatenate(scores)
        per_class[cls] = _class_metrics(cls, labels_c, scores_c, np.concatenate(masks), np.concatenate(maps), 0.3)
        n_samples[cls] = len(labels_c)
        all_labels.append(labels_c)
        all_scores.append(scores_c)
        all_classes += [cls] * len(labels_c)
    return EvaluationResult(
        task=task, per_class=per_class, mean=_task_mean(per_class), n_samples=n_samples,
        labels=np.concatenate(all_labels), scores=np.concatenate(all_scores), classes=all_classes,
    )
