"""GroupNorm that adapts its group count to any channel width (tiny presets use odd widths)."""

from __future__ import annotations

from torch import nn


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of `channels` that is at most `max_groups`."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


def split_evenly(total: int, parts: int) -> list[int]:
    """Widths summing to `total` (E_f = 512 does not divide by 3: 171 + 171 + 170)."""
    base = total // parts
    return [base + (1 if i < total % parts else 0) for i in range(parts)]

