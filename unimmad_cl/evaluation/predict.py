"""Predict on new inputs of a trained task: anomaly-map overlays, image scores, decisions.

An input is one image file (a single-modality task) or a folder with one file per modality
named `<modality>.<ext>` (e.g. `rgb.png` + `depth.tiff`). Inputs are decoded exactly as the
task's test samples are (`TaskDataset` → `collate`), so a prediction equals what evaluation
would compute for the same files.

The decision threshold is the F1-optimal image-score threshold on the task's test split for
the same stage's model: an input is anomalous when its score >= the threshold. The colour
scale of the overlays is shared by all inputs: from the median pixel of the test split's
good maps (dark) to the threshold (full red), so red reads "as anomalous as a flagged image".
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unimmad_cl.data.modalities import MODALITIES
from unimmad_cl.errors import UserError
from unimmad_cl.files import write_text_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CSV_NAME = "predictions.csv"


@dataclass(frozen=True)
class PredictInput:
    name: str  # the input as the user gave it
    paths: tuple[str, ...]  # one file per task modality, in the task's order


@dataclass(frozen=True)
class Threshold:
    value: float
    f1: float
    map_range: tuple[float, float]  # shared colour scale of the overlays


@dataclass(frozen=True)
class PredictionRow:
    input: str
    score: float
    threshold: float
    anomalous: bool
    heatmap: str


# --------------------------------------------------------------------------- inputs


def _expected(task: str, modalities: tuple[str, ...]) -> str:
    return (f"task {task!r} takes {'+'.join(modalities)}: give "
            + (f"an image file or a folder with {modalities[0]}.<ext>" if len(modalities) == 1
               else f"a folder with {', '.join(m + '.<ext>' for m in modalities)}"))


def resolve_input(path: Path, task: str, modalities: tuple[str, ...]) -> PredictInput:
    """Map one input to the task's modality files, or raise a one-line UserError."""
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"input {path}: not an image ({', '.join(IMAGE_SUFFIXES)}); {_expected(task, modalities)}")
        named = path.stem.lower()
        if len(modalities) != 1 or (named in MODALITIES and named != modalities[0]):
            raise UserError(f"input {path}: one image, but {_expected(task, modalities)}")
        return PredictInput(str(path), (str(path),))
    if not path.is_dir():
        raise UserError(f"input {path} does not exist")
    found: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        modality = file.stem.lower()
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and modality in MODALITIES:
            if modality in found:
                raise UserError(f"input {path}: two files for modality {modality} ({found[modality].name}, {file.name})")
            found[modality] = file
    if set(found) != set(modalities):
        have = "+".join(sorted(found)) or "no <modality>.<ext> files"
        raise UserError(f"input {path}: has {have}, but {_expected(task, modalities)}")
    return PredictInput(str(path), tuple(str(found[m]) for m in modalities))


def resolve_inputs(paths: list[Path], task: str, modalities: tuple[str, ...]) -> list[PredictInput]:
    """Every input resolved and its files' headers readable, before anything is computed."""
    from unimmad_cl.data.images import image_hw

    if not paths:
        raise UserError("no inputs given: name image files or sample folders")
    inputs = [resolve_input(Path(p), task, modalities) for p in paths]
    for item in inputs:
        for file in item.paths:
            image_hw(file)
    return inputs


# --------------------------------------------------------------------------- threshold


def f1_optimal_threshold(labels, scores) -> tuple[float, float]:
    """(threshold, F1) maximizing F1 of `score >= threshold` over the image scores."""
    from sklearn.metrics import precision_recall_curve

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.min() == labels.max():
        raise UserError("cannot choose a threshold: the task's test split needs both good and anomalous samples")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision 1, recall 0) point has no threshold.
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def task_threshold(result) -> Threshold:
    """The threshold and the overlay colour scale from a task's `EvaluationResult` with maps."""
    value, f1 = f1_optimal_threshold(result.labels, result.scores)
    good = result.maps[result.labels == 0]
    low = float(np.median(good)) if good.size else float(result.maps.min())
    return Threshold(value, f1, (low, max(value, low + 1e-6)))


# --------------------------------------------------------------------------- prediction


def _heatmap_name(index: int, name: str) -> str:
    base = Path(name.rstrip("/\\")).name
    stem = Path(base).stem if Path(base).suffix.lower() in IMAGE_SUFFIXES else base
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', stem) or 'input'}.png"


