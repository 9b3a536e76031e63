"""Training speed: a base step (every parameter, full autograd) vs an incremental step
(`freeze_for_incremental`: MoE-Leaders, routers, aggregation convs; the encoder then runs
without autograd), samples/s and peak memory, with a forward/backward/optimizer breakdown.

    python -m benchmarks.training_speed            # tiny (batch 8) and paper (batch 2)
    python -m benchmarks.training_speed --quick    # tiny only, fewer repeats

A step is what `unimmad_cl.training.loop.train_epochs` does per batch: forward, loss, zero_grad,
backward, Adam step, `.item()` of the losses. Both models start from the same weights and
see the same synthetic batches (mixed 1- and 2-modality samples); steps alternate base /
incremental so load from other processes hits both alike. An epoch is steps plus data
loading, which is the same for both stages, so the step ratio bounds the epoch ratio from
below. The shipped C-MoE forward is compared with the forward before the kernel-folding
optimization (benchmarks/reference.py) for the before/after ratio.

Writes benchmarks/results/training_speed.json.
"""

from __future__ import annotations

import argparse
import json
import copy
import statistics
import time
import warnings

import torch

from benchmarks import common
from benchmarks.reference import original_forward, patched_forward
from unimmad_cl.config import ModelConfig

TARGET_INCREMENTAL_VS_BASE = 0.5


def make_batches(config: ModelConfig, batch: int, count: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = config.max_modalities
    out = []
    for _ in range(count):
        images = torch.randn(batch, m, 3, config.image_size, config.image_size, generator=g)
        mask = torch.zeros(batch, m, dtype=torch.bool)
        mask[:, 0] = True
        mask[::2, 1] = True  # every other sample has a second modality
        out.append((images * mask[:, :, None, None, None], mask, torch.ones(batch)))
    return out


def build_pair(preset: str):
    """(base model + Adam over all, incremental model + Adam over its subset), same weights."""
    from unimmad_cl.model.unimmad import UniMMAD, freeze_for_incremental

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = UniMMAD(ModelConfig.preset(preset))
    inc = copy.deepcopy(base)
    trainable = freeze_for_incremental(inc)
    base.train()
    inc.train()
    opt_base = torch.optim.Adam([p for p in base.parameters() if p.requires_grad], lr=1e-4)
    opt_inc = torch.optim.Adam([p for p in inc.parameters() if p.requires_grad], lr=1e-4)
    return (base, opt_base), (inc, opt_inc), trainable


def step(model, opt, batch, parts: dict[str, list[float]] | None = None) -> float:
    images, mask, weight = batch
    t0 = time.perf_counter()
    out = model(images, mask)
    losses = model.loss(out, weight, 0, 10)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    losses.total.backward()
    t2 = time.perf_counter()
    opt.step()
    value = losses.total.item() + losses.consistency.item() + losses.load_balance.item()
    t3 = time.perf_counter()
    if parts is not None:
        parts["forward"].append(t1 - t0)
        parts["backward"].append(t2 - t1)
        parts["optimizer"].append(t3 - t2)
    return value


def frozen_features(model, batch) -> None:
    """The part of an incremental forward whose parameters are all frozen: input embedding,
    general encoder and prior generator (no autograd), as UniMMAD.forward runs them."""
    images, mask, _ = batch
    sample_index, slot = mask.nonzero(as_tuple=True)
    with torch.no_grad():
        model.encoder(model.embedding(images.flatten(1, 2)))
        model.prior(images[sample_index, slot])


def probe(spec: dict) -> dict:
    """Peak memory of two training steps of one kind, in this process."""

    def setup():
        (base, opt_base), (inc, opt_inc), _ = build_pair(spec["preset"])
        model, opt = (base, opt_base) if spec["kind"] == "base" else (inc, opt_inc)
        del base, inc
        return model, opt, make_batches(model.config, spec["batch"], 2)

    def work(state):
        model, opt, batches = state
        for b in batches:
            step(model, opt, b)

    return common.fresh_peak(setup, work)


def profile_step(model, opt, batch, rows: int = 12) -> list[dict]:
    """Top ops of one step by self CPU time (torch profiler)."""
    with torch.profiler.profile() as prof:
        step(model, opt, batch)
    table = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in table) or 1
    return [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in table[:rows]
    ]


