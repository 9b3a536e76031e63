"""Model commands: `info`."""

from __future__ import annotations

import json

import click


@click.command("info")
@click.option("--preset", default="lite", show_default=True, help="Model preset: lite, tiny or paper.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file whose `model:` mapping overrides preset fields.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(preset: str, config_file: str | None, as_json: bool) -> None:
    """Parameter breakdown: total, frozen prior, incremental subset, C-MoE expert savings."""
    from unimmad_cl.config import load_model_config
    from unimmad_cl.model.summary import parameter_summary

    summary = parameter_summary(load_model_config(preset, config_file), preset=preset)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"preset            {preset}  (backbone {summary['backbone']}, {summary['image_size']} px)")
    click.echo(f"backbone weights  {summary['weights']['description']}")
    click.echo(f"input             {summary['image_size']} px, mean {summary['normalization']['mean']}, "
               f"std {summary['normalization']['std']} (colour and gray modalities)")
    click.echo(f"total params      {summary['total_params']:,}")
    click.echo(f"prior (frozen)    {summary['prior_params']:,}")
    click.echo(
        f"incremental       {summary['incremental_params']:,}  "
        f"({100 * summary['incremental_fraction']:.2f} % of all; MoE-Leaders, routers, aggregation convs)"
    )
    click.echo("C-MoE per scale   base experts / leaders / fixed / plain-MoE equivalent")
    for row in summary["cmoe"]:
        click.echo(
            f"  scale {row['scale']} ({row['channels']} ch)  {row['base_expert_params']:,} / "
            f"{row['leader_params']:,} / {row['fixed_expert_params']:,} / {row['plain_moe_equivalent_params']:,}"
        )
    click.echo(f"MoE-in-MoE saves  {100 * summary['moe_param_reduction']:.2f} % of expert parameters")
