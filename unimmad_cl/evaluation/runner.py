"""Evaluate a model on a task's test split: inference batch by batch, then metrics per class
and per task.

The model side is `UniMMAD.predict(images, modality_mask) -> Prediction(maps, scores,
leader_counts)` (docs/CONTRACTS.md): maps are the blurred root-sum-square anomaly maps and
scores the top-0.1 % means, exactly as model.md "Inference" defines them; the runner does
not recompute them. The data side is an iterable of collated `Batch`es (`images`,
`modality_mask`, `mask`, `label`, `class_id`, `samples`).

Memory: per batch only the maps (float32, optionally downsampled), the masks (bool) and the
scores are kept on the CPU; metrics are computed class by class from those chunks, so the
peak is the kept maps plus one class's copy.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unimmad_cl.evaluation.metrics import METRIC_KEYS, compute_metrics


@dataclass
class EvaluationResult:
    """Metrics of one task's test split.

    per_class: class name -> {metric: value} (keys `METRIC_KEYS`, fractions in [0, 1]);
    mean: the task figure, mean over classes of each metric (classes where it is NaN left
    out; NaN if it is NaN for all); n_samples: class -> test samples; labels/scores `[N]`
    and classes (N names) per sample in loader order; maps `[N, h, w]` float32 and masks
    `[N, h, w]` bool only with `keep_maps=True`; leader_counts `[L, K, N_r]` int64: how often
    each MoE-Leader was routed, summed over the task's test samples (None if the model
    reports none); heatmaps: the PNG paths written.
    """

    task: str | None
    per_class: dict[str, dict[str, float]]
    mean: dict[str, float]
    n_samples: dict[str, int]
    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    leader_counts: np.ndarray | None = None
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None
    heatmaps: list[Path] = field(default_factory=list)
    gallery: object | None = None  # evaluation.gallery.GalleryData with `gallery=` (else None)

    def rows(self) -> list[dict]:
        """One `{task, class, i_auroc, ..., aupro}` dict per class (the `evaluate --json` rows
        without the stage)."""
        return [{"task": self.task, "class": cls, **values} for cls, values in self.per_class.items()]


@dataclass
class _Chunks:
    """What the runner keeps of each batch, on the CPU."""

    maps: list[np.ndarray] = field(default_factory=list)  # [B, h, w] float32
    masks: list[np.ndarray] = field(default_factory=list)  # [B, h, w] bool
    labels: list[np.ndarray] = field(default_factory=list)  # [B]
    scores: list[np.ndarray] = field(default_factory=list)  # [B]
    classes: list[str] = field(default_factory=list)
    leader_counts: np.ndarray | None = None  # [L, K, N_r]
    heatmaps: list[Path] = field(default_factory=list)
    gallery: object | None = None  # evaluation.gallery.GalleryCollector


def _class_names(batch) -> list[str]:
    """Class of each sample: the Sample record's `cls`, else `class_<class_id>`."""
    samples = getattr(batch, "samples", None)
    if samples:
        return [s.cls for s in samples]
    return [f"class_{int(c)}" for c in batch.class_id]


def _resize(maps, masks, size: int | None):
    """maps `[B, H, W]` float, masks `[B, H, W]` (torch) -> `[B, size, size]` if size is set.

    Maps are area-averaged; a pixel of the smaller mask is anomalous when more than half of
    the pixels it covers are (defects smaller than a downsampled pixel can vanish: the
    metrics of a downsampled evaluation are an approximation, off by default).
    """
    import torch.nn.functional as F

    if size is None or tuple(maps.shape[-2:]) == (size, size):
        return maps, masks > 0.5
    maps = F.interpolate(maps[:, None], size=(size, size), mode="area")[:, 0]
    masks = F.interpolate(masks[:, None].float(), size=(size, size), mode="area")[:, 0] > 0.5
    return maps, masks


def _image_norm(sample, normalization):
    """How the first modality was normalized: the model's (mean, std) except for depth."""
    if sample is None or not getattr(sample, "modalities", None):
        return "minmax"
    from unimmad_cl.data.modalities import MODALITIES

    modality = MODALITIES.get(sample.modalities[0])
    return normalization if modality is not None and modality.decode in ("color", "gray") else "minmax"


