"""Feature compression module (FCM): three encoder scales → one stride-32 general feature.

Scale alignment to the stride-8 grid, an inner multi-scale bottleneck (kernel 1/3/5 branches
of depthwise-separable convs, each compressed to stride 16) and an outer bottleneck to the
stride-32 width the reverse decoder expects.
"""

from __future__ import annotations

import torch
from torch import nn

from unimmad_cl.model.norm import group_norm, split_evenly


class ResidualBlock(nn.Module):
    """ResNet basic block with a projection shortcut. `[B, cin, H, W]` → `[B, cout, H/s, W/s]`."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class UpResidualBlock(nn.Module):
    """Upsampling residual block (2×2 transposed conv). `[B, cin, H, W]` → `[B, cout, 2H, 2W]`."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k then pointwise to `cout`, GroupNorm, ReLU. Keeps the spatial size."""

    def __init__(self, cin: int, cout: int, kernel_size: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel_size, padding=kernel_size // 2, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm = group_norm(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise.kernel_size == (1, 1):
            # A depthwise 1x1 conv is a per-channel scale. As a conv, torch's CPU path runs
            # one tiny convolution per channel (and per channel again in backward: 576 calls
            # per lite step); the product is the same number, one multiplication per element.
            x = x * self.depthwise.weight.view(1, -1, 1, 1)
        else:
            x = self.depthwise(x)
        return self.act(self.norm(self.pointwise(x)))


def down2x2(cin: int, cout: int) -> nn.Sequential:
    """2×2 stride-2 conv + GN + ReLU: halves the resolution."""
    return nn.Sequential(nn.Conv2d(cin, cout, 2, stride=2, bias=False), group_norm(cout), nn.ReLU(inplace=True))


class MultiScaleBranch(nn.Module):
    """One kernel size of the inner bottleneck: three aligned `[B, E_f, H/8, W/8]` maps →
    `[B, E_f, H/16, W/16]`."""

    def __init__(self, width: int, kernel_size: int):
        super().__init__()
        self.convs = nn.ModuleList(
            DepthwiseSeparable(width, part, kernel_size) for part in split_evenly(width, 3)
        )
        self.compress = down2x2(width, width)

    def forward(self, aligned: list[torch.Tensor]) -> torch.Tensor:
        return self.compress(torch.cat([conv(x) for conv, x in zip(self.convs, aligned)], dim=1))


class FeatureCompression(nn.Module):
    """FCM. Encoder features `[B, C_1, H/4]`, `[B, C_2, H/8]`, `[B, C_3, H/16]` →
    general bottleneck `[B, bottleneck_channels, H/32, W/32]`."""

    def __init__(
        self,
        in_channels: list[int],
        width: int,
        out_channels: int,
        kernel_sizes: tuple[int, ...] = (1, 3, 5),
    ):
        super().__init__()
        c1, c2, c3 = in_channels
        self.align = nn.ModuleList(
            [ResidualBlock(c1, width, stride=2), ResidualBlock(c2, width, stride=1), UpResidualBlock(c3, width)]
        )
        self.branches = nn.ModuleList(MultiScaleBranch(width, k) for k in kernel_sizes)
        self.fuse = nn.Sequential(
            nn.Conv2d(width * len(kernel_sizes), width, 1, bias=False),
            group_norm(width),
            nn.ReLU(inplace=True),
        )
        self.compress = down2x2(width, out_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        aligned = [block(f) for block, f in zip(self.align, features)]
        fused = self.fuse(torch.cat([branch(aligned) for branch in self.branches], dim=1))
        return self.compress(fused)
