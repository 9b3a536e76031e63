"""Frozen features computed once: the trunk's outputs reused across epochs and evaluations.

In an incremental stage the trunk (`UniMMAD.trunk`: input embedding, general encoder, prior
generator, L2 normalization) is frozen, so each sample's general features g[l] and priors
p[m][l] are the same every time it is seen; only the C-MoEs (`UniMMAD.decode`) change.

Training (`precompute_training`, `FeatureBatches`): the stage's training set (new task +
replay) goes through the trunk once; every epoch then draws the same class-balanced batches
as the uncached loader (same sampler, batch size, drop_last) and runs only the C-MoEs. The
features are kept exactly as the trunk returns them (float32, or bf16 under CUDA autocast),
so the loss sequence equals the uncached one to float tolerance: in memory up to
`TrainConfig.feature_cache_memory_mb`, else in a file under `<workspace>/cache/train/`
removed when the stage ends; with neither room, the stage runs uncached and says so.

Evaluation (`EvaluationCache`): each task's test-set features (plus what the runner needs
besides the model: ground-truth masks and the gallery's first-modality thumbnails) are kept
in `<workspace>/cache/features/<task>/<key>.safetensors`, rounded to
`TrainConfig.feature_cache_dtype`. The key is a sha256 over
  * the trunk's weights (every embedding./encoder./prior. tensor: what the base stage's
    artifact fixes, and what a `--trainable all` stage would change), the image size, the
    input normalization and the source of the code that loads images and runs the trunk
    (plus torch/timm/Pillow versions),
  * each test sample's modality names and the sha256 of every file it reads (modality
    files, mask, an Eyecandies depth-range YAML), in loader order,
  * the storage dtype.
File contents are hashed, not trusted by name; unchanged files are not re-read: a task's
digests are remembered with each file's (size, mtime_ns, ctime_ns, inode), and any write
to a file changes its ctime. Any change gives a new key: the old entry is no longer read
and is the first to go when room is needed.

With the disk cache on, evaluation features are rounded to the cache dtype whether they
were read from the cache, just cached, or recomputed because the budget was full, so an
evaluation's numbers do not depend on the cache's state (float32: equal to the uncached
path; float16: within the tolerance stated in BENCHMARKS.md).

Budget: `<workspace>/cache` holds at most `TrainConfig.feature_cache_budget_mb` MiB
(environment variable UNIMMAD_FEATURE_CACHE_MB overrides it; 0 turns the disk cache off).
Entries of the tasks being evaluated are never evicted for one another (that would
thrash: each stage evaluates every task); other entries go least recently used first. An
entry that does not fit is not written, with a one-line message.

File format: plain safetensors (header written first, rows streamed into place, then an
atomic rename), read back through memory maps of its tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from unimmad_cl.errors import UserError
from unimmad_cl.files import atomic_path
from unimmad_cl.model.unimmad import Features, UniMMAD

CACHE_DIR = "cache"
FEATURES_DIR = "features"  # evaluation entries: cache/features/<task>/<key>.safetensors
TRAIN_DIR = "train"  # a stage's spilled training features, removed after the stage
BUDGET_ENV = "UNIMMAD_FEATURE_CACHE_MB"
FORMAT_VERSION = 1
_DIGESTS_FILE = "files.json"
_STALE_TMP_SECONDS = 24 * 3600

_DTYPES = {  # torch dtype -> (safetensors name, numpy dtype of the raw storage)
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.int16),  # numpy has no bf16: read raw, view in torch
    torch.uint8: ("U8", np.uint8),
    torch.int64: ("I64", np.int64),
}
_BY_NAME = {name: (dtype, np_dtype) for dtype, (name, np_dtype) in _DTYPES.items()}


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --------------------------------------------------------------------------- settings


def disk_budget_bytes(config) -> int:
    """The disk budget in bytes: UNIMMAD_FEATURE_CACHE_MB if set, else the train setting."""
    raw = os.environ.get(BUDGET_ENV)
    if raw is None or raw.strip() == "":
        return int(config.feature_cache_budget_mb * 2**20)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise UserError(f"{BUDGET_ENV}={raw!r}: expected a number of MiB >= 0 (0 turns the feature cache off)")
    return int(value * 2**20)


def training_cache_applies(model: UniMMAD, config, kind: str) -> bool:
    """Only an incremental stage that trains the paper's subset has a frozen trunk; the
    model's own check (after `train()`, as the epochs run it) guards against anything
    else making the trunk's output vary (a trainable trunk tensor, BatchNorm in training
    mode, dropout)."""
    if kind != "incremental" or config.trainable != "incremental" or not config.feature_cache:
        return False
    was_training = model.training
    model.train()
    try:
        return model.trunk_frozen()
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def table_columns(
    first: Features, n_samples: int, n_pairs: int, dtype: torch.dtype, extras: dict[str, Column] | None = None
) -> dict[str, Column]:
    """The columns of a table of n_samples rows and n_pairs pair rows, shaped after one
    batch's trunk outputs: `general.l` `[N, C_l, h_l, w_l]`, `priors.l` `[P, C_l, h_l, w_l]`,
    `pair_offsets` `[N + 1]` (sample i's pairs are rows offsets[i]:offsets[i+1]), extras."""
    columns = {f"general.{l}": Column(dtype, (n_samples, *g.shape[1:])) for l, g in enumerate(first.general)}
    columns.update({f"priors.{l}": Column(dtype, (n_pairs, *p.shape[1:])) for l, p in enumerate(first.priors)})
    columns["pair_offsets"] = Column(torch.int64, (n_samples + 1,))
    columns.update(extras or {})
    return columns


def table_bytes(columns: dict[str, Column]) -> int:
    return sum(c.nbytes for c in columns.values())


class FeatureTable:
    """Trunk outputs of N samples (and their P pairs) as rows; `columns` are torch tensors
    (in memory) or numpy memory maps (a file). Sample i's pairs are contiguous and in slot
    order, so gathering rows reproduces `modality_mask.nonzero()`'s pair order."""

    def __init__(self, data: dict, scales: int, metadata: dict[str, str] | None = None, path: Path | None = None,
                 dtypes: dict[str, torch.dtype] | None = None):
        self.data = data
        self.scales = scales
        self.metadata = metadata or {}
        self.path = path
        # torch dtype of each memory-mapped column (bf16 is stored as raw int16)
        self.dtypes = dtypes or {}
        self.offsets = self._tensor("pair_offsets", data["pair_offsets"][:]).clone()
        self.n_samples = len(self.offsets) - 1

    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self.data.values())

    def gather(self, rows: torch.Tensor) -> Features:
        """Features of samples `rows` `[B]` (any order, repeats allowed)."""
        rows = rows.long()
        starts, counts = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        sample_index = torch.repeat_interleave(torch.arange(len(rows)), counts)
        first = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts)
        pairs = first + torch.arange(int(counts.sum()))
        return Features(
            [self._take(f"general.{l}", rows) for l in range(self.scales)],
            [self._take(f"priors.{l}", pairs) for l in range(self.scales)],
            sample_index, len(rows),
        )

    def slice(self, start: int, stop: int) -> Features:
        """Features of the consecutive samples start:stop (contiguous reads)."""
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        return Features(
            [self._tensor(f"general.{l}", self.data[f"general.{l}"][start:stop]) for l in range(self.scales)],
            [self._tensor(f"priors.{l}", self.data[f"priors.{l}"][a:b]) for l in range(self.scales)],
            torch.repeat_interleave(torch.arange(stop - start), self.offsets[start + 1 : stop + 1] - self.offsets[start:stop]),
            stop - start,
        )

    def column(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._tensor(name, self.data[name][start:stop])

    def _take(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        column = self.data[name]
        if isinstance(column, torch.Tensor):
            return column.index_select(0, rows)
        return self._tensor(name, column[rows.numpy()])

    def _tensor(self, name: str, value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        tensor = torch.from_numpy(np.array(value))  # a copy: nothing keeps the map alive
        return tensor.view(torch.bfloat16) if self.dtypes.get(name) is torch.bfloat16 else tensor


def _nbytes(value) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else value.nbytes


class TableWriter:
    """Fills a `FeatureTable` batch by batch: preallocated tensors in memory (`path=None`),
    or a safetensors file whose header is written first and whose rows are written in place,
    renamed into `path` only by `commit()` (a crash leaves no partial file)."""

    def __init__(self, columns: dict[str, Column], scales: int, path: Path | None = None, metadata: dict | None = None):
        self.columns, self.scales, self.path = columns, scales, path
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        self.rows = 0
        self.pairs = 0
        n = columns["pair_offsets"].shape[0] - 1
        self.offsets = torch.zeros(n + 1, dtype=torch.int64)
        if path is None:
            self.data = {name: torch.empty(c.shape, dtype=c.dtype) for name, c in columns.items()}
            return
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._file = open(self._tmp, "r+b")
        header, self._starts = _header(columns, self.metadata)
        self._file.write(header)
        self._data_start = len(header)
        self._file.truncate(self._data_start + table_bytes(columns))

    def put(self, features: Features, extras: dict[str, torch.Tensor] | None = None) -> None:
        """Append one batch: features of its B samples (pairs sample-major) and extra
        columns' rows `[B, ...]`."""
        b, p = features.batch_size, len(features.sample_index)
        counts = torch.bincount(features.sample_index.cpu(), minlength=b)
        self.offsets[self.rows + 1 : self.rows + b + 1] = self.pairs + torch.cumsum(counts, 0)
        for l in range(self.scales):
            self._write(f"general.{l}", self.rows, features.general[l])
            self._write(f"priors.{l}", self.pairs, features.priors[l])
        for name, value in (extras or {}).items():
            self._write(name, self.rows, value)
        self.rows += b
        self.pairs += p

    def _write(self, name: str, row: int, value: torch.Tensor) -> None:
        column = self.columns[name]
        value = value.detach().to("cpu", column.dtype)
        if tuple(value.shape[1:]) != column.shape[1:] or row + len(value) > column.shape[0]:
            raise ValueError(f"feature table column {name}: rows {row}+{list(value.shape)} do not fit {list(column.shape)}")
        if self.path is None:
            self.data[name][row : row + len(value)] = value
            return
        row_bytes = column.nbytes // max(column.shape[0], 1)
        self._file.seek(self._data_start + self._starts[name] + row * row_bytes)
        self._file.write(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())

    def commit(self) -> FeatureTable:
        expected = self.columns["pair_offsets"].shape[0] - 1
        if self.rows != expected or self.pairs != self.columns["priors.0"].shape[0]:
            self.abort()
            raise ValueError(f"feature table got {self.rows} samples / {self.pairs} pairs, expected {expected} / "
                             f"{self.columns['priors.0'].shape[0]}")
        if self.path is None:
            self.data["pair_offsets"] = self.offsets
            return FeatureTable(self.data, self.scales, self.metadata)
        self._write("pair_offsets", 0, self.offsets)
        self._file.close()
        self._atomic.__exit__(None, None, None)
        return open_table(self.path)

    def abort(self) -> None:
        if self.path is not None and not self._file.closed:
            self._file.close()
            try:
                self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass


def _header(columns: dict[str, Column], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    entries, starts, offset = {}, {}, 0
    for name, column in columns.items():
        starts[name] = offset
        entries[name] = {"dtype": _DTYPES[column.dtype][0], "shape": list(column.shape),
                         "data_offsets": [offset, offset + column.nbytes]}
        offset += column.nbytes
    text = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # tensors start 8-byte aligned, as safetensors writes them
    return struct.pack("<Q", len(text)) + text, starts


def read_header(path: Path) -> tuple[dict[str, str], dict[str, dict], int]:
    """(metadata, tensor entries, byte offset of the data) of a safetensors file."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{path}: safetensors header of {length} bytes")
        header = json.loads(fh.read(length))
    metadata = header.pop("__metadata__", {}) or {}
    return metadata, header, 8 + length


def open_table(path: Path) -> FeatureTable:
    """A table file, its columns memory-mapped (nothing is read until rows are asked for)."""
    metadata, entries, start = read_header(path)
    data, dtypes = {}, {}
    for name, entry in entries.items():
        dtype, np_dtype = _BY_NAME[entry["dtype"]]
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != math.prod(shape) * np.dtype(np_dtype).itemsize:
            raise ValueError(f"{path}: tensor {name} has {end - begin} bytes for shape {list(shape)}")
        dtypes[name] = dtype
        data[name] = (
            np.memmap(path, dtype=np_dtype, mode="r", offset=start + begin, shape=shape)
            if math.prod(shape) else np.zeros(shape, np_dtype)
        )
    scales = sum(1 for name in entries if name.startswith("general."))
    return FeatureTable(data, scales, metadata, path, dtypes)


# --------------------------------------------------------------------------- batches


@dataclass
class FeatureBatch:
    """A batch served from cached features: what `train_epochs` and the evaluation runner
    read of a `Batch`, with `features` instead of the full images. For evaluation `images`
    holds only the first modality's gallery thumbnail `[B, 1, 3, t, t]`."""

    features: Features
    loss_weight: torch.Tensor  # float32 [B]
    images: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # float32 [B, H, W]
    label: torch.Tensor | None = None  # long [B]
    task_id: torch.Tensor | None = None
    class_id: torch.Tensor | None = None
    samples: list = field(default_factory=list)

    def to(self, device, non_blocking: bool = False) -> "FeatureBatch":
        moved = {
            f.name: (getattr(self, f.name).to(device, non_blocking=non_blocking)
                     if getattr(self, f.name) is not None and f.name != "samples" else getattr(self, f.name))
            for f in fields(self)
        }
        return FeatureBatch(**moved)

    def __len__(self) -> int:
        return self.features.batch_size


class FeatureBatches:
    """Training batches from a `FeatureTable` with exactly the draws of the uncached loader
    (`loop.make_loader`): the same sampler (call `sampler.set_epoch`), batch size and
    drop_last, so batch k of epoch e holds the same samples."""

    cached_features = True

    def __init__(self, table: FeatureTable, sampler, batch_size: int, drop_last: bool, loss_weight: torch.Tensor):
        from torch.utils.data import BatchSampler

        self.table = table
        self.sampler = sampler
        self.loss_weight = loss_weight
        self.batches = BatchSampler(sampler, batch_size, drop_last)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[FeatureBatch]:
        for rows in self.batches:
            rows = torch.as_tensor(rows, dtype=torch.long)
            yield FeatureBatch(self.table.gather(rows), self.loss_weight[rows])


def dataset_samples(dataset) -> list:
    """The `Sample` records of a TaskDataset or MultiTaskDataset in index order (no image is
    read)."""
    if hasattr(dataset, "datasets"):
        return [s for d in dataset.datasets for s in d.samples]
    return list(dataset.samples)


def dataset_loss_weights(dataset) -> torch.Tensor:
    parts = dataset.datasets if hasattr(dataset, "datasets") else [dataset]
    return torch.cat([torch.full((len(d),), d.loss_weight, dtype=torch.float32) for d in parts])


# --------------------------------------------------------------------------- training


def precompute_training(
    model: UniMMAD,
    dataset,
    config,
    device: torch.device,
    *,
    workspace: Path,
    stage: int,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    rank: int = 0,
) -> FeatureTable | None:
    """Run the frozen trunk once over every training item (index order) as the epochs would
    (training mode, same autocast), kept in memory or in a stage file; None (after a
    one-line message) when neither the memory nor the disk budget has room."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from unimmad_cl.data.dataset import collate

    samples = dataset_samples(dataset)
    n_pairs = sum(len(s.modalities) for s in samples)
    loader = DataLoader(dataset, batch_size=config.eval_batch_size, shuffle=False,
                        num_workers=config.num_workers, collate_fn=collate)
    autocast = device.type == "cuda" and config.amp
    started = time.perf_counter()
    writer: TableWriter | None = None
    where = ""
    model.train()
    bar = tqdm(loader, desc=f"stage {stage} frozen features", unit="batch", leave=False, disable=not progress)
    try:
        for batch in bar:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                features = model.trunk(batch.images.to(device), batch.modality_mask.to(device))
            if writer is None:
                dtype = features.general[0].dtype  # exactly what the trunk gives: no rounding
                columns = table_columns(features, len(samples), n_pairs, dtype)
                need = table_bytes(columns)
                if need <= config.feature_cache_memory_mb * 2**20:
                    writer, where = TableWriter(columns, len(features.general)), "in memory"
                else:
                    path = _training_path(workspace, stage, rank)
                    room = disk_budget_bytes(config) - cache_usage(workspace)
                    if need > room:
                        bar.close()
                        echo(
                            f"feature cache: stage {stage}'s frozen features ({mib(need)}) exceed the memory "
                            f"budget ({config.feature_cache_memory_mb:g} MiB, train setting feature_cache_memory_mb) "
                            f"and the free disk budget ({mib(max(room, 0))} of {mib(disk_budget_bytes(config))}, "
                            f"{BUDGET_ENV}); every epoch recomputes them"
                        )
                        return None
                    writer, where = TableWriter(columns, len(features.general), path), f"in {path}"
            writer.put(features)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    table = writer.commit()
    echo(
        f"  frozen features of {len(samples)} training samples computed once ({mib(table.nbytes())} {where}, "
        f"{time.perf_counter() - started:.1f} s): epochs run the C-MoEs only"
    )
    return table


def _training_path(workspace: Path, stage: int, rank: int) -> Path:
    return Path(workspace) / CACHE_DIR / TRAIN_DIR / f"stage_{stage:03d}.rank{rank}.safetensors"


def release_training(table: FeatureTable | None) -> None:
    """Drop a stage's training features (its file, if it spilled to disk)."""
    if table is not None and table.path is not None:
        table.data.clear()
        table.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- keys


_CODE_FILES = (  # code between the image files and the trunk's outputs
    "data/images.py", "data/modalities.py", "data/dataset.py",
    "model/backbone.py", "model/embedding.py", "model/encoder.py", "model/fcm.py", "model/decoder.py", "model/norm.py",
)


def _code_digest() -> str:
    import inspect

    import PIL
    import timm

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for rel in _CODE_FILES:
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    h.update(inspect.getsource(UniMMAD.trunk).encode())
    h.update(f"torch {torch.__version__} timm {timm.__version__} pillow {PIL.__version__}".encode())
    return h.hexdigest()


TRUNK_PREFIXES = ("embedding.", "encoder.", "prior.")


def trunk_digest(model: UniMMAD) -> str:
    """sha256 of everything that fixes the trunk's outputs for given input files."""
    h = hashlib.sha256()
    setting = {
        "format": FORMAT_VERSION, "image_size": model.config.image_size, "max_modalities": model.config.max_modalities,
        "normalization": [list(v) for v in model.normalization], "code": _code_digest(),
    }
    h.update(json.dumps(setting, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(TRUNK_PREFIXES):
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{name} {t.dtype} {list(tensor.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sample_files(sample) -> list[str]:
    """Every file loading `sample` reads: its modality files, its mask and, beside an
    Eyecandies `<idx>_depth.png`, the `<idx>_info_depth.yaml` holding its depth range (as
    data/images.py `_eyecandies_depth_range` finds it)."""
    files = list(sample.paths)
    for path, modality in zip(sample.paths, sample.modalities):
        p = Path(path)
        if p.stem.endswith("_depth"):
            info = p.with_name(p.stem[: -len("_depth")] + "_info_depth.yaml")
            if info.is_file():
                files.append(str(info))
    if sample.mask_path is not None:
        files.append(sample.mask_path)
    return files


class FileDigests:
    """sha256 of file contents, remembered per task (in `files.json` beside its entries)
    with each file's (size, mtime_ns, ctime_ns, inode), so unchanged files are not re-read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.known = json.loads(path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False
        self.hashed = 0

    def digest(self, file: str) -> str:
        try:
            st = os.stat(file)
        except OSError as exc:
            # Loading the sample will report it; this key just never matches an entry.
            return f"unreadable {exc.errno} {time.time_ns()}"
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = self.known.get(file)
        if known is not None and known[:4] == stamp:
            return known[4]
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        self.known[file] = [*stamp, h.hexdigest()]
        self.changed = True
        self.hashed += 1
        return h.hexdigest()

    def save(self) -> None:
        if self.changed:
            from unimmad_cl.files import write_text_atomic

            write_text_atomic(self.path, json.dumps(self.known))
            self.changed = False


def sample_key(sample, digests: FileDigests) -> str:
    files = sample_files(sample)
    text = json.dumps([list(sample.modalities), sample.mask_path is not None, [digests.digest(f) for f in files]])
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- disk


def cache_root(workspace: Path) -> Path:
    return Path(workspace) / CACHE_DIR


def _entries(workspace: Path) -> list[Path]:
    return [p for p in (cache_root(workspace) / FEATURES_DIR).glob("*/*.safetensors")]


def cache_usage(workspace: Path) -> int:
    """Bytes under <workspace>/cache (entries, stage files and writes in progress)."""
    total = 0
    for path in cache_root(workspace).rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            pass
    return total


def _remove_stale_tmp(workspace: Path) -> None:
    """Temporary files of writes a crash cut short (old enough not to be another process's)."""
    now = time.time()
    for tmp in cache_root(workspace).rglob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def _safe_name(task: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", task) or "_"


class EvaluationCache:
    """Test-set features on disk for `evaluate_tasks` (see the module docstring).

    `plan(tasks)` hashes every test file once and fixes the entries in use (never evicted
    for one another); `batches(task, dataset, ...)` then yields `FeatureBatch`es for the
    runner: read from the task's entry, or computed through the trunk (rounded to the cache
    dtype) and written as a new entry when the budget has room.
    """

    def __init__(self, workspace: Path, model: UniMMAD, config, *, progress: bool = True,
                 echo: Callable[[str], None] = print):
        from unimmad_cl.evaluation.gallery import THUMB

        self.workspace = Path(workspace)
        self.model = model
        self.budget = disk_budget_bytes(config)
        self.dtype = torch.float16 if config.feature_cache_dtype == "float16" else torch.float32
        self.thumb = min(THUMB, model.config.image_size)
        self.progress, self.echo = progress, echo
        self.root = cache_root(self.workspace) / FEATURES_DIR
        self._model_key: str | None = None
        self.keys: dict[str, str] = {}
        self.hits: list[str] = []
        self.written: list[str] = []
        self.refused: list[str] = []
        self.hash_seconds = 0.0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def entry_path(self, task: str) -> Path:
        return self.root / _safe_name(task) / f"{self.keys[task][:40]}.safetensors"

    def plan(self, tasks: Sequence[tuple[str, object]]) -> None:
        """Entry keys of the tasks `(name, test dataset)` about to be evaluated."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        _remove_stale_tmp(self.workspace)
        if self._model_key is None:
            self._model_key = trunk_digest(self.model)
        total = sum(len(d) for _, d in tasks)
        bar = tqdm(total=total, desc="feature cache: test files", unit="sample", leave=False, disable=not self.progress)
        for name, dataset in tasks:
            digests = FileDigests(self.root / _safe_name(name) / _DIGESTS_FILE)
            h = hashlib.sha256(f"{self._model_key} {self.dtype} thumb {self.thumb}".encode())
            for sample in dataset.samples:
                h.update(sample_key(sample, digests).encode())
                bar.update(1)
            try:
                digests.save()
            except OSError:
                pass  # only a speed-up
            self.keys[name] = h.hexdigest()
        bar.close()
        self.hash_seconds += time.perf_counter() - started

    def batches(self, task: str, dataset, batch_size: int, num_workers: int, device) -> "_TaskBatches":
        if task not in self.keys:
            self.plan([(task, dataset)])
        path = self.entry_path(task)
        table = None
        if path.is_file():
            try:
                table = open_table(path)
                if table.metadata.get("key") != self.keys[task] or table.n_samples != len(dataset):
                    table = None
                else:
                    os.utime(path)  # least recently used goes first
            except (OSError, ValueError, KeyError):
                table = None  # unreadable or being replaced: recompute
        if table is not None:
            self.hits.append(task)
        return _TaskBatches(self, task, dataset, batch_size, num_workers, device, table)

    def describe(self) -> str | None:
        """One line on what the cache did in this evaluation (None if nothing)."""
        if not (self.hits or self.written):
            return None
        return (
            f"feature cache: {len(self.hits)} task(s) evaluated from cached test features, {len(self.written)} cached now "
            f"({mib(cache_usage(self.workspace))} of {mib(self.budget)} used, {self.root})"
        )

    def _make_room(self, task: str, need: int) -> bool:
        """Evict entries not in use (least recently used first) until `need` more bytes fit."""
        if need > self.budget:
            return False
        live = {self.entry_path(t) for t in self.keys}
        usage = cache_usage(self.workspace)
        if usage + need <= self.budget:
            return True
        old = []
        for p in _entries(self.workspace):
            if p not in live:
                try:
                    old.append((p.stat().st_mtime, p))
                except OSError:
                    pass
        for _, p in sorted(old):
            try:
                size = p.stat().st_size
                p.unlink()
                usage -= size
            except OSError:
                continue
            if usage + need <= self.budget:
                return True
        return False

    def _writer(self, task: str, first: Features, n_samples: int, n_pairs: int) -> TableWriter | None:
        size = self.model.config.image_size
        extras = {"mask": Column(torch.uint8, (n_samples, size, size)),
                  "thumb": Column(self.dtype, (n_samples, 3, self.thumb, self.thumb))}
        columns = table_columns(first, n_samples, n_pairs, self.dtype, extras)
        need = table_bytes(columns)
        if not self._make_room(task, need):
            self.refused.append(task)
            self.echo(
                f"feature cache: {task}'s test features ({mib(need)}) do not fit the {mib(self.budget)} budget "
                f"({mib(cache_usage(self.workspace))} in use); they are recomputed at every evaluation "
                f"(raise {BUDGET_ENV} or train setting feature_cache_budget_mb)"
            )
            return None
        metadata = {"key": self.keys[task], "task": task, "format": FORMAT_VERSION, "dtype": str(self.dtype),
                    "image_size": size}
        try:
            return TableWriter(columns, len(first.general), self.entry_path(task), metadata)
        except OSError as exc:
            self.echo(f"feature cache: cannot write {self.entry_path(task)} ({exc.strerror}); evaluating without it")
            return None


def _round(features: Features, dtype: torch.dtype) -> Features:
    """The features as the cache stores them (rounded to `dtype`), on the CPU in float32."""
    return Features(
        [g.to("cpu", dtype).float() for g in features.general],
        [p.to("cpu", dtype).float() for p in features.priors],
        features.sample_index.cpu(), features.batch_size,
    )


class _TaskBatches:
    """One task's test batches for the runner (consecutive samples, loader order)."""

    def __init__(self, cache: EvaluationCache, task: str, dataset, batch_size: int, num_workers: int, device,
                 table: FeatureTable | None):
        self.cache, self.task, self.dataset = cache, task, dataset
        self.batch_size, self.num_workers, self.device, self.table = batch_size, num_workers, device, table
        self.class_index = {c: i for i, c in enumerate(dataset.classes)}

    @property
    def cached(self) -> bool:
        return self.table is not None

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[FeatureBatch]:
        return self._read() if self.table is not None else self._compute()

    def _batch(self, features: Features, samples, thumb, mask) -> FeatureBatch:
        d = self.dataset
        return FeatureBatch(
            features=features,
            loss_weight=torch.full((len(samples),), d.loss_weight, dtype=torch.float32),
            images=thumb.float()[:, None],
            mask=mask.float(),
            label=torch.tensor([s.label for s in samples], dtype=torch.long),
            task_id=torch.full((len(samples),), d.task_id, dtype=torch.long),
            class_id=torch.tensor([self.class_index[s.cls] for s in samples], dtype=torch.long),
            samples=list(samples),
        )

    def _read(self) -> Iterator[FeatureBatch]:
        table, samples = self.table, self.dataset.samples
        for start in range(0, table.n_samples, self.batch_size):
            stop = min(start + self.batch_size, table.n_samples)
            f = table.slice(start, stop)
            f = Features([g.float() for g in f.general], [p.float() for p in f.priors], f.sample_index, f.batch_size)
            yield self._batch(f, samples[start:stop], table.column("thumb", start, stop), table.column("mask", start, stop))

    def _compute(self) -> Iterator[FeatureBatch]:
        """The trunk over the test split (the runner has put the model in eval mode and
        holds inference mode), writing the entry as it goes when the budget allows."""
        import torch.nn.functional as F
        from torch.utils.data import DataLoader

        from unimmad_cl.data.dataset import collate

        cache, samples = self.cache, self.dataset.samples
        n_pairs = sum(len(s.modalities) for s in samples)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            collate_fn=collate)
        writer: TableWriter | None = None
        decided = False
        try:
            for batch in loader:
                with torch.inference_mode():
                    features = _round(cache.model.trunk(batch.images.to(self.device), batch.modality_mask.to(self.device)),
                                      cache.dtype)
                    thumb = F.interpolate(batch.images[:, 0].float(), size=(cache.thumb, cache.thumb), mode="area")
                    thumb = thumb.to(cache.dtype)
                if not decided:
                    decided = True
                    writer = cache._writer(self.task, features, len(samples), n_pairs)
                if writer is not None:
                    writer.put(features, {"mask": (batch.mask > 0.5).to(torch.uint8), "thumb": thumb})
                yield self._batch(features, batch.samples, thumb, batch.mask)
            if writer is not None:
                writer.commit()
                cache.written.append(self.task)
                writer = None
        finally:
            if writer is not None:
                writer.abort()


def note(echo: Callable[[str], None]) -> Callable[[str], None]:
    """Messages go through the command's echo, but never to stdout through the default
    `print` (`evaluate --json` prints its rows there)."""
    if echo is print:
        return lambda msg: print(msg, file=sys.stderr)
    return echo