def _heatmap_name(index: int, cls: str, sample) -> str:
    parts = [cls] if sample is None else [cls, sample.defect, sample.stem]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join([f"{index:05d}", *parts])) + ".png"


def _write_heatmaps(chunks: _Chunks, batch, prediction, first_index: int, classes, out_dir, select, map_range,
                    normalization):
    from unimmad_cl.evaluation.heatmaps import write_heatmap

    samples = getattr(batch, "samples", None) or [None] * len(classes)
    for j, (cls, sample) in enumerate(zip(classes, samples)):
        index = first_index + j
        if select is not None and not select(index, sample):
            continue
        score = float(prediction.scores[j])
        chunks.heatmaps.append(
            write_heatmap(
                Path(out_dir) / _heatmap_name(index, cls, sample),
                batch.images[j, 0],
                prediction.maps[j].float(),
                batch.mask[j],
                image_norm=_image_norm(sample, normalization),
                map_range=map_range,
                title=f"{cls} / {getattr(sample, 'defect', '?')} / {getattr(sample, 'stem', index)}  score {score:.4g}",
            )
        )


def _run_inference(model, batches, device, map_size, progress, desc, heatmap_dir, heatmap_select, heatmap_range,
                   gallery: int | None = None) -> _Chunks:
    """Predict every batch under `torch.inference_mode()` and keep the CPU chunks."""
    import torch
    from tqdm.auto import tqdm

    chunks = _Chunks()
    normalization = getattr(model, "normalization", "imagenet")
    if gallery:
        from unimmad_cl.evaluation.gallery import GalleryCollector

        chunks.gallery = GalleryCollector(k=gallery)
    total = len(batches) if hasattr(batches, "__len__") else None
    with torch.inference_mode():
        for batch in tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress):
            # Batches of cached trunk features (training/features.py) carry only gallery
            # thumbnails as `images`: the model runs from the features.
            features = getattr(batch, "features", None)
            if features is not None:
                if heatmap_dir is not None:
                    raise ValueError("heatmap PNGs need the full images: evaluate from images, not cached features")
                prediction = model.predict_features(features.to(device))
            else:
                prediction = model.predict(batch.images.to(device), batch.modality_mask.to(device))
            classes = _class_names(batch)
            if heatmap_dir is not None:
                _write_heatmaps(chunks, batch, prediction, len(chunks.classes), classes, heatmap_dir, heatmap_select,
                                heatmap_range, normalization)
            if chunks.gallery is not None:
                chunks.gallery.add(batch, prediction.maps, prediction.scores, len(chunks.classes), classes,
                                   lambda sample: _image_norm(sample, normalization))
            maps, masks = _resize(prediction.maps.float().cpu(), batch.mask.cpu(), map_size)
            if maps.shape != masks.shape:
                raise ValueError(f"model maps {list(maps.shape)} and ground-truth masks {list(masks.shape)} differ")
            chunks.maps.append(maps.numpy())
            chunks.masks.append(masks.numpy())
            chunks.scores.append(prediction.scores.float().cpu().numpy())
            chunks.labels.append(batch.label.cpu().numpy())
            chunks.classes += classes
            counts = getattr(prediction, "leader_counts", None)
            if counts is not None:
                summed = counts.sum(dim=0).cpu().numpy().astype(np.int64)
                chunks.leader_counts = summed if chunks.leader_counts is None else chunks.leader_counts + summed
    return chunks


def _gather(chunks: list[np.ndarray], selected: list[np.ndarray]) -> np.ndarray:
    """Rows of the chunked array selected by per-chunk boolean masks, as one array."""
    return np.concatenate([c[s] for c, s in zip(chunks, selected)])


def _task_mean(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    mean = {}
    for key in METRIC_KEYS:
        values = [m[key] for m in per_class.values() if not math.isnan(m[key])]
        mean[key] = float(np.mean(values)) if values else math.nan
    return mean


def _as_batches(data, batch_size: int, num_workers: int) -> Iterable:
    """`data` itself if it yields batches (a DataLoader, a list of Batches); a map-style
    torch Dataset of items (e.g. `TaskDataset`) is wrapped in an ordered DataLoader."""
    from torch.utils.data import DataLoader, Dataset

    if not isinstance(data, Dataset):
        return data
    from unimmad_cl.data.dataset import collate

    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)


