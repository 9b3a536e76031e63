"""Stage artifacts: full base weights, per-stage deltas, and the model at stage N.

The model at stage N is `base.safetensors` with the deltas of stages 1..N applied in order.
Every file's sha256 is recorded in the registry and each delta names the sha256 of its
parent's file, so a truncated, edited or foreign file is caught before it is used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from unimmad_cl.errors import UserError
from unimmad_cl.model.io import FORMAT as MODEL_FORMAT
from unimmad_cl.model.io import read_metadata, write_safetensors_atomic

DELTA_FORMAT = "unimmad-cl/delta/1"
MODELS_DIR = "models"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_file_name() -> str:
    return f"{MODELS_DIR}/base.safetensors"


def delta_file_name(stage: int) -> str:
    return f"{MODELS_DIR}/stage_{stage:03d}.delta.safetensors"


def stage_tensor_names(model: nn.Module, trainable: set[str]) -> list[str]:
    """state_dict entries a stage training `trainable` may change: those parameters plus the
    running statistics of normalization layers that train (frozen ones stay in eval mode)."""
    names = set(trainable)
    for prefix, module in model.named_modules():
        own = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
        if own and any(n in trainable for n in own):
            names |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_buffers(recurse=False)}
    return sorted(names)


def write_delta(
    model: nn.Module,
    names: list[str],
    path: Path,
    *,
    stage: int,
    parent: int,
    parent_sha256: str,
    tasks: list[str],
) -> None:
    state = model.state_dict()
    metadata = {
        "format": DELTA_FORMAT,
        "stage": str(stage),
        "parent": str(parent),
        "parent_sha256": parent_sha256,
        "tasks": json.dumps(tasks),
        "config": model.config.to_json(),
    }
    write_safetensors_atomic({n: state[n] for n in names}, path, metadata)


def verify_file(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise UserError(f"artifact {path} is missing")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise UserError(
            f"artifact {path} has sha256 {actual[:12]}…, the registry expects {expected_sha256[:12]}…: "
            "the file was truncated, modified, or belongs to another registry"
        )


def apply_delta(model: nn.Module, path: Path, parent_sha256: str) -> None:
    """Overwrite the tensors stored in the delta at `path` (already hash-verified)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if meta.get("format") != DELTA_FORMAT:
        raise UserError(f"artifact {path} is not a unimmad-cl delta (metadata format {meta.get('format')!r})")
    if meta.get("parent_sha256") != parent_sha256:
        raise UserError(
            f"delta {path} was made on a parent with sha256 {str(meta.get('parent_sha256'))[:12]}…, "
            f"not on the registry's parent {parent_sha256[:12]}…"
        )
    tensors = load_file(str(path))
    state = model.state_dict()
    unknown = [n for n in tensors if n not in state]
    if unknown:
        raise UserError(f"delta {path} holds tensor {unknown[0]!r}, which the model does not have")
    wrong = [n for n, v in tensors.items() if v.shape != state[n].shape]
    if wrong:
        n = wrong[0]
        raise UserError(
            f"delta {path}: tensor {n!r} has shape {list(tensors[n].shape)}, the model's is {list(state[n].shape)}"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(value)
    model.invalidate_kernel_cache()


def load_chain(chain: list[tuple[Path, str]], device: str | torch.device = "cpu"):
    """Rebuild a model from `[(base path, sha), (delta 1, sha), …]`, verifying every hash."""
    from unimmad_cl.model.io import load_model

    base_path, base_sha = chain[0]
    verify_file(base_path, base_sha)
    if read_metadata(base_path).get("format") != MODEL_FORMAT:
        raise UserError(f"artifact {base_path} is not a unimmad-cl base model")
    model = load_model(base_path)
    parent_sha = base_sha
    for path, sha in chain[1:]:
        verify_file(path, sha)
        apply_delta(model, path, parent_sha)
        parent_sha = sha
    return model.to(device)
