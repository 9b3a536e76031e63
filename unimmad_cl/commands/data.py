"""Data commands: synth (write the synthetic multi-modal benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("synth")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed; same seed, same bytes.")
@click.option("--image-size", default=64, show_default=True, type=int, help="Square image side in pixels.")
@click.option("--train", "n_train", default=None, type=int, help="Training samples per class [24; --large: 200].")
@click.option("--test", "n_test", default=None, type=int, help="Test samples per class, half defective [16; --large: 100].")
@click.option("--large", is_flag=True, help="A larger set (200 train / 100 test per class).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new set is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the written tasks as JSON.")
def synth(out: Path, seed: int, image_size: int, n_train: int | None, n_test: int | None,
          large: bool, overwrite: bool, as_json: bool) -> None:
    """Write a deterministic synthetic multi-modal benchmark in the `folder` layout.

    Seven tasks (fabric, tiles, bagel_rgbd, pcb_ir, brain_mri, liver_ct, retina_oct) with
    pixel masks, and OUT/tasks.yaml for `unimmad-cl add-task --from OUT/tasks.yaml`.
    """
    from unimmad_cl.data.synth import benchmark

    if n_train is None:
        n_train = benchmark.LARGE_TRAIN if large else benchmark.DEFAULT_TRAIN
    if n_test is None:
        n_test = benchmark.LARGE_TEST if large else benchmark.DEFAULT_TEST
    entries = benchmark.write_benchmark(out, seed, image_size, n_train, n_test, overwrite)
    if as_json:
        click.echo(json.dumps({"out": str(out), "tasks": entries}, indent=2))
        return
    for entry in entries:
        click.echo(
            f"{entry['name']:<12} {entry['field']:<11} {'+'.join(entry['modalities']):<38} "
            f"{', '.join(entry['classes'])}"
        )
    click.echo(
        f"wrote {len(entries)} tasks ({n_train} train / {n_test} test per class, "
        f"{image_size}px) to {out}; register them with: unimmad-cl add-task --from {out / 'tasks.yaml'}"
    )
