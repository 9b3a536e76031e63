"""Parameters and storage: MoE-in-MoE vs a plain MoE, base checkpoint vs per-stage delta bytes,
and total storage for 1, 5, 20 and 66 tasks against keeping one model per task.

    python -m benchmarks.storage            # tiny and paper
    python -m benchmarks.storage --quick    # the same (it takes seconds)

Counts come from models built on the meta device (shapes only). File sizes: the safetensors
layout is 8 bytes + a JSON header (padded to 8 bytes) + the raw tensor bytes; the header is
rebuilt here from the tensor names, dtypes and shapes and the metadata the project writes.
For `tiny` real files are also written with `save_model` / `write_delta` and the estimate
is checked against them. A delta holds the tensors `stage_tensor_names` selects for the
incremental subset (MoE-Leader mixing weights, condition routers, aggregation convs and the
running statistics of their normalization layers).

Growth model (paper §4.5 protocol, one stage per task after the base): storage for N tasks
= base + (N − 1) deltas, against N full models; a variant that shares the frozen prior
generator between the per-task models is listed too (the fairest alternative).

Writes benchmarks/results/storage.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import torch

from benchmarks import common
from unimmad_cl.config import ModelConfig

TASK_COUNTS = (1, 5, 20, 66)
TARGET_MOE_REDUCTION = 0.74
DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16"}


def safetensors_size(tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> int:
    """Bytes of a safetensors file holding tensors of these dtypes/shapes and this metadata."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    # the writer orders tensors by dtype alignment, then name; only offsets' digits depend on it
    for name in sorted(tensors, key=lambda n: (-torch.empty(0, dtype=tensors[n][0]).element_size(), n)):
        dtype, shape = tensors[name]
        size = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    return 8 + len(text) + (-len(text)) % 8 + offset


def meta_model(config: ModelConfig):
    from unimmad_cl.model.unimmad import UniMMAD

    with torch.device("meta"):
        return UniMMAD(config, load_weights=False)


def sizes_for(preset: str) -> dict:
    from unimmad_cl.model.io import FORMAT
    from unimmad_cl.model.summary import parameter_summary
    from unimmad_cl.model.unimmad import incremental_parameter_names
    from unimmad_cl.training.artifacts import DELTA_FORMAT, stage_tensor_names

    config = ModelConfig.preset(preset)
    summary = parameter_summary(config, preset)
    model = meta_model(config)
    state = {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}
    trainable = incremental_parameter_names(model)
    delta_names = stage_tensor_names(model, set(trainable))
    base_meta = {"format": FORMAT, "config": config.to_json()}
    delta_meta = {
        "format": DELTA_FORMAT, "stage": "12", "parent": "11", "parent_sha256": "0" * 64,
        "tasks": json.dumps(["task_name_0012"]), "config": config.to_json(),
    }
    base_bytes = safetensors_size(state, base_meta)
    delta_bytes = safetensors_size({n: state[n] for n in delta_names}, delta_meta)
    prior_names = [n for n in state if n.startswith("prior.")]
    prior_bytes = sum(torch.Size(state[n][1]).numel() * torch.empty(0, dtype=state[n][0]).element_size() for n in prior_names)
    moe = sum(c["base_expert_params"] + c["leader_params"] for c in summary["cmoe"])
    plain = sum(c["plain_moe_equivalent_params"] for c in summary["cmoe"])
    growth = []
    for n in TASK_COUNTS:
        continual = base_bytes + (n - 1) * delta_bytes
        per_task = n * base_bytes
        shared_prior = prior_bytes + n * (base_bytes - prior_bytes)
        growth.append({
            "tasks": n,
            "continual_bytes": continual,
            "one_model_per_task_bytes": per_task,
            "per_task_sharing_prior_bytes": shared_prior,
            "saving_vs_per_task": 1 - continual / per_task,
            "per_task_over_continual": per_task / continual,
        })
    return {
        "preset": preset,
        "params": {
            "total": summary["total_params"],
            "prior_frozen": summary["prior_params"],
            "incremental": summary["incremental_params"],
            "incremental_fraction": summary["incremental_fraction"],
            "moe_in_moe_expert_params": moe,
            "plain_moe_expert_params": plain,
            "moe_param_reduction": summary["moe_param_reduction"],
            "per_scale": summary["cmoe"],
        },
        "target_moe_reduction": TARGET_MOE_REDUCTION,
        "moe_reduction_target_met": summary["moe_param_reduction"] >= TARGET_MOE_REDUCTION if preset == "paper" else None,
        "files": {
            "base_bytes": base_bytes,
            "delta_bytes": delta_bytes,
            "delta_tensors": len(delta_names),
            "base_tensors": len(state),
            "delta_over_base": delta_bytes / base_bytes,
            "method": "computed from tensor shapes + safetensors header",
        },
        "growth": growth,
    }


def real_files_tiny() -> dict:
    """Write the tiny base and one delta for real; their sizes check the computed ones."""
    from unimmad_cl.model.io import save_model
    from unimmad_cl.model.unimmad import UniMMAD, incremental_parameter_names
    from unimmad_cl.training.artifacts import stage_tensor_names, write_delta

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = UniMMAD(ModelConfig.preset("tiny"))
    with tempfile.TemporaryDirectory() as tmp:
        base, delta = Path(tmp) / "base.safetensors", Path(tmp) / "stage_012.delta.safetensors"
        save_model(model, base)
        names = stage_tensor_names(model, set(incremental_parameter_names(model)))
        write_delta(model, names, delta, stage=12, parent=11, parent_sha256="0" * 64, tasks=["task_name_0012"])
        return {"base_bytes": base.stat().st_size, "delta_bytes": delta.stat().st_size}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    env = common.environment()
    presets = {p: sizes_for(p) for p in ("tiny", "paper")}
    real = real_files_tiny()
    presets["tiny"]["files"]["real_files"] = real
    presets["tiny"]["files"]["estimate_error_bytes"] = {
        "base": presets["tiny"]["files"]["base_bytes"] - real["base_bytes"],
        "delta": presets["tiny"]["files"]["delta_bytes"] - real["delta_bytes"],
    }
    for name, r in presets.items():
        f, p = r["files"], r["params"]
        print(
            f"{name:>5}: MoE-in-MoE {p['moe_in_moe_expert_params']:,} vs plain MoE {p['plain_moe_expert_params']:,} expert params "
            f"({p['moe_param_reduction']:.2%} saved); base {f['base_bytes'] / 2**20:.1f} MiB, delta {f['delta_bytes'] / 2**20:.2f} MiB "
            f"({f['delta_over_base']:.2%})"
        )
        for g in r["growth"]:
            print(f"       {g['tasks']:>3} tasks: continual {g['continual_bytes'] / 2**20:9.1f} MiB, "
                  f"one model per task {g['one_model_per_task_bytes'] / 2**20:9.1f} MiB ({g['per_task_over_continual']:.1f}x)")
    print(f"tiny real files: base {real['base_bytes']:,} B, delta {real['delta_bytes']:,} B "
          f"(estimate off by {presets['tiny']['files']['estimate_error_bytes']})")
    result = {
        "benchmark": "storage",
        "command": "python -m benchmarks.storage",
        "environment": common.finish_environment(env),
        "task_counts": list(TASK_COUNTS),
        "presets": presets,
    }
    print(f"wrote {common.write_result('storage', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
