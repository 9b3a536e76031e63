"""Reverse ResNet decoder (RD4AD's "de-ResNet"): stride 32 → 16 → 8 → 4.

Each stage starts with a bottleneck whose middle conv is a 2×2 transposed conv (upsampling),
followed by plain bottlenecks; each stage's output goes through a 1×1 conv and has the
prior's channel count at that stride.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """Bottleneck `[B, cin, H, W]` → `[B, cout, s·H, s·W]`, s = 2 if `upsample` else 1."""

    def __init__(self, cin: int, width: int, cout: int, upsample: bool):
        super().__init__()
        middle = (
            nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
            if upsample
            else nn.Conv2d(width, width, 3, padding=1, bias=False)
        )
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            middle,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        if upsample:
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), nn.BatchNorm2d(cout))
        elif cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ReverseDecoder(nn.Module):
    """`[B, C_in, H/32, W/32]` → general features `[g_1, g_2, g_3]` with `out_channels =
    [C_1, C_2, C_3]` at strides 4/8/16, ordered like the priors (layer1 first)."""

    def __init__(self, in_channels: int, out_channels: list[int], depths: tuple[int, ...], width_factor: int):
        super().__init__()
        stages = []
        cin = in_channels
        # Decode deepest first: stride 16 (C_3), then 8 (C_2), then 4 (C_1).
        for cout, depth in zip(reversed(out_channels), depths):
            width = cout // 4 * width_factor
            blocks = [Bottleneck(cin, width, cout, upsample=True)]
            blocks += [Bottleneck(cout, width, cout, upsample=False) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(nn.Conv2d(c, c, 1) for c in reversed(out_channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage, head in zip(self.stages, self.heads):
            x = stage(x)
            outputs.append(head(x))
        return outputs[::-1]