def run_preset(preset: str, batch: int, repeats: int, profile: bool) -> dict:
    (base, opt_base), (inc, opt_inc), trainable = build_pair(preset)
    batches = make_batches(base.config, batch, 4)
    counter = {"i": 0}

    def next_batch():
        counter["i"] += 1
        return batches[counter["i"] % len(batches)]

    parts = {name: {"forward": [], "backward": [], "optimizer": []} for name in ("base", "incremental")}
    fns = {
        "base": lambda: step(base, opt_base, next_batch(), parts["base"]),
        "incremental": lambda: step(inc, opt_inc, next_batch(), parts["incremental"]),
        "original_base": lambda: _with(original_forward, step, base, opt_base, next_batch()),
        "original_incremental": lambda: _with(original_forward, step, inc, opt_inc, next_batch()),
    }
    times = common.interleaved(fns, repeats, warmup=1)
    frozen = common.interleaved({"frozen": lambda: frozen_features(inc, next_batch())}, max(2, repeats // 2), warmup=0)
    for p in parts.values():  # drop the warm-up round
        for k in p:
            p[k] = p[k][1:]
    rows = {}
    for name in fns:
        row = common.stats(times[name])
        row["samples_per_s"] = batch / row["median_s"]
        if name in parts:
            row["breakdown_median_s"] = {k: statistics.median(v) for k, v in parts[name].items()}
            spec = {"preset": preset, "batch": batch, "kind": name}
            row["memory"] = common.probe_in_subprocess("benchmarks.training_speed", spec, torch.get_num_threads())
        rows[name] = row
    n_params = sum(p.numel() for p in base.parameters())
    frozen_s = statistics.median(frozen["frozen"])
    rows["incremental"]["frozen_features_median_s"] = frozen_s
    result = {
        "preset": preset,
        "batch": batch,
        "trainable_params": {
            "base": sum(p.numel() for p in base.parameters() if p.requires_grad),
            "incremental": sum(p.numel() for p in inc.parameters() if p.requires_grad),
            "total": n_params,
        },
        "steps": rows,
        "ratios": {
            "incremental_vs_base_time": common.ratio(times, "incremental", "base"),
            "optimization_base": common.ratio(times, "original_base", "base"),
            "optimization_incremental": common.ratio(times, "original_incremental", "incremental"),
            "original_incremental_vs_base_time": common.ratio(times, "original_incremental", "original_base"),
            # what an incremental step would cost if the frozen features (embedding + encoder
            # + prior, deterministic in incremental stages) were cached across epochs
            "incremental_without_frozen_features_vs_base_time": (rows["incremental"]["median_s"] - frozen_s)
            / rows["base"]["median_s"],
        },
    }
    result["target_met"] = result["ratios"]["incremental_vs_base_time"] <= TARGET_INCREMENTAL_VS_BASE
    if profile:
        result["profile_incremental_step"] = profile_step(inc, opt_inc, batches[0])
        result["profile_base_step"] = profile_step(base, opt_base, batches[0])
    return result


def _with(forward, fn, *args):
    with patched_forward(forward):
        return fn(*args)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: memory of one workload
    parser.add_argument("--tiny-batch", type=int, default=8)
    parser.add_argument("--paper-batch", type=int, default=2)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return {}
    env = common.environment()
    presets = {"tiny": args.tiny_batch} if args.quick else {"tiny": args.tiny_batch, "paper": args.paper_batch}
    results = {}
    for preset, batch in presets.items():
        repeats = args.repeats or (3 if args.quick else (10 if preset == "tiny" else 2))
        r = results[preset] = run_preset(preset, batch, repeats, profile=preset == "tiny")
        s = r["steps"]
        print(
            f"{preset:>5} (batch {batch}): base {s['base']['samples_per_s']:.1f} samples/s "
            f"(peak +{common.mib(s['base']['memory']['peak_extra_bytes'])}), incremental "
            f"{s['incremental']['samples_per_s']:.1f} samples/s (peak +{common.mib(s['incremental']['memory']['peak_extra_bytes'])}); "
            f"incremental/base time {r['ratios']['incremental_vs_base_time']:.2f} (target <= {TARGET_INCREMENTAL_VS_BASE}); "
            f"optimization {r['ratios']['optimization_base']:.2f}x base, {r['ratios']['optimization_incremental']:.2f}x incremental; "
            f"with cached frozen features {r['ratios']['incremental_without_frozen_features_vs_base_time']:.2f}"
        )
    result = {
        "benchmark": "training_speed",
        "command": "python -m benchmarks.training_speed" + (" --quick" if args.quick else ""),
        "environment": common.finish_environment(env),
        "target_incremental_vs_base": TARGET_INCREMENTAL_VS_BASE,
        "presets": results,
    }
    print(f"wrote {common.write_result('training_speed', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