def _display_norm(modality: str, normalization):
    """How `write_heatmap` should undo the normalization of the first modality."""
    return "minmax" if MODALITIES[modality].decode == "depth" else normalization


def predict_inputs(model, task, task_id: int, inputs: list[PredictInput], threshold: Threshold,
                   out_dir: Path, device, batch_size: int = 16) -> list[PredictionRow]:
    """Score every input and write its overlay PNG into `out_dir`; returns the CSV rows.

    On any error the PNGs this call wrote are removed again."""
    import torch
    from torch.utils.data import DataLoader

    from unimmad_cl.data.dataset import TaskDataset, collate
    from unimmad_cl.data.records import Sample
    from unimmad_cl.evaluation.heatmaps import write_heatmap

    samples = [
        Sample(task=task.name, cls=task.classes[0], split="test", modalities=task.modalities, paths=item.paths,
               label=0, mask_path=None, defect="unknown", stem=item.name)
        for item in inputs
    ]
    dataset = TaskDataset(samples, model.config.image_size, task_id=task_id, loss_weight=task.loss_weight,
                          classes=task.classes, normalization=model.normalization)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    rows: list[PredictionRow] = []
    written: list[Path] = []
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                prediction = model.predict(batch.images.to(device), batch.modality_mask.to(device))
                for j, sample in enumerate(batch.samples):
                    score = float(prediction.scores[j])
                    anomalous = score >= threshold.value
                    path = out_dir / _heatmap_name(len(rows), sample.stem)
                    written.append(write_heatmap(
                        path, batch.images[j, 0], prediction.maps[j].float().cpu(), None,
                        image_norm=_display_norm(task.modalities[0], model.normalization), map_range=threshold.map_range,
                        title=f"{task.name}: {Path(sample.stem).name}  score {score:.4g}  "
                              f"{'ANOMALOUS' if anomalous else 'good'} (threshold {threshold.value:.4g})",
                    ))
                    rows.append(PredictionRow(sample.stem, score, threshold.value, anomalous, path.name))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return rows


def predictions_csv(rows: list[PredictionRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "score", "threshold", "anomalous", "heatmap"])
    for row in rows:
        writer.writerow([row.input, f"{row.score:.6g}", f"{row.threshold:.6g}", int(row.anomalous), row.heatmap])
    return buffer.getvalue()


def run_predict(ctx, task_name: str, stage: int | None, paths: list[Path], out_dir: Path,
                device: str = "auto", batch_size: int = 16) -> tuple[list[PredictionRow], Threshold, int]:
    """Everything `predict` does: check, load the stage's model, threshold, predict, write.

    Returns the rows, the threshold and the stage used. Bad input raises a UserError before
    anything is written."""
    from registry import store
    from unimmad_cl.evaluation.runner import evaluate_task
    from unimmad_cl.training.loop import resolve_device
    from unimmad_cl.training.stages import (
        latest_completed_stage, model_at_stage, task_dataset, task_ids, task_samples, trained_tasks_at,
    )

    task = store.get_task(ctx.registry, task_name)
    if stage is None:
        latest = latest_completed_stage(ctx.registry)
        if latest is None:
            raise UserError("no trained model yet: run train-base first")
        stage = latest.number
    if task.name not in {t.name for t in trained_tasks_at(ctx.registry, stage)}:
        raise UserError(f"task {task.name!r} is not trained at stage {stage} "
                        f"(trained in stage {task.trained_in_stage if task.trained_in_stage is not None else 'none yet'})")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; expected a folder")
    inputs = resolve_inputs(paths, task.name, task.modalities)

    dev = resolve_device(device)
    model = model_at_stage(ctx, stage, dev)
    task_id = task_ids(ctx.registry)[task.name]
    ctx.echo(f"choosing the threshold on {task.name}'s test split (stage {stage})")
    test = task_dataset(task, task_id, model, task_samples(task, "test"))
    result = evaluate_task(model, test, task=task.name, batch_size=batch_size, device=dev,
                           keep_maps=True, progress=ctx.progress)
    threshold = task_threshold(result)

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        rows = predict_inputs(model, task, task_id, inputs, threshold, out_dir, dev, batch_size)
        write_text_atomic(out_dir / CSV_NAME, predictions_csv(rows))
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return rows, threshold, stage
