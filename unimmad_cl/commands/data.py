"""Data commands: synth (write the synthetic multi-modal benchmark, or the real-photo one)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from unimmad_cl.errors import UserError

KINDS = ("procedural", "photos")


@click.command("synth")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--kind", default="procedural", show_default=True, type=click.Choice(KINDS),
              help="procedural: 7 drawn multi-modal tasks (folder layout); photos: 8 tasks from "
                   "scikit-image's real photographs (MVTec AD / MVTec 3D-AD layouts).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed; same seed, same bytes.")
@click.option("--image-size", default=None, type=int,
              help="Image height in pixels [procedural 64, photos 256].")
@click.option("--train", "n_train", default=None, type=int,
              help="Training samples per class [procedural 24, photos 60; --large: 200].")
@click.option("--test", "n_test", default=None, type=int,
              help="Test samples per class, half defective [procedural 16, photos 40; --large: 100].")
@click.option("--large", is_flag=True, help="A larger set (200 train / 100 test per class).")
@click.option("--task", "tasks", multiple=True,
              help="Photos only: write this task (repeatable, in this order; default all).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new set is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the written tasks as JSON.")
def synth(out: Path, kind: str, seed: int, image_size: int | None, n_train: int | None, n_test: int | None,
          large: bool, tasks: tuple[str, ...], overwrite: bool, as_json: bool) -> None:
    """Write a deterministic benchmark with pixel masks and OUT/tasks.yaml for
    `unimmad-cl add-task --from OUT/tasks.yaml`.

    --kind procedural (default): seven drawn tasks in the `folder` layout (fabric, tiles,
    bagel_rgbd, pcb_ir, brain_mri, liver_ct, retina_oct). --kind photos: eight tasks cut from
    real photographs bundled with scikit-image (brick, grass, gravel, ihc, retina, coffee,
    chelsea in the MVTec AD layout; motorcycle RGB + depth in the MVTec 3D-AD layout).
    """
    if kind == "photos":
        from unimmad_cl.data.synth import photos as module
    elif tasks:
        raise UserError(f"--task needs --kind photos (it picks photo tasks), got --kind {kind}")
    else:
        from unimmad_cl.data.synth import benchmark as module
    image_size = module.DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if n_train is None:
        n_train = module.LARGE_TRAIN if large else module.DEFAULT_TRAIN
    if n_test is None:
        n_test = module.LARGE_TEST if large else module.DEFAULT_TEST
    if kind == "photos":
        entries = module.write_photo_benchmark(out, seed, image_size, n_train, n_test, tasks, overwrite)
    else:
        entries = module.write_benchmark(out, seed, image_size, n_train, n_test, overwrite)
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
