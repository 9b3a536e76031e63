"""End-to-end inference: `UniMMAD.predict` images/s with one and with four modalities per
sample, `tiny` and `paper` presets, peak memory, and the cost of each extra modality.

    python -m benchmarks.inference            # tiny (batch 16) and paper (batch 1)
    python -m benchmarks.inference --quick    # tiny only, fewer repeats

Random-weight models (speed does not depend on the weights), eval mode, random normalized
images. Variants timed interleaved on the same model and inputs: 1 and 4 modalities with the
shipped C-MoE forward, and the same with the forward before the kernel-folding optimization
(benchmarks/reference.py) for the before/after ratio. The first call, which builds the
leader-kernel cache, is timed separately. Peak memory: one extra call per variant with the
process's peak RSS reset (benchmarks/common.py, `peak_memory`).

Writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from benchmarks import common
from benchmarks.reference import original_forward, patched_forward
from unimmad_cl.config import ModelConfig


def make_inputs(config: ModelConfig, batch: int, modalities: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = config.max_modalities
    images = torch.randn(batch, m, 3, config.image_size, config.image_size, generator=g)
    mask = torch.zeros(batch, m, dtype=torch.bool)
    mask[:, :modalities] = True
    return images * mask[:, :, None, None, None], mask


def build_model(preset: str):
    from unimmad_cl.model.unimmad import UniMMAD

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone: expected here
        return UniMMAD(ModelConfig.preset(preset)).eval()


def run_preset(preset: str, batch: int, repeats: int) -> dict:
    model = build_model(preset)
    inputs = {k: make_inputs(model.config, batch, k) for k in (1, 4)}

    def call(k: int, forward=None):
        with patched_forward(forward):
            return model.predict(*inputs[k])

    start = time.perf_counter()
    call(1)  # builds the kernel cache
    first_call_s = time.perf_counter() - start
    fns = {
        "1_modality": lambda: call(1),
        "4_modalities": lambda: call(4),
        "original_1_modality": lambda: call(1, original_forward),
        "original_4_modalities": lambda: call(4, original_forward),
    }
    times = common.interleaved(fns, repeats, warmup=0 if preset == "paper" else 1)
    rows = {}
    for name in fns:
        k = 4 if name.endswith("4_modalities") else 1
        row = common.stats(times[name])
        row["modalities"] = k
        row["images_per_s"] = batch / row["median_s"]
        row["ms_per_image"] = 1000 * row["median_s"] / batch
        rows[name] = row
    for k, name in ((1, "1_modality"), (4, "4_modalities")):
        spec = {"preset": preset, "batch": batch, "modalities": k}
        rows[name]["memory"] = common.probe_in_subprocess("benchmarks.inference", spec, torch.get_num_threads())
    new, old = call(4), call(4, original_forward)
    per_extra = (rows["4_modalities"]["ms_per_image"] - rows["1_modality"]["ms_per_image"]) / 3
    profile = None
    if preset == "tiny":
        with torch.profiler.profile() as prof:
            call(4)
        table = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in table) or 1
        profile = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
                    "calls": e.count} for e in table[:12]]
    return {
        "profile_4_modalities": profile,
        "preset": preset,
        "batch": batch,
        "image_size": model.config.image_size,
        "first_call_s": first_call_s,
        "variants": rows,
        "ms_per_extra_modality": per_extra,
        "extra_modality_fraction": per_extra / rows["1_modality"]["ms_per_image"],
        "ratios": {
            "4_vs_1_modalities_time": common.ratio(times, "4_modalities", "1_modality"),
            "optimization_1_modality": common.ratio(times, "original_1_modality", "1_modality"),
            "optimization_4_modalities": common.ratio(times, "original_4_modalities", "4_modalities"),
        },
        "max_abs_diff_maps_vs_original": (new.maps - old.maps).abs().max().item(),
        "max_abs_diff_scores_vs_original": (new.scores - old.scores).abs().max().item(),
        "leader_counts_equal": bool(torch.equal(new.leader_counts, old.leader_counts)),
    }


def probe(spec: dict) -> dict:
    """Peak memory of predict (two calls: the first builds the kernel cache) in this process."""

    def setup():
        model = build_model(spec["preset"])
        return model, make_inputs(model.config, spec["batch"], spec["modalities"])

    def work(state):
        model, inputs = state
        for _ in range(2):
            model.predict(*inputs)

    return common.fresh_peak(setup, work)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: memory of one workload
    parser.add_argument("--tiny-batch", type=int, default=16)
    parser.add_argument("--paper-batch", type=int, default=1)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return {}
    env = common.environment()
    presets = {"tiny": args.tiny_batch} if args.quick else {"tiny": args.tiny_batch, "paper": args.paper_batch}
    results = {}
    for preset, batch in presets.items():
        repeats = args.repeats or (3 if args.quick else (7 if preset == "tiny" else 3))
        r = results[preset] = run_preset(preset, batch, repeats)
        v = r["variants"]
        print(
            f"{preset:>5} (batch {batch}): 1 modality {v['1_modality']['images_per_s']:.2f} img/s "
            f"({v['1_modality']['ms_per_image']:.0f} ms/img, peak +{common.mib(v['1_modality']['memory']['peak_extra_bytes'])}), "
            f"4 modalities {v['4_modalities']['images_per_s']:.2f} img/s "
            f"(peak +{common.mib(v['4_modalities']['memory']['peak_extra_bytes'])}); "
            f"+{r['ms_per_extra_modality']:.0f} ms/img per extra modality; "
            f"optimization {r['ratios']['optimization_1_modality']:.2f}x / {r['ratios']['optimization_4_modalities']:.2f}x; "
            f"|d maps| {r['max_abs_diff_maps_vs_original']:.1e}"
        )
    result = {
        "benchmark": "inference",
        "command": "python -m benchmarks.inference" + (" --quick" if args.quick else ""),
        "environment": common.finish_environment(env),
        "presets": results,
    }
    print(f"wrote {common.write_result('inference', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
