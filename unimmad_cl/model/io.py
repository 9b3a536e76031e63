"""Model weights as safetensors files with the config in the metadata (never pickle).

Files are written atomically (`unimmad_cl.files`): a crash leaves the old file or the new one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unimmad_cl.config import ModelConfig
from unimmad_cl.errors import UserError
from unimmad_cl.files import atomic_path

FORMAT = "unimmad-cl/model/1"


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_model(model, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Every parameter and buffer of `model` (a UniMMAD) plus its config."""
    meta = {"format": FORMAT, "config": model.config.to_json(), **(metadata or {})}
    write_safetensors_atomic(model.state_dict(), path, meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except FileNotFoundError:
        raise UserError(f"model file {path} does not exist") from None
    except Exception as exc:
        raise UserError(f"model file {path} is not a readable safetensors file: {exc}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the UniMMAD saved at `path` (architecture from its metadata)."""
    from safetensors.torch import load_file

    from unimmad_cl.model.unimmad import UniMMAD

    meta = read_metadata(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UserError(f"model file {path} is not a unimmad-cl model (metadata format {meta.get('format')!r})")
    model = UniMMAD(ModelConfig.from_json(meta["config"]), load_weights=False)
    state = load_file(str(path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"model file {path} does not match its config: {first}") from None
    return model.to(device)
