"""General multi-modal encoder: trainable backbone copy → FCM → reverse decoder."""

from __future__ import annotations

import torch
from torch import nn

from unimmad_cl.config import ModelConfig
from unimmad_cl.model.backbone import stage_features
from unimmad_cl.model.decoder import ReverseDecoder
from unimmad_cl.model.fcm import FeatureCompression


class GeneralEncoder(nn.Module):
    """Embedded general input `[B, 3, H, W]` → general features `g_l` `[B, C_l, H/s_l, W/s_l]`
    for s = 4, 8, 16 (the prior's channel counts, so each C-MoE compares like with like)."""

    def __init__(self, backbone: nn.Module, channels: list[int], config: ModelConfig):
        super().__init__()
        self.backbone = backbone
        self.fcm = FeatureCompression(channels, config.fcm_width, config.bottleneck_channels, config.kernel_sizes)
        self.decoder = ReverseDecoder(
            config.bottleneck_channels, channels, config.decoder_depths, config.decoder_width_factor
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.fcm(stage_features(self.backbone(x))))
