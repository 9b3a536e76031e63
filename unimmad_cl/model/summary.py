"""Parameter breakdown of a model configuration (what `unimmad-cl info` prints)."""

from __future__ import annotations

from typing import Any

import torch

from unimmad_cl.config import ModelConfig
from unimmad_cl.model.backbone import describe_weights


def count(params) -> int:
    return sum(p.numel() for p in params)


def parameter_summary(config: ModelConfig, preset: str | None = None) -> dict[str, Any]:
    """Counts of the model built from `config`: total, frozen prior, incremental subset, and
    per-scale C-MoE expert counts against a plain MoE with N_r full experts per branch.

    The model is built on the meta device: shapes only, no memory, no weight loading.
    """
    from unimmad_cl.model.unimmad import UniMMAD, incremental_parameter_names, prior_parameter_names

    with torch.device("meta"):
        model = UniMMAD(config, load_weights=False)
    named = dict(model.named_parameters())
    total = count(named.values())
    incremental = count(named[n] for n in incremental_parameter_names(model))
    cmoe = []
    for scale, moe in enumerate(model.cmoe):
        base = count(b.base_experts for b in moe.branches)
        leaders = count(b.leaders.mixing for b in moe.branches)
        fixed = count(b.fixed_expert for b in moe.branches)
        plain = sum(config.num_leaders * b.base_experts[0].numel() for b in moe.branches)
        cmoe.append(
            {
                "scale": scale,
                "channels": model.channels[scale],
                "base_expert_params": base,
                "leader_params": leaders,
                "fixed_expert_params": fixed,
                "plain_moe_equivalent_params": plain,
            }
        )
    weights = describe_weights(config)
    mean, std = model.normalization
    moe_params = sum(c["base_expert_params"] + c["leader_params"] for c in cmoe)
    plain_params = sum(c["plain_moe_equivalent_params"] for c in cmoe)
    return {
        "preset": preset,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "weights": {**weights.to_dict(), "description": weights.describe()},
        "normalization": {"mean": list(mean), "std": list(std)},
        "total_params": total,
        "prior_params": count(named[n] for n in prior_parameter_names(model)),
        "incremental_params": incremental,
        "incremental_fraction": incremental / total,
        "cmoe": cmoe,
        "moe_param_reduction": 1.0 - moe_params / plain_params,
    }
