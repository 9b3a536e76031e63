"""Input embedding + stem: the zero-padded modality stack `[B, 3·M, H, W]` → 3 channels."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class InputEmbedding(nn.Module):
    """Learned additive embedding `[3·M, H, W]` (init N(0, 0.02²)) and a 3-conv stem with a
    1×1 shortcut, so that any set of up to M modalities feeds one 3-channel CNN. The stem's
    widths are the paper's 24 and 48 by default; at full resolution they cost several times
    a small backbone (EfficientNet-Lite0 at 128 px), hence `widths`.

    Input `[B, 3·M, H, W]` → output `[B, 3, H, W]`.
    """

    def __init__(self, max_modalities: int, image_size: int, widths: tuple[int, int] = (24, 48)):
        super().__init__()
        channels = 3 * max_modalities
        first, second = widths
        self.embedding = nn.Parameter(torch.randn(channels, image_size, image_size) * 0.02)
        self.stem = nn.Sequential(
            conv_bn_relu(channels, first),
            conv_bn_relu(first, second),
            nn.Conv2d(second, 3, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(channels, 3, 1)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        x = stacked + self.embedding
        return self.stem(x) + self.shortcut(x)
