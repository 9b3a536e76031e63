"""Print the figures of benchmarks/results/*.json as the markdown tables of BENCHMARKS.md.

    python -m benchmarks.summary [--results DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import RESULTS_DIR


def _load(d: Path, name: str) -> dict | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _env(r: dict) -> str:
    e = r.get("environment", {})
    la = e.get("load_avg_start"), e.get("load_avg_end")
    load = f"load avg {la[0][0]:.1f} → {la[1][0]:.1f}" if all(la) else ""
    return f"torch {e.get('torch')}, {e.get('torch_threads')} thread(s), {e.get('cpu_count')} CPUs, {load}, commit {e.get('git_commit')}"


def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def cmoe(r: dict) -> list[str]:
    out = [f"`{r['command']}` — {_env(r)}", "",
           "| preset | images | cached ms/img (img/s) | on the fly ms/img | loop ms/img | cached / on the fly | grouped / loop | before (cached) ms/img | optimization |",
           "|---|---|---|---|---|---|---|---|---|"]
    for p, v in r["presets"].items():
        var, ra = v["variants"], v["ratios"]
        out.append(
            f"| {p} | {v['pairs']} | {var['cached']['ms_per_image']:.1f} ({var['cached']['images_per_s']:.1f}) | "
            f"{var['on_the_fly']['ms_per_image']:.1f} | {var['loop']['ms_per_image']:.1f} | "
            f"**{ra['cached_vs_on_the_fly']:.2f}×** | **{ra['grouped_vs_loop']:.2f}×** | "
            f"{var['original_cached']['ms_per_image']:.1f} | {ra['optimization_cached']:.2f}× |"
        )
    return out


def inference(r: dict) -> list[str]:
    out = [f"`{r['command']}` — {_env(r)}", "",
           "| preset | batch | modalities | img/s | ms/img | peak extra memory | before: ms/img | optimization |",
           "|---|---|---|---|---|---|---|---|"]
    for p, v in r["presets"].items():
        for k, name in ((1, "1_modality"), (4, "4_modalities")):
            row, old = v["variants"][name], v["variants"][f"original_{name}"]
            out.append(
                f"| {p} | {v['batch']} | {k} | {row['images_per_s']:.2f} | {row['ms_per_image']:.0f} | "
                f"{mib(row['memory']['peak_extra_bytes'])} | {old['ms_per_image']:.0f} | {old['median_s'] / row['median_s']:.2f}× |"
            )
    out.append("")
    for p, v in r["presets"].items():
        out.append(f"- {p}: each extra modality costs **{v['ms_per_extra_modality']:.0f} ms/img** "
                   f"({v['extra_modality_fraction']:.0%} of a one-modality image); first call (builds the kernel cache) "
                   f"{v['first_call_s']:.2f} s; |Δ maps| vs before {v['max_abs_diff_maps_vs_original']:.1e}, "
                   f"leader counts equal: {v['leader_counts_equal']}")
    return out


def training(r: dict) -> list[str]:
    out = [f"`{r['command']}` — {_env(r)}", "",
           "| preset | batch | step | samples/s | ms/step | forward / backward / optimizer ms | peak extra memory | before: ms/step |",
           "|---|---|---|---|---|---|---|---|"]
    for p, v in r["presets"].items():
        for kind in ("base", "incremental"):
            s, old = v["steps"][kind], v["steps"][f"original_{kind}"]
            b = s["breakdown_median_s"]
            out.append(
                f"| {p} | {v['batch']} | {kind} | {s['samples_per_s']:.2f} | {1000 * s['median_s']:.0f} | "
                f"{1000 * b['forward']:.0f} / {1000 * b['backward']:.0f} / {1000 * b['optimizer']:.0f} | "
                f"{mib(s['memory']['peak_extra_bytes'])} | {1000 * old['median_s']:.0f} |"
            )
    out.append("")
    for p, v in r["presets"].items():
        ra = v["ratios"]
        out.append(f"- {p}: incremental / base step time **{ra['incremental_vs_base_time']:.2f}** (target ≤ 0.5: "
                   f"{'met' if v['target_met'] else 'NOT met'}); with cached frozen features it would be "
                   f"{ra['incremental_without_frozen_features_vs_base_time']:.2f}; optimization {ra['optimization_base']:.2f}× base, "
                   f"{ra['optimization_incremental']:.2f}× incremental; trainable {v['trainable_params']['incremental']:,} of "
                   f"{v['trainable_params']['total']:,}")
    return out


def storage(r: dict) -> list[str]:
    out = [f"`{r['command']}`", "",
           "| preset | MoE-in-MoE expert params | plain MoE | saved | base file | delta file | delta / base |",
           "|---|---|---|---|---|---|---|"]
    for p, v in r["presets"].items():
        a, f = v["params"], v["files"]
        out.append(f"| {p} | {a['moe_in_moe_expert_params']:,} | {a['plain_moe_expert_params']:,} | "
                   f"**{a['moe_param_reduction']:.2%}** | {mib(f['base_bytes'])} | {mib(f['delta_bytes'])} | {f['delta_over_base']:.2%} |")
    out += ["", "| preset | tasks | continual (base + deltas) | one model per task | per-task, prior shared | per task ÷ continual |",
            "|---|---|---|---|---|---|"]
    for p, v in r["presets"].items():
        for g in v["growth"]:
            out.append(f"| {p} | {g['tasks']} | {mib(g['continual_bytes'])} | {mib(g['one_model_per_task_bytes'])} | "
                       f"{mib(g['per_task_sharing_prior_bytes'])} | {g['per_task_over_continual']:.1f}× |")
    return out


def metrics(r: dict) -> list[str]:
    c, f = r["comparison"], r["full"]
    return [
        "`python -m benchmarks.metrics_speed`", "",
        f"- same {c['n']} maps of {r['data']['size']}²: compute_metrics (all 7 metrics) {c['compute_metrics_s']:.2f} s vs "
        f"{c['thresholds']}-threshold sweep {c['reference_s']:.2f} s → **{c['speedup']:.1f}×**; |Δ AUPRO| {c['aupro_abs_diff']:.1e}, "
        f"|Δ P-AUROC| {c['p_auroc_abs_diff']:.1e}",
        f"- full {f['n']} maps of {r['data']['size']}²: **{f['compute_metrics_s']:.2f} s**, peak extra memory "
        f"{mib(f['peak_extra_bytes'])} (inputs {mib(r['data']['input_bytes'])})",
    ]


def registry(r: dict) -> list[str]:
    g = r["registry"]
    out = [f"`{r['command']}` — {_env(r)}", "",
           f"{g['tasks']:,} tasks, {g['stages']} stages, {g['evaluation_rows']:,} evaluation rows, database {mib(g['db_bytes'])}.", "",
           "| command | median wall s | max wall s | median CPU s | wall < 1 s | CPU < 1 s |", "|---|---|---|---|---|---|"]
    for name, row in r["cli"].items():
        out.append(f"| `{name}` | {row['median_s']:.2f} | {row['max_s']:.2f} | {row.get('cpu_median_s', float('nan')):.2f} | "
                   f"{'yes' if row['under_target'] else '**no**'} | {'yes' if row.get('cpu_under_target') else '**no**'} |")
    rb = r["reconstruction"]
    out += ["", "| deltas in the chain | load_chain median s | min s |", "|---|---|---|"]
    for name, row in rb["chains"].items():
        out.append(f"| {name.split('_')[0]} | {row['median_s']:.3f} | {row['min_s']:.3f} |")
    chains = sorted((int(n.split("_")[0]), row["min_s"]) for n, row in rb["chains"].items())
    slope_min = (chains[-1][1] - chains[0][1]) / (chains[-1][0] - chains[0][0])
    out.append(f"\n{1000 * rb['seconds_per_delta']:.1f} ms per delta from medians, {1000 * slope_min:.1f} ms from minimums (tiny: base {mib(rb['base_bytes'])}, delta {mib(rb['delta_bytes'])}); "
               f"rebuilt model equals the trained one: {rb['rebuilt_equals_trained_model']}")
    return out


def cli(r: dict) -> list[str]:
    out = ["`python -m benchmarks.cli_startup`", "", "| command | median s |", "|---|---|"]
    out += [f"| `{n}` | {row['median_s']:.2f} |" for n, row in r["commands"].items()]
    out.append(f"\ntorch imported by registry commands: {r['torch_imported']}")
    return out


def concurrency(r: dict) -> list[str]:
    s = r["settings"]
    out = [f"`{r['command']}` — {s['preset']} {s['image_size']} px, batch {s['batch']}, {s['steps']} timed steps, "
           f"{r['environment']['cpus_available']} cores", "",
           "| variant | processes | samples/s each | ratio to its solo (slowest) | ratio to default solo | samples per CPU s | threads | wait | load avg at start |",
           "|---|---|---|---|---|---|---|---|---|"]
    for v, rows in r["summary"].items():
        for n, row in rows.items():
            to_default = row.get("ratio_to_default_solo_min")
            out.append(
                f"| {v} | {n} | {', '.join(f'{x:.2f}' for x in row['samples_per_s_each'])} | "
                f"**{row['ratio_to_solo_min']:.2f}** | {'-' if to_default is None else f'{to_default:.2f}'} | "
                f"{row['samples_per_cpu_s']:.2f} | "
                f"{'/'.join(map(str, row['threads']))} | {'/'.join(row['wait_policy'])} | "
                f"{', '.join(f'{x:.1f}' for x in row['load_avg_at_start'])} |")
    return out


SECTIONS = [("cmoe_inference", cmoe), ("inference", inference), ("training_speed", training), ("storage", storage),
            ("metrics_speed", metrics), ("registry_scale", registry), ("cli_startup", cli), ("concurrency", concurrency)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for name, fn in SECTIONS:
        r = _load(args.results, name)
        print(f"### {name}\n")
        print("\n".join(fn(r)) if r else "(no result yet)")
        print()


if __name__ == "__main__":
    main()
