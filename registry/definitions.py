"""Task definitions (from `add-task` flags or YAML files), checked against the data.

Two steps: `parse_definition` checks what needs no data (a safe name, a known format, 1 to 4
known and distinct modalities, field, loss weight); `resolve` then checks the data (the root
exists, the classes are there, every class has training samples) and counts the samples with
the format's reader, so the counts stored with the task are what training will see. Nothing
here writes: `registry.store.add_tasks` does, all or nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from registry.models import NAME_LENGTH
from registry.store import SampleCounts, TaskSpec
from unimmad_cl.data.modalities import check_modalities
from unimmad_cl.data.readers import get_reader
from unimmad_cl.errors import UserError

# Names become file and folder names (heatmaps, reports), so no separators, dots or spaces.
NAME_PATTERN = re.compile(rf"[A-Za-z_][A-Za-z0-9_-]{{0,{NAME_LENGTH - 1}}}")
FIELD_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DEFAULT_FORMAT = "folder"
DEFAULT_FIELDS = {"bmad": "medical", "brats": "medical"}  # every other format: industrial
DATA_ROOT_PLACEHOLDER = "${data_root}"
KEYS = ("name", "format", "root", "modalities", "classes", "field", "loss_weight")


@dataclass(frozen=True)
class TaskDefinition:
    """A task as the user wrote it, checked as far as possible without reading the data."""

    name: str
    format: str
    root: Path | None  # None: <data-root>/<name>
    modalities: tuple[str, ...]
    classes: tuple[str, ...]  # empty: every class found
    field: str
    loss_weight: float


def parse_definition(
    name: str,
    *,
    format: str = DEFAULT_FORMAT,
    root: str | Path | None = None,
    modalities: Sequence[str] = (),
    classes: Sequence[str] = (),
    field: str | None = None,
    loss_weight: float = 1.0,
) -> TaskDefinition:
    """Check a definition's name, format, modalities, field and loss weight.

    `modalities` defaults to the format's usual ones (the `folder` format has none: its
    modalities must be named); `field` to medical for medical formats, else industrial.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"task name {name!r} is not a safe identifier: use letters, digits, '_' and '-', "
            f"starting with a letter or '_', at most {NAME_LENGTH} characters"
        )
    try:
        reader = get_reader(format)
        modalities = tuple(modalities) or reader.DEFAULT_MODALITIES
        if not modalities:
            raise UserError(f"format {format!r} needs the task's modalities (--modality, in order)")
        modalities = check_modalities(modalities)
        field = DEFAULT_FIELDS.get(format, "industrial") if field is None else field
        if not isinstance(field, str) or not FIELD_PATTERN.fullmatch(field):
            raise UserError(f"field {field!r} must be a lowercase word, e.g. industrial or medical")
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)) or not (
            math.isfinite(loss_weight) and loss_weight > 0
        ):
            raise UserError(f"loss weight {loss_weight!r} must be a positive number")
        repeated = sorted({c for c in classes if list(classes).count(c) > 1})
        if repeated:
            raise UserError(f"class {repeated[0]!r} is given more than once")
    except UserError as exc:
        raise UserError(f"task {name!r}: {exc}") from None
    return TaskDefinition(
        name=name,
        format=format,
        root=None if root is None else Path(root).expanduser(),
        modalities=modalities,
        classes=tuple(classes),
        field=field,
        loss_weight=float(loss_weight),
    )


def resolve(definition: TaskDefinition, *, data_root: str | Path) -> TaskSpec:
    """Check a definition against its data: root, classes, samples; count the samples."""
    try:
        return _resolve(definition, Path(data_root))
    except UserError as exc:
        raise UserError(f"task {definition.name!r}: {exc}") from None