def evaluate_task(
    model,
    data: Iterable,
    *,
    task: str | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device=None,
    keep_maps: bool = False,
    map_size: int | None = None,
    aupro_limit: float = 0.3,
    progress: bool = True,
    heatmap_dir: str | Path | None = None,
    heatmap_select: Callable[[int, object], bool] | None = None,
    heatmap_range: tuple[float, float] | None = None,
    gallery: int | None = None,
    desc: str | None = None,
) -> EvaluationResult:
    """Run `model` over a test split and compute the metrics per class and for the task.

    data: the task's test split: an iterable of collated batches (a DataLoader), or a
    map-style Dataset of items (`TaskDataset`), then batched here by `batch_size` in order
    with `num_workers` loader workers; or batches of cached trunk features
    (`training.features.FeatureBatch`, run through `model.predict_features`).
    device: where inputs go (default: the device of the model's first parameter, else CPU).
    map_size: keep maps and masks downsampled to `map_size`² for the pixel metrics (less
    memory, approximate pixel metrics; image scores always come from the full-size maps).
    heatmap_dir: write an overlay PNG for each sample `heatmap_select(index, sample)` accepts
    (all when None); index counts samples in loader order. heatmap_range: one colour scale
    for all PNGs (default: each map's own min/max).
    gallery: keep the `gallery` most and least anomalous images' thumbnails and every
    image's small map (`EvaluationResult.gallery`, see evaluation/gallery.py).
    desc: the progress bar's label (default "evaluate <task>"); a second bar follows the
    metrics class by class.
    The model is put in eval mode for the run and restored to its previous mode after.
    """
    if device is None:
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = param.device if param is not None else "cpu"
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        chunks = _run_inference(
            model, _as_batches(data, batch_size, num_workers), device, map_size, progress,
            desc or f"evaluate {task or ''}".strip(), heatmap_dir, heatmap_select, heatmap_range, gallery,
        )
    finally:
        model.train(was_training)
    if not chunks.classes:
        raise ValueError(f"no test samples to evaluate{f' for task {task!r}' if task else ''}")

    classes = np.array(chunks.classes)
    labels, scores = np.concatenate(chunks.labels), np.concatenate(chunks.scores)
    offsets = np.cumsum([0] + [len(m) for m in chunks.maps])
    per_class, n_samples = {}, {}
    names = list(dict.fromkeys(chunks.classes))  # first-appearance order
    if progress:
        from tqdm.auto import tqdm

        names = tqdm(names, desc=f"{desc or 'evaluate'}: metrics", unit="class", leave=False)
    for cls in names:
        in_class = classes == cls
        selected = [in_class[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        per_class[cls] = _class_metrics(
            cls, labels[in_class], scores[in_class],
            _gather(chunks.masks, selected), _gather(chunks.maps, selected), aupro_limit,
        )
        n_samples[cls] = int(in_class.sum())
    return EvaluationResult(
        task=task,
        per_class=per_class,
        mean=_task_mean(per_class),
        n_samples=n_samples,
        labels=labels,
        scores=scores,
        classes=chunks.classes,
        leader_counts=chunks.leader_counts,
        maps=np.concatenate(chunks.maps) if keep_maps else None,
        masks=np.concatenate(chunks.masks) if keep_maps else None,
        heatmaps=chunks.heatmaps,
        gallery=chunks.gallery.finish() if chunks.gallery is not None else None,
    )


def _class_metrics(cls: str, labels, scores, masks, maps, aupro_limit: float) -> dict[str, float]:
    """compute_metrics for one class; its undefined-metric warnings name the class."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = compute_metrics(labels, scores, masks, maps, aupro_limit)
    for w in caught:  # re-emit with the class named, so a NaN in a table can be traced
        warnings.warn(f"class {cls!r}: {w.message}", w.category, stacklevel=3)
    return values
