"""C-MoE inference speed: cached leader kernels + grouped filtering vs composing the kernels on
the fly vs a naive loop over experts, at `tiny` and `paper` widths.

    python -m benchmarks.cmoe_inference            # tiny (16 images) and paper (1 image)
    python -m benchmarks.cmoe_inference --quick    # tiny only

Times the whole C-MoE stage of one forward: the three CrossMoE modules (one per scale, at the
preset's feature sizes: image/4, /8, /16) on n (sample, modality) pairs, one modality per
image, under no_grad in eval mode. Variants (interleaved repeats, same weights and inputs):

- `cached`: the shipped forward with cached leader kernels (what `predict` runs);
- `on_the_fly`: the shipped forward composing all N_r leader kernels every call;
- `loop`: a Python loop over pairs and experts, one conv2d per expert (cached kernels);
- `original_cached`, `original_on_the_fly`: the forward before the kernel-folding
  optimization (benchmarks/reference.py), for the before/after ratio.

Writes benchmarks/results/cmoe_inference.json.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.reference import loop_forward, original_forward, patched_forward
from unimmad_cl.config import ModelConfig
from unimmad_cl.model.cmoe import CrossMoE
from unimmad_cl.model.summary import parameter_summary

TARGETS = {"cached_vs_on_the_fly": 1.3, "grouped_vs_loop": 2.0}

VARIANTS = {  # name: (forward, use_cache)
    "cached": (None, True),
    "on_the_fly": (None, False),
    "loop": (loop_forward, True),
    "original_cached": (original_forward, True),
    "original_on_the_fly": (original_forward, False),
}


def build_stage(preset: str, n: int, seed: int = 0):
    """The three CrossMoE modules of `preset` and random L2-normalized inputs for n pairs."""
    config = ModelConfig.preset(preset)
    channels = [c["channels"] for c in parameter_summary(config, preset)["cmoe"]]
    sizes = [config.image_size // s for s in (4, 8, 16)]
    torch.manual_seed(seed)
    modules, inputs = [], []
    for c, s in zip(channels, sizes):
        moe = CrossMoE(c, config.embed_dim, config.num_base_experts, config.num_leaders, config.top_k,
                       config.kernel_sizes, config.gate_temperature).eval()
        with torch.no_grad():  # move off the identity init so the fixed expert does real work
            for branch in moe.branches:
                branch.fixed_expert.add_(0.02 * torch.randn_like(branch.fixed_expert))
        g = F.normalize(torch.randn(n, c, s, s), dim=1)
        p = F.normalize(torch.randn(n, c, s, s), dim=1)
        modules.append(moe)
        inputs.append((g, p))
    return config, channels, sizes, modules, inputs


def stage_forward(modules, inputs, forward, use_cache: bool) -> list[torch.Tensor]:
    n = inputs[0][0].shape[0]
    index = torch.arange(n)
    with torch.no_grad(), patched_forward(forward):
        return [moe(g, p, index, use_cache=use_cache)[0] for moe, (g, p) in zip(modules, inputs)]


def run_preset(preset: str, n: int, repeats: int, number: int = 1) -> dict:
    config, channels, sizes, modules, inputs = build_stage(preset, n)
    fns = {name: (lambda f=f, c=c: stage_forward(modules, inputs, f, c)) for name, (f, c) in VARIANTS.items()}
    times = common.interleaved(fns, repeats, warmup=1, number=number)
    reference = stage_forward(modules, inputs, original_forward, False)
    rows = {}
    for name, (f, c) in VARIANTS.items():
        out = stage_forward(modules, inputs, f, c)
        row = common.stats(times[name])
        row["ms_per_image"] = 1000 * row["median_s"] / n
        row["images_per_s"] = n / row["median_s"]
        row["max_abs_diff_vs_original"] = max((a - b).abs().max().item() for a, b in zip(out, reference))
        rows[name] = row
    ratios = {
        "cached_vs_on_the_fly": common.ratio(times, "on_the_fly", "cached"),
        "grouped_vs_loop": common.ratio(times, "loop", "cached"),
        "original_grouped_vs_loop": common.ratio(times, "loop", "original_cached"),
        "original_cached_vs_on_the_fly": common.ratio(times, "original_on_the_fly", "original_cached"),
        "optimization_cached": common.ratio(times, "original_cached", "cached"),
        "optimization_on_the_fly": common.ratio(times, "original_on_the_fly", "on_the_fly"),
    }
    min_ratios = {
        "cached_vs_on_the_fly": common.min_ratio(times, "on_the_fly", "cached"),
        "grouped_vs_loop": common.min_ratio(times, "loop", "cached"),
        "optimization_cached": common.min_ratio(times, "original_cached", "cached"),
    }
    return {
        "preset": preset,
        "pairs": n,
        "embed_dim": config.embed_dim,
        "num_base_experts": config.num_base_experts,
        "num_leaders": config.num_leaders,
        "scales": [{"channels": c, "size": s} for c, s in zip(channels, sizes)],
        "variants": rows,
        "number_per_sample": number,
        "ratios": ratios,
        "ratios_of_minimums": min_ratios,
        "targets_met": {k: ratios[k] >= v for k, v in TARGETS.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tiny-pairs", type=int, default=16, help="pairs at tiny (16 = the default eval batch)")
    parser.add_argument("--paper-pairs", type=int, default=1)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    env = common.environment()
    presets = {"tiny": args.tiny_pairs} if args.quick else {"tiny": args.tiny_pairs, "paper": args.paper_pairs}
    results = {}
    for preset, n in presets.items():
        repeats = args.repeats or (3 if args.quick else (15 if preset == "tiny" else 4))
        number = 1 if args.quick or preset == "paper" else 5
        results[preset] = run_preset(preset, n, repeats, number)
        r = results[preset]
        v = r["variants"]
        print(
            f"{preset:>5} ({n} img): cached {v['cached']['ms_per_image']:.1f} ms/img "
            f"({v['cached']['images_per_s']:.1f} img/s), on the fly {v['on_the_fly']['ms_per_image']:.1f}, "
            f"loop {v['loop']['ms_per_image']:.1f}, original cached {v['original_cached']['ms_per_image']:.1f} | "
            f"cached/on-the-fly {r['ratios']['cached_vs_on_the_fly']:.2f}x, grouped/loop "
            f"{r['ratios']['grouped_vs_loop']:.2f}x, optimization {r['ratios']['optimization_cached']:.2f}x"
        )
    result = {
        "benchmark": "cmoe_inference",
        "command": "python -m benchmarks.cmoe_inference" + (" --quick" if args.quick else ""),
        "environment": common.finish_environment(env),
        "targets": TARGETS,
        "presets": results,
    }
    print(f"wrote {common.write_result('cmoe_inference', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
