"""Cross Mixture-of-Experts (C-MoE): decompress a general feature into one modality's feature.

For every (sample, modality) pair, the values are the sample's general feature g_l and the
condition is that modality's prior p_l. Only global statistics of the prior (a pooled router
vector) choose the experts: no pixel of the prior reaches the values, so an anomaly cannot
leak from the prior into the reconstruction.

Module tree (per scale l):
    CrossMoE
      key_proj, query_proj        1×1 conv C_l→E + GN + ReLU
      router: ConditionRouter     cond conv block on concat(K, Q) → pooled z; one gate per branch
      branches[k]: MoEBranch      kernel size k ∈ {1, 3, 5}
        pre                       1×1 conv + GN + ReLU on the values
        base_experts              N_b shared kernels [N_b, E, E, k, k]
        leaders: MoELeaders       N_r mixing weights [N_r, N_b, E] ("MoE-in-MoE")
        fixed_expert              [E, E, k, k], identity init
        post                      concat(fixed, routed) 2E → E
      aggregate                   concat of branches 3E → C_l + GN + ReLU
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unimmad_cl.model.norm import group_norm


def conv1x1_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), group_norm(cout), nn.ReLU(inplace=True))


def grouped_dynamic_filter(values: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Apply a different set of G kernels to every item, in ONE grouped conv2d call.

    values `[n, C_in, h, w]`, kernels `[n, G, C_out, C_in, k, k]` → `[n, G, C_out, h, w]`.
    Each item's values are replicated G times and the batch is folded into the channel axis
    with `groups = n·G`, so no Python loop runs over items or experts.
    """
    n, groups, c_out, c_in, k, _ = kernels.shape
    h, w = values.shape[-2:]
    stacked = values.unsqueeze(1).expand(n, groups, c_in, h, w).reshape(1, n * groups * c_in, h, w)
    out = F.conv2d(stacked, kernels.reshape(n * groups * c_out, c_in, k, k), padding=k // 2, groups=n * groups)
    return out.view(n, groups, c_out, h, w)


class MoELeaders(nn.Module):
    """N_r MoE-Leaders over a shared bank of N_b base experts.

    Leader j's kernel mixes the base experts per output channel o:
    `W_j[o] = Σ_b softmax_b(A_j)[b, o] · B_b[o]`. The leaders hold only the mixing weights A
    (`[N_r, N_b, E]`), which is what makes them cheap to train in incremental stages.
    """

    def __init__(self, num_leaders: int, num_base: int, channels: int):
        super().__init__()
        self.mixing = nn.Parameter(torch.randn(num_leaders, num_base, channels) * 0.02)

    def forward(self, base_experts: torch.Tensor) -> torch.Tensor:
        """base_experts `[N_b, E, E, k, k]` → leader kernels `[N_r, E, E, k, k]`."""
        weights = self.mixing.softmax(dim=1)
        return torch.einsum("jbo,boiyx->joiyx", weights, base_experts)


@dataclass
class Routing:
    """One branch's routing for n (sample, modality) pairs."""

    logits: torch.Tensor  # [n, N_r]
    probs: torch.Tensor  # [n, N_r], softmax(logits / T)
    indices: torch.Tensor  # [n, top_k] chosen leaders
    scores: torch.Tensor  # [n, top_k] renormalized probabilities of the chosen leaders


def route(logits: torch.Tensor, top_k: int, temperature: float) -> Routing:
    probs = (logits / temperature).softmax(dim=-1)
    top = probs.topk(top_k, dim=-1)
    scores = top.values / top.values.sum(dim=-1, keepdim=True)
    return Routing(logits=logits, probs=probs, indices=top.indices, scores=scores)


class MoEBranch(nn.Module):
    """Multi-scale expert branch with kernel size k.

    values `[B, E, h, w]` (one per sample), `sample_index` `[n]`, routing for n pairs →
    `[n, E, h, w]`. The N_r leader kernels depend only on parameters, so in inference they
    are composed once and cached; the cache key is each parameter's identity and in-place
    version counter, which changes on optimizer steps, `load_state_dict`, delta application
    and device moves.

    A convolution is linear in its kernel and the post conv is a bias-free 1×1 conv (linear,
    before its GroupNorm), which the forward uses to do far fewer convolutions:
    - a pair's top-k routed experts need ONE conv with their score-weighted kernel sum
      instead of one conv each (top_k → 1);
    - where the feature map is large (2·h·w > E, all paper scales) the post conv is folded
      into the kernels too, `K_i = P_fixed·F + P_routed·(Σ_j s_ij W_j)`, so a pair needs a
      single E→E conv instead of 1 + top_k convs plus the 2E→E post conv; folding costs
      E³k² MACs per pair and saves 2·E²k²·h·w.
    Training and inference run the SAME operations on the same (cached or fresh) tensors,
    so the cached path is bitwise equal to composing the kernels on the fly; against the
    unfused formula the result differs only by float32 rounding (~1e-7 relative).
    """

    def __init__(self, channels: int, kernel_size: int, num_base: int, num_leaders: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.pre = conv1x1_gn_relu(channels, channels)
        self.base_experts = nn.Parameter(
            torch.randn(num_base, channels, channels, kernel_size, kernel_size) * 0.05
        )
        self.leaders = MoELeaders(num_leaders, num_base, channels)
        identity = torch.zeros(channels, channels, kernel_size, kernel_size)
        identity[torch.arange(channels), torch.arange(channels), kernel_size // 2, kernel_size // 2] = 1.0
        self.fixed_expert = nn.Parameter(identity)
        self.post = conv1x1_gn_relu(2 * channels, channels)
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self._folded: tuple[tuple, torch.Tensor] | None = None

    @staticmethod
    def _key_of(params) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)

    def _cache_key(self) -> tuple:
        return self._key_of((self.base_experts, self.leaders.mixing))

    def leader_kernels(self, use_cache: bool) -> torch.Tensor:
        """All N_r leader kernels `[N_r, E, E, k, k]`; cached when `use_cache` (inference)."""
        if not use_cache:
            return self.leaders(self.base_experts)
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.leaders(self.base_experts))
        return self._cache[1]

    def folded_fixed(self, use_cache: bool) -> torch.Tensor:
        """`P_fixed · F` `[E, E, k, k]`: the fixed expert with the post conv's first half
        folded in; cached when `use_cache` (the same einsum either way: bitwise equal)."""
        post = self.post[0].weight
        if use_cache:
            key = self._key_of((self.fixed_expert, post))
            if self._folded is not None and self._folded[0] == key:
                return self._folded[1]
        e = self.fixed_expert.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not use_cache):
            fixed = torch.einsum("om,miyx->oiyx", post[:, :e, 0, 0], self.fixed_expert)
        if use_cache:
            self._folded = (key, fixed)
        return fixed

    def invalidate_cache(self) -> None:
        self._cache = None
        self._folded = None

    def forward(
        self,
        values: torch.Tensor,
        sample_index: torch.Tensor,
        routing: Routing,
        use_cache: bool = False,
    ) -> torch.Tensor:
        v = self.pre(values)[sample_index]
        n, e, h, w = v.shape
        leaders = self.leader_kernels(use_cache)
        chosen = leaders[routing.indices]  # [n, top_k, E, E, k, k]
        scores = routing.scores.to(chosen.dtype).unsqueeze(1)  # [n, 1, top_k]
        mixed = torch.bmm(scores, chosen.flatten(2)).view(n, *leaders.shape[1:])  # Σ_j s_ij W_j
        if 2 * h * w > e:  # fold the post conv into one kernel per pair
            post = self.post[0].weight[:, e:, 0, 0]
            kernels = self.folded_fixed(use_cache) + torch.einsum("om,nmiyx->noiyx", post, mixed)
            out = grouped_dynamic_filter(v, kernels.unsqueeze(1).to(v.dtype))[:, 0]
            return self.post[2](self.post[1](out))  # the post block's GroupNorm and ReLU
        fixed = self.fixed_expert.expand(n, 1, *self.fixed_expert.shape)
        out = grouped_dynamic_filter(v, torch.cat([fixed, mixed.unsqueeze(1).to(fixed.dtype)], dim=1).to(v.dtype))
        return self.post(out.flatten(1, 2))


