"""Heatmap galleries kept at evaluation time, so that `report --html` shows what the model
sees without rebuilding any model.

Design (bounded storage, no retraining, no model at report time): while a stage evaluates a
task, the runner keeps, besides the metrics,

* the K most and the K least anomalous test images of that stage (by image score), each as
  a small thumbnail (first modality, `THUMB`² uint8 RGB), its ground-truth mask and its
  anomaly map (`THUMB`² uint8), and
* a downsampled anomaly map of every test image (`ARCHIVE`² float, in memory only).

`write_stage_galleries` then writes one file per (stage, task),
`evaluations/gallery/stage_NNN/<task>.npz`, atomically: the 2K thumbnails always (inputs as JPEG, maps and masks as
deflated uint8: about 20–30 KB, at most 2K × THUMB² × 5 bytes = 123 KB), and, only at the stage that learned the
task, the archive: every test image's map at ARCHIVE² uint8 (at most ARCHIVE_CAP images, so
≤ 1 MB, once per task). The report takes the latest stage's most/least anomalous images and
finds the same images' maps at the learning stage in that stage's archive: side by side,
the same image then and now.

Maps are stored as uint8 on one colour scale per (stage, task): from the median pixel of all
the task's test maps (about where normal texture sits) to the highest pixel; the scale is
stored with them (`range`). Reading needs numpy only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unimmad_cl.files import atomic_path
from unimmad_cl.workspace import EVALUATIONS_DIR

K = 3  # most and least anomalous images per (stage, task)
THUMB = 64  # thumbnail side (pixels)
ARCHIVE = 32  # side of the per-image maps kept at the learning stage
ARCHIVE_CAP = 1024  # at most this many images in an archive (evenly spaced beyond it)
GALLERY_DIR = "gallery"
JPEG_QUALITY = 90  # the thumbnails of the inputs (maps and masks are stored losslessly)


def gallery_dir(workspace: Path, stage: int) -> Path:
    return Path(workspace) / EVALUATIONS_DIR / GALLERY_DIR / f"stage_{stage:03d}"


def gallery_path(workspace: Path, stage: int, task: str) -> Path:
    return gallery_dir(workspace, stage) / f"{task}.npz"


@dataclass
class GalleryData:
    """One (stage, task)'s gallery. `keys` name samples as `class/defect/stem`; the first
    `n_most` entries are the most anomalous (descending score), the rest the least
    anomalous (ascending). Maps are uint8 on the scale `range` = (low, high)."""

    keys: list[str]
    scores: np.ndarray  # float32 [S]
    labels: np.ndarray  # int8 [S]
    images: np.ndarray  # uint8 [S, T, T, 3]
    masks: np.ndarray  # uint8 [S, T, T] in {0, 1}
    maps: np.ndarray  # uint8 [S, T, T]
    n_most: int
    range: tuple[float, float]
    n_test: int
    modality: str = ""
    archive_keys: list[str] = field(default_factory=list)
    archive_maps: np.ndarray | None = None  # uint8 [M, A, A]
    archive_scores: np.ndarray | None = None  # float32 [M]


def _quantize(maps: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.asarray(maps, np.float32) - lo) / max(hi - lo, 1e-12)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


class GalleryCollector:
    """Fed batch by batch by the evaluation runner (torch tensors); `finish()` builds the
    `GalleryData`. Keeps O(N·ARCHIVE²) floats plus 2K thumbnails."""

    def __init__(self, k: int = K, thumb: int = THUMB, archive: int = ARCHIVE):
        self.k, self.thumb, self.archive = k, thumb, archive
        self.small: list[np.ndarray] = []
        self.maxima: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.keys: list[str] = []
        self.top: list[dict] = []  # the k highest scores so far
        self.bottom: list[dict] = []  # the k lowest
        self.modality = ""

    def add(self, batch, maps, scores, first_index: int, classes: list[str], image_norm) -> None:
        """maps `[B, H, W]` (torch, any device), scores `[B]`; image_norm(sample) -> how to
        display the first modality (see heatmaps.displayable)."""
        import torch.nn.functional as F

        maps = maps.float()
        size = min(self.archive, maps.shape[-1])
        self.small.append(F.interpolate(maps[:, None], size=(size, size), mode="area")[:, 0].cpu().numpy())
        self.maxima.append(maps.flatten(1).amax(dim=1).cpu().numpy())
        scores = scores.float().cpu().numpy()
        self.scores.append(scores)
        samples = getattr(batch, "samples", None) or [None] * len(scores)
        if not self.modality and samples[0] is not None and getattr(samples[0], "modalities", None):
            self.modality = samples[0].modalities[0]
        keys = [
            f"{cls}/{s.defect}/{s.stem}" if s is not None else f"{cls}/#{first_index + j}"
            for j, (cls, s) in enumerate(zip(classes, samples))
        ]
        self.keys += keys
        for j, score in enumerate(scores):
            wants_top = len(self.top) < self.k or score > self.top[-1]["score"]
            wants_bottom = len(self.bottom) < self.k or score < self.bottom[-1]["score"]
            if not (wants_top or wants_bottom):
                continue
            entry = self._entry(batch, maps, j, float(score), first_index + j, keys[j], image_norm(samples[j]))
            if wants_top:
                self.top = sorted(self.top + [entry], key=lambda e: -e["score"])[: self.k]
            if wants_bottom:
                self.bottom = sorted(self.bottom + [entry], key=lambda e: e["score"])[: self.k]

    def _entry(self, batch, maps, j: int, score: float, index: int, key: str, norm) -> dict:
        import torch.nn.functional as F

        from unimmad_cl.evaluation.heatmaps import displayable

        side = min(self.thumb, maps.shape[-1])
        image = F.interpolate(batch.images[j : j + 1, 0].float().cpu(), size=(side, side), mode="area")[0]
        mask = F.adaptive_max_pool2d(batch.mask[j][None, None].float().cpu(), side)[0, 0]
        small_map = F.interpolate(maps[j][None, None].cpu(), size=(side, side), mode="area")[0, 0]
        return {
            "score": score, "index": index, "key": key, "label": int(batch.label[j]),
            "image": np.round(displayable(image, norm) * 255).astype(np.uint8),
            "mask": (mask.numpy() > 0.5).astype(np.uint8),
            "map": small_map.numpy().astype(np.float32),
        }

    def finish(self) -> GalleryData | None:
        if not self.keys:
            return None
        small = np.concatenate(self.small)
        scores = np.concatenate(self.scores).astype(np.float32)
        lo = float(np.median(small))
        hi = float(np.concatenate(self.maxima).max())
        if not hi > lo:
            hi = lo + 1e-6
        top = self.top
        chosen = {e["index"] for e in top}
        pool = {e["index"]: e for e in self.bottom + self.top if e["index"] not in chosen}
        bottom = sorted(pool.values(), key=lambda e: e["score"])[: self.k]
        entries = top + bottom
        n = len(self.keys)
        keep = np.arange(n)
        if n > ARCHIVE_CAP:
            keep = np.unique(np.concatenate([
                np.linspace(0, n - 1, ARCHIVE_CAP - len(entries)).round().astype(int),
                [e["index"] for e in entries],
            ]))
        return GalleryData(
            keys=[e["key"] for e in entries],
            scores=np.array([e["score"] for e in entries], np.float32),
            labels=np.array([e["label"] for e in entries], np.int8),
            images=np.stack([e["image"] for e in entries]),
            masks=np.stack([e["mask"] for e in entries]),
            maps=_quantize(np.stack([e["map"] for e in entries]), lo, hi),
            n_most=len(top),
            range=(lo, hi),
            n_test=n,
            modality=self.modality,
            archive_keys=[self.keys[i] for i in keep],
            archive_maps=_quantize(small[keep], lo, hi),
            archive_scores=scores[keep],
        )


# --------------------------------------------------------------------------- files


def write_gallery(path: Path, data: GalleryData, archive: bool) -> Path:
    """One (stage, task) gallery, atomically; the archive only when `archive`."""
    jpegs = [_jpeg(image) for image in data.images]
    arrays = {
        "keys": np.array(data.keys, dtype=str),
        "scores": data.scores,
        "labels": data.labels,
        "images_jpeg": np.frombuffer(b"".join(jpegs), np.uint8),
        "images_offsets": np.cumsum([0] + [len(j) for j in jpegs]),
        "masks": data.masks,
        "maps": data.maps,
        "n_most": np.array(data.n_most),
        "range": np.array(data.range, np.float64),
        "n_test": np.array(data.n_test),
        "modality": np.array(data.modality),
    }
    if archive and data.archive_maps is not None:
        arrays.update(
            archive_keys=np.array(data.archive_keys, dtype=str),
            archive_maps=data.archive_maps,
            archive_scores=data.archive_scores,
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _unjpeg(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    raw = data.tobytes()
    images = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        with Image.open(io.BytesIO(raw[int(a):int(b)])) as img:
            images.append(np.asarray(img.convert("RGB")))
    return np.stack(images)


def load_gallery(path: Path) -> GalleryData | None:
    """A stored gallery, or None when the file is missing or unreadable (e.g. a workspace
    trained before galleries were kept)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            has_archive = "archive_maps" in z.files
            return GalleryData(
                keys=[str(k) for k in z["keys"]],
                scores=z["scores"],
                labels=z["labels"],
                images=_unjpeg(z["images_jpeg"], z["images_offsets"]),
                masks=z["masks"],
                maps=z["maps"],
                n_most=int(z["n_most"]),
                range=tuple(float(v) for v in z["range"]),
                n_test=int(z["n_test"]),
                modality=str(z["modality"]),
                archive_keys=[str(k) for k in z["archive_keys"]] if has_archive else [],
                archive_maps=z["archive_maps"] if has_archive else None,
                archive_scores=z["archive_scores"] if has_archive else None,
            )
    except (OSError, ValueError, KeyError):
        return None


def write_stage_galleries(workspace: Path, stage: int, results: dict, learned: set[str]) -> list[Path]:
    """Each evaluated task's gallery of `stage` (results: task -> EvaluationResult with a
    `gallery`); the archive for the tasks this stage learned."""
    folder = gallery_dir(workspace, stage)
    for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
        stale.unlink(missing_ok=True)
    written = []
    for task, result in results.items():
        data = getattr(result, "gallery", None)
        if data is not None:
            written.append(write_gallery(gallery_path(workspace, stage, task), data, archive=task in learned))
    return written