def _resolve(definition: TaskDefinition, data_root: Path) -> TaskSpec:
    reader = get_reader(definition.format)
    default_classes: list[str] | None = None
    if definition.root is None:
        base = data_root.expanduser().resolve()
        path = base / definition.name
        wanted = list(definition.classes) or [definition.name]
        if not _holds_classes(reader, path, definition.classes) and _holds_classes(reader, base, wanted):
            # The common tree <data-root>/<class>/train/...: the class folder sits directly
            # under the data root (e.g. `--name bottle --format mvtec` with /data/bottle).
            path, default_classes = base, wanted
        elif not path.is_dir():
            raise UserError(
                f"data root not found: {path} (the default <data-root>/<name>), and {base} has no class "
                f"folder {wanted[0]!r} of format {definition.format} either; give --root, "
                "or set the data root with `unimmad-cl init --data-root DIR`"
            )
    else:
        path = definition.root.resolve()
        if not path.is_dir():
            raise UserError(f"data root not found: {path}")

    found = reader.classes(path)
    chosen = list(definition.classes) or default_classes or found
    for cls in chosen:
        if cls not in found:
            raise UserError(
                f"class {cls!r} not found under {path} (format {definition.format}); "
                f"classes there: {', '.join(found)}"
            )
    train = reader.samples(path, chosen, definition.modalities, "train")
    disagreements: list[dict] = []
    if hasattr(reader, "checked_test_samples"):  # a format with its own label file (MulSen-AD)
        test, disagreements = reader.checked_test_samples(path, chosen, definition.modalities)
    else:
        test = reader.samples(path, chosen, definition.modalities, "test")
    with_train = {sample.cls for sample in train}
    for cls in chosen:
        if cls not in with_train:
            raise UserError(f"class {cls!r} has no training samples under {path / cls}")
    return TaskSpec(
        name=definition.name,
        format=definition.format,
        root=str(path),
        modalities=definition.modalities,
        classes=tuple(chosen),
        field=definition.field,
        loss_weight=definition.loss_weight,
        samples=SampleCounts(
            train=len(train),
            test=len(test),
            test_anomalous=sum(sample.label == 1 for sample in test),
        ),
        label_disagreements=tuple(disagreements),
    )


def _holds_classes(reader, path: Path, classes: Sequence[str]) -> bool:
    """Whether `path` is a root of the reader's format holding `classes` (any class if none)."""
    if not path.is_dir():
        return False
    try:
        found = reader.classes(path)
    except UserError:
        return False
    return all(c in found for c in classes) if classes else bool(found)


def read_definitions(path: str | Path, *, data_root: str | Path) -> list[TaskDefinition]:
    """The definitions in a YAML file holding one (a mapping) or a list of them.

    Keys: name, format, root, modalities, classes, field, loss_weight. A relative `root` is
    relative to the file's folder; `${data_root}` in it stands for the workspace's data root.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read task definitions {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"task definitions {path} are not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UserError(f"task definitions {path} are not valid YAML{line}: {problem}") from None
    entries = document if isinstance(document, list) else [document]
    if not entries or not all(isinstance(entry, Mapping) for entry in entries):
        raise UserError(
            f"task definitions {path} must hold a mapping (one task) or a non-empty list of "
            f"mappings with the keys {', '.join(KEYS)}"
        )
    names = [entry.get("name") for entry in entries]
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{path}: task name {repeated[0]!r} is defined more than once")
    try:
        return [_from_mapping(entry, path.parent, data_root) for entry in entries]
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def load_definitions(path: str | Path, *, data_root: str | Path) -> list[TaskSpec]:
    """`read_definitions`, then each checked against its data: all pass, or a UserError."""
    definitions = read_definitions(path, data_root=data_root)
    try:
        return [resolve(definition, data_root=data_root) for definition in definitions]
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _from_mapping(
    entry: Mapping[str, Any], base: Path, data_root: str | Path
) -> TaskDefinition:
    unknown = sorted(str(key) for key in entry if key not in KEYS)
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} (keys: {', '.join(KEYS)})")
    if "name" not in entry:
        raise UserError("a task definition has no 'name'")
    root = entry.get("root")
    if root is not None:
        if not isinstance(root, str):
            raise UserError(f"'root' must be a path, got {root!r}")
        root = base / Path(root.replace(DATA_ROOT_PLACEHOLDER, str(data_root))).expanduser()
    return parse_definition(
        entry["name"],
        format=_string(entry, "format", DEFAULT_FORMAT),
        root=root,
        modalities=_strings(entry, "modalities"),
        classes=_strings(entry, "classes"),
        field=entry.get("field"),
        loss_weight=entry.get("loss_weight", 1.0),
    )


def _string(entry: Mapping[str, Any], key: str, default: str) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise UserError(f"{key!r} must be a string, got {value!r}")
    return value


def _strings(entry: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = entry.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{key!r} must be a list of names, got {value!r}")
    return tuple(value)