class ConditionRouter(nn.Module):
    """cond(concat(K, Q)) pooled to z `[n, E]`, then one gate `Linear(E → N_r)` per branch."""

    def __init__(self, channels: int, num_leaders: int, num_branches: int):
        super().__init__()
        self.cond = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.GELU(),
            group_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            group_norm(channels),
            nn.ReLU(inplace=True),
        )
        self.gates = nn.ModuleList(nn.Linear(channels, num_leaders) for _ in range(num_branches))

    def forward(self, keys: torch.Tensor, queries: torch.Tensor) -> list[torch.Tensor]:
        """keys, queries `[n, E, h, w]` → gate logits, one `[n, N_r]` per branch."""
        z = self.cond(torch.cat([keys, queries], dim=1)).mean(dim=(2, 3))
        return [gate(z) for gate in self.gates]


class CrossMoE(nn.Module):
    """C-MoE at one scale: general feature g `[B, C, h, w]` + priors p `[n, C, h, w]` of the n
    (sample, modality) pairs (`sample_index[i]` = the sample of pair i) → decompressed
    modality-specific features d `[n, C, h, w]` and the routing of each branch."""

    def __init__(
        self,
        channels: int,
        embed_dim: int,
        num_base: int,
        num_leaders: int,
        top_k: int,
        kernel_sizes: tuple[int, ...],
        temperature: float = 1.0,
    ):
        super().__init__()
        self.top_k = top_k
        self.temperature = temperature
        self.key_proj = conv1x1_gn_relu(channels, embed_dim)
        self.query_proj = conv1x1_gn_relu(channels, embed_dim)
        self.router = ConditionRouter(embed_dim, num_leaders, len(kernel_sizes))
        self.branches = nn.ModuleList(
            MoEBranch(embed_dim, k, num_base, num_leaders) for k in kernel_sizes
        )
        self.aggregate = conv1x1_gn_relu(len(kernel_sizes) * embed_dim, channels)

    def forward(
        self,
        general: torch.Tensor,
        priors: torch.Tensor,
        sample_index: torch.Tensor,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, list[Routing]]:
        keys = self.key_proj(general)
        queries = self.query_proj(priors)
        logits = self.router(keys[sample_index], queries)
        routings = [route(lg, self.top_k, self.temperature) for lg in logits]
        outs = [
            branch(keys, sample_index, routing, use_cache)
            for branch, routing in zip(self.branches, routings)
        ]
        return self.aggregate(torch.cat(outs, dim=1)), routings
