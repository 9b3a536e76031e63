"""UniMMAD's two losses: focal cosine decompression consistency and annealed load balance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unimmad_cl.model.cmoe import Routing


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`1 − cos` over channels: `[n, C, h, w]` × 2 → `[n, h, w]`."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=1)


def focal_cosine_loss(
    decoded: list[torch.Tensor],
    priors: list[torch.Tensor],
    pair_weights: torch.Tensor,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Decompression consistency over all maps (scale l × pair).

    decoded, priors: per scale `[n, C_l, h_l, w_l]`; pair_weights `[n]` (the sample's task loss
    weight). Per map: `mean_xy(c · stopgrad(c)^γ)` with `c = 1 − cos(d, p)`; the focal factor
    puts the gradient on the pixels that are still badly reconstructed. Total = 3 · the mean
    over all maps, which is 3 · Σ_maps / #maps and handles batches that mix modality counts.
    """
    per_scale = []
    for d, p in zip(decoded, priors):
        c = cosine_distance(d, p)
        per_map = (c * c.detach().pow(gamma)).mean(dim=(1, 2))  # [n]
        per_scale.append(per_map * pair_weights)
    return 3.0 * torch.stack(per_scale).mean()


def load_balance_loss(routings: list[list[Routing]], z_weight: float = 1e-4) -> torch.Tensor:
    """Σ over branches, mean over scales, of CV²(mean gate probs) + z_weight · mean(lse(logits)²).

    CV² uses the population variance of the batch-mean routing probabilities; it is 0 when
    every leader receives the same share. The z-loss keeps gate logits small.
    """
    per_scale = []
    for branches in routings:
        total = 0.0
        for r in branches:
            importance = r.probs.float().mean(dim=0)
            cv2 = importance.var(unbiased=False) / (importance.mean().pow(2) + 1e-10)
            z = torch.logsumexp(r.logits.float(), dim=-1).pow(2).mean()
            total = total + cv2 + z_weight * z
        per_scale.append(total)
    return torch.stack(per_scale).mean()


def annealing_factor(epoch: int, total_epochs: int) -> float:
    """`max(1 − epoch / E_total, 0.001)`: strong balancing early, nearly none at the end."""
    return max(1.0 - epoch / max(total_epochs, 1), 0.001)
