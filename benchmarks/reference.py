"""Reference C-MoE branch implementations the benchmarks compare against.

- `original_forward`: `MoEBranch.forward` as it was before the kernel-folding optimization
  (git 9dd5b53): one grouped conv with 1 + top_k kernels per pair, score-weighted sum of the
  routed outputs, then the 2E→E post conv. Kept verbatim so that every before/after ratio is
  measured in the same run, on the same weights.
- `loop_forward`: the naive implementation: a Python loop over (sample, modality) pairs and
  over experts, one `conv2d` per expert (fixed + each routed leader), same kernels.

`patched_forward(fn)` swaps `MoEBranch.forward` for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from unimmad_cl.model.cmoe import MoEBranch, Routing, grouped_dynamic_filter


def original_forward(
    self: MoEBranch, values: torch.Tensor, sample_index: torch.Tensor, routing: Routing, use_cache: bool = False
) -> torch.Tensor:
    v = self.pre(values)[sample_index]
    n = v.shape[0]
    routed = self.leader_kernels(use_cache)[routing.indices]  # [n, top_k, E, E, k, k]
    fixed = self.fixed_expert.expand(n, 1, *self.fixed_expert.shape)
    out = grouped_dynamic_filter(v, torch.cat([fixed, routed.to(v.dtype)], dim=1))
    mixed = (out[:, 1:] * routing.scores.to(out.dtype)[:, :, None, None, None]).sum(dim=1)
    return self.post(torch.cat([out[:, 0], mixed], dim=1))


def loop_forward(
    self: MoEBranch, values: torch.Tensor, sample_index: torch.Tensor, routing: Routing, use_cache: bool = False
) -> torch.Tensor:
    pad = self.kernel_size // 2
    kernels = self.leader_kernels(use_cache)
    v = self.pre(values)[sample_index]
    outs = []
    for i in range(v.shape[0]):
        x = v[i : i + 1]
        fixed = F.conv2d(x, self.fixed_expert, padding=pad)
        routed = sum(
            routing.scores[i, t] * F.conv2d(x, kernels[routing.indices[i, t]], padding=pad)
            for t in range(routing.indices.shape[1])
        )
        outs.append(torch.cat([fixed, routed], dim=1))
    return self.post(torch.cat(outs))


@contextlib.contextmanager
def patched_forward(fn):
    """Run MoEBranch with `fn` as its forward (None: the shipped forward)."""
    if fn is None:
        yield
        return
    shipped = MoEBranch.forward
    MoEBranch.forward = fn
    try:
        yield
    finally:
        MoEBranch.forward = shipped
