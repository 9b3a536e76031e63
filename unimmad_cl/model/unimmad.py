"""UniMMAD: general → specific multi-modal anomaly detection.

    images [B, M, 3, H, W] + modality_mask [B, M]
      ├─ stacked, zero-padded [B, 3M, H, W] → InputEmbedding → GeneralEncoder → g_l  (per sample)
      └─ each present modality alone [n, 3, H, W] → PriorGenerator (frozen) → p_l  (per pair)
    CrossMoE_l(g_l, p_l) → d_l  (per pair);  loss: focal cosine(d_l, p_l) + load balance
    inference: RSS over (l, modality) of 1 − cos(p_l, d_l), Gaussian blur, top-0.1 % mean

A batch may mix samples with different modality sets: pairs are the True entries of
`modality_mask`, gathered with one boolean index, and every per-sample result is gathered or
scattered with `sample_index`; nothing loops over samples or experts.

`forward` = `decode(trunk(...))`: `trunk` is everything before the C-MoEs (embedding, general
encoder, prior generator, the L2 normalization), frozen in incremental stages, so its
`Features` can be computed once and reused across epochs and evaluations
(training/features.py); `decode` runs the C-MoEs on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unimmad_cl.config import ModelConfig
from unimmad_cl.errors import UserError
from unimmad_cl.model.backbone import (
    PriorGenerator,
    backbone_normalization,
    build_backbone_pair,
    estimate_bn_statistics,
    feature_channels,
)
from unimmad_cl.model.cmoe import ConditionRouter, CrossMoE, MoELeaders, Routing
from unimmad_cl.model.embedding import InputEmbedding
from unimmad_cl.model.encoder import GeneralEncoder
from unimmad_cl.model.losses import annealing_factor, focal_cosine_loss, load_balance_loss
from unimmad_cl.model.scoring import anomaly_map, gaussian_blur, image_score


@dataclass
class Features:
    """The frozen trunk's outputs for a batch of B samples and n (sample, modality) pairs,
    L2-normalized over channels as the C-MoEs take them."""

    general: list[torch.Tensor]  # per scale [B, C_l, h_l, w_l], one per sample
    priors: list[torch.Tensor]  # per scale [n, C_l, h_l, w_l], one per pair
    sample_index: torch.Tensor  # long [n] sample of each pair (sample-major, slot order)
    batch_size: int

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None, non_blocking: bool = False) -> "Features":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype=dtype, non_blocking=non_blocking)

        return Features(
            [move(g) for g in self.general], [move(p) for p in self.priors],
            self.sample_index.to(device, non_blocking=non_blocking), self.batch_size,
        )


@dataclass
class UniMMADOutput:
    """Training-time outputs for n (sample, modality) pairs over L scales."""

    priors: list[torch.Tensor]  # per scale [n, C_l, h_l, w_l], L2-normalized
    decoded: list[torch.Tensor]  # per scale [n, C_l, h_l, w_l]
    sample_index: torch.Tensor  # [n] sample of each pair
    routings: list[list[Routing]]  # [scale][branch]
    batch_size: int


@dataclass
class Prediction:
    maps: torch.Tensor  # [B, H, W] blurred anomaly maps
    scores: torch.Tensor  # [B] image anomaly scores
    leader_counts: torch.Tensor  # [B, L, K, N_r] times each MoE-Leader was routed


@dataclass
class Losses:
    total: torch.Tensor
    consistency: torch.Tensor
    load_balance: torch.Tensor


class UniMMAD(nn.Module):
    def __init__(self, config: ModelConfig, load_weights: bool = True):
        """`load_weights=False` skips backbone weight loading (and its random-init warning):
        for models whose full weights come from a checkpoint, and for counting parameters."""
        super().__init__()
        self.config = config.validated()
        prior_extractor, trainable_copy, provenance = build_backbone_pair(config, load_weights=load_weights)
        # Where the backbone weights came from (None for models whose weights come from a file).
        self.weights_provenance = provenance
        # (mean, std) the backbone expects of colour and gray modality images.
        self.normalization = backbone_normalization(prior_extractor)
        channels = feature_channels(prior_extractor)
        self.channels = channels
        self.embedding = InputEmbedding(config.max_modalities, config.image_size, config.stem_widths)
        self.encoder = GeneralEncoder(trainable_copy, channels, config)
        self.prior = PriorGenerator(prior_extractor)
        self.cmoe = nn.ModuleList(
            CrossMoE(
                c,
                config.embed_dim,
                config.num_base_experts,
                config.num_leaders,
                config.top_k,
                config.kernel_sizes,
                config.gate_temperature,
            )
            for c in channels
        )

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, modality_mask: torch.Tensor) -> UniMMADOutput:
        """images `[B, M, 3, H, W]` (absent slots zero), modality_mask bool `[B, M]`."""
        return self.decode(self.trunk(images, modality_mask))

    def trunk(self, images: torch.Tensor, modality_mask: torch.Tensor) -> Features:
        """Embedding + general encoder (one per sample) and prior generator (one per present
        modality): images `[B, M, 3, H, W]`, modality_mask bool `[B, M]` → `Features` with
        general per scale `[B, C_l, h_l, w_l]`, priors per scale `[n, C_l, h_l, w_l]` (n = True
        entries of the mask, sample-major), both L2-normalized over channels."""
        self._check_inputs(images, modality_mask)
        sample_index, slot = modality_mask.nonzero(as_tuple=True)
        # An encoder without trainable parameters (incremental stages) runs without autograd.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._encoder_trains()):
            general = self.encoder(self.embedding(images.flatten(1, 2)))
        priors = self.prior(images[sample_index, slot])
        general = [F.normalize(g, dim=1) for g in general]
        priors = [F.normalize(p.float(), dim=1).to(p.dtype) for p in priors]
        return Features(general, priors, sample_index, images.shape[0])

    def decode(self, features: Features) -> UniMMADOutput:
        """The C-MoEs on trunk outputs: per scale, decoded `[n, C_l, h_l, w_l]` for every pair."""
        use_cache = not self.training and not torch.is_grad_enabled()
        decoded, routings = [], []
        for moe, g, p in zip(self.cmoe, features.general, features.priors):
            d, r = moe(g, p, features.sample_index, use_cache=use_cache)
            decoded.append(d)
            routings.append(r)
        return UniMMADOutput(features.priors, decoded, features.sample_index, routings, features.batch_size)

    def trunk_frozen(self) -> bool:
        """True when the trunk's outputs cannot change between calls in the current mode: no
        trunk parameter trains and no trunk layer behaves differently in training mode
        (batch statistics, dropout). Only then may its `Features` be computed once."""
        from torch.nn.modules.batchnorm import _BatchNorm
        from torch.nn.modules.dropout import _DropoutNd
        from torch.nn.modules.instancenorm import _InstanceNorm

        trunk = (self.embedding, self.encoder, self.prior)
        if any(p.requires_grad for m in trunk for p in m.parameters()):
            return False
        for part in trunk:
            for module in part.modules():
                stochastic = isinstance(module, (_BatchNorm, _DropoutNd, _InstanceNorm)) or "Drop" in type(module).__name__
                if stochastic and module.training:
                    return False
        return True

    def _check_inputs(self, images: torch.Tensor, modality_mask: torch.Tensor) -> None:
        c = self.config
        expected = (c.max_modalities, 3, c.image_size, c.image_size)
        if images.dim() != 5 or tuple(images.shape[1:]) != expected:
            raise UserError(f"model input images have shape {list(images.shape)}; expected [B, {', '.join(map(str, expected))}]")
        if modality_mask.shape != images.shape[:2]:
            raise UserError(f"modality_mask has shape {list(modality_mask.shape)}; expected {list(images.shape[:2])}")
        if not bool(modality_mask.any(dim=1).all()):
            raise UserError("every sample needs at least one modality (a row of modality_mask is all False)")

    def _encoder_trains(self) -> bool:
        return any(p.requires_grad for m in (self.embedding, self.encoder) for p in m.parameters())

    # ------------------------------------------------------------------ objective
    def loss(
        self,
        output: UniMMADOutput,
        loss_weight: torch.Tensor,
        epoch: int,
        total_epochs: int,
        balance_weight: float = 1.0,
    ) -> Losses:
        """loss_weight `[B]` per-sample task weights; epoch counts from 0; balance_weight
        scales the annealed load-balance term (model.md's objective: 1)."""
        consistency = focal_cosine_loss(
            output.decoded, output.priors, loss_weight[output.sample_index].float(), self.config.focal_gamma
        )
        balance = load_balance_loss(output.routings, self.config.z_loss_weight)
        total = consistency + balance_weight * annealing_factor(epoch, total_epochs) * balance
        return Losses(total=total, consistency=consistency, load_balance=balance)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: torch.Tensor, modality_mask: torch.Tensor) -> Prediction:
        """Anomaly maps `[B, H, W]`, image scores `[B]` and per-sample leader usage."""
        return self.predict_features(self.trunk(images, modality_mask))

    @torch.no_grad()
    def predict_features(self, features: Features) -> Prediction:
        """`predict` from trunk outputs (e.g. cached ones): maps at the model's image size."""
        out = self.decode(features)
        size = (self.config.image_size, self.config.image_size)
        raw = anomaly_map(out.priors, out.decoded, out.sample_index, out.batch_size, size)
        maps = gaussian_blur(raw, self.config.blur_sigma, self.config.blur_kernel_size)
        scores = image_score(maps, self.config.top_fraction)
        return Prediction(maps=maps, scores=scores, leader_counts=self._leader_counts(out))

    def _leader_counts(self, out: UniMMADOutput) -> torch.Tensor:
        n_r = self.config.num_leaders
        per_pair = torch.stack(
            [
                torch.stack([F.one_hot(r.indices, n_r).sum(dim=1) for r in branches])
                for branches in out.routings
            ]
        )  # [L, K, n, N_r]
        per_pair = per_pair.permute(2, 0, 1, 3)
        counts = per_pair.new_zeros(out.batch_size, *per_pair.shape[1:])
        return counts.index_add_(0, out.sample_index, per_pair)

    @torch.no_grad()
    def calibrate_random_backbone(self, batches) -> int:
        """For a backbone without pretrained weights: estimate the prior generator's
        BatchNorm statistics on training batches `(images [B, M, 3, H, W], modality_mask
        [B, M])`, every present modality image counted, and start the trainable copy from
        the same state. Returns the number of images seen."""
        seen = 0

        def images():
            nonlocal seen
            for batch_images, mask in batches:
                picked = batch_images[mask]
                seen += picked.shape[0]
                yield picked

        estimate_bn_statistics(self.prior.extractor, images())
        self.encoder.backbone.load_state_dict(self.prior.extractor.state_dict())
        return seen

    def invalidate_kernel_cache(self) -> None:
        for moe in self.cmoe:
            for branch in moe.branches:
                branch.invalidate_cache()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.invalidate_kernel_cache()  # belt and braces: `assign=True` bypasses version counters
        return result

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "UniMMAD":
        """Normalization layers whose parameters are all frozen stay in eval mode, so frozen
        statistics never drift in incremental stages."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, NORM_TYPES) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self


NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def prior_parameter_names(model: UniMMAD) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith("prior.")]


def incremental_parameter_names(model: UniMMAD) -> list[str]:
    """Parameters an incremental stage may train: every MoE-Leader's mixing weights, the
    condition routers (cond conv block + gates) and each C-MoE's aggregation conv."""
    names: list[str] = []
    for prefix, module in model.named_modules():
        trainable = isinstance(module, (MoELeaders, ConditionRouter)) or (
            isinstance(module, nn.Module) and prefix.endswith(".aggregate") and prefix.startswith("cmoe.")
        )
        if trainable:
            names += [f"{prefix}.{n}" for n, _ in module.named_parameters()]
    return sorted(set(names))


def freeze_for_incremental(model: UniMMAD, trainable: list[str] | None = None) -> list[str]:
    """Freeze every parameter except `trainable` (default: the incremental subset) and put
    frozen normalization layers in eval mode. Returns the trainable names."""
    names = set(incremental_parameter_names(model) if trainable is None else trainable)
    unknown = names - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"unknown parameter names: {sorted(unknown)[:3]}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    model.train(model.training)
    return sorted(names)
