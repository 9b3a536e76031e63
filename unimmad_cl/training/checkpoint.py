"""Per-epoch resume checkpoints of a running stage (safetensors, written atomically).

A checkpoint holds the tensors the stage may change, the Adam state of its trainable
parameters and the number of finished epochs; the learning rate and the sampler's draw are
pure functions of the epoch, so nothing else is needed to continue exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from unimmad_cl.errors import UserError
from unimmad_cl.model.io import read_metadata, write_safetensors_atomic

FORMAT = "unimmad-cl/checkpoint/1"
CHECKPOINTS_DIR = "checkpoints"


def checkpoint_path(workspace: Path, stage: int) -> Path:
    return workspace / CHECKPOINTS_DIR / f"stage_{stage:03d}.ckpt.safetensors"


@dataclass
class Checkpoint:
    epochs_done: int
    tasks: list[str]
    fingerprint: str


def save_checkpoint(
    path: Path,
    model,
    names: list[str],
    optimizer: torch.optim.Optimizer,
    trainable: list[str],
    epochs_done: int,
    tasks: list[str],
    fingerprint: str,
) -> None:
    """`trainable`: the optimizer's parameters by name, in the optimizer's order."""
    state = model.state_dict()
    tensors = {f"model/{n}": state[n] for n in names}
    for index, name in enumerate(trainable):
        for key, value in optimizer.state.get(optimizer.param_groups[0]["params"][index], {}).items():
            tensors[f"optim/{name}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    metadata = {
        "format": FORMAT,
        "epochs_done": str(epochs_done),
        "tasks": json.dumps(tasks),
        "fingerprint": fingerprint,
    }
    write_safetensors_atomic(tensors, path, metadata)


def read_checkpoint_info(path: Path) -> Checkpoint:
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a unimmad-cl checkpoint")
    return Checkpoint(int(meta["epochs_done"]), json.loads(meta["tasks"]), meta.get("fingerprint", ""))


def load_checkpoint(path: Path, model, optimizer: torch.optim.Optimizer, trainable: list[str]) -> Checkpoint:
    """Restore model tensors and Adam state in place; returns the checkpoint's info."""
    from safetensors.torch import load_file

    info = read_checkpoint_info(path)
    tensors = load_file(str(path))
    state = model.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("model/"):
                state[key[len("model/"):]].copy_(value)
    params = optimizer.param_groups[0]["params"]
    for index, name in enumerate(trainable):
        prefix = f"optim/{name}/"
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            param = params[index]
            optimizer.state[param] = {k: v if k == "step" else v.to(param.device) for k, v in entry.items()}
    model.invalidate_kernel_cache()
    return info
