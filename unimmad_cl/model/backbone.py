"""timm CNN feature extractors and where their weights come from.

The frozen prior generator and the general encoder's trainable copy are the same timm
architecture (layers 1-3, strides 4/8/16). Weights come from a local file the user names
(.safetensors or .pth), from timm's hub only when the user asks for it ("hub"), or, with
neither, from random init with a loud warning: nothing is ever downloaded by default.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from unimmad_cl.config import ModelConfig
from unimmad_cl.errors import UserError


EXPECTED_STRIDES = [4, 8, 16]


class RandomBackboneWarning(UserWarning):
    """Raised as a warning when a backbone runs with random weights."""


def create_feature_extractor(config: ModelConfig, pretrained: bool = False) -> nn.Module:
    """A timm `features_only` model returning the three stage outputs `[B, C_l, H/s_l, W/s_l]`."""
    import timm

    try:
        model = timm.create_model(
            config.backbone,
            pretrained=pretrained,
            features_only=True,
            out_indices=tuple(config.backbone_out_indices),
        )
    except RuntimeError as exc:  # timm: unknown model name
        raise UserError(f"backbone {config.backbone!r}: {exc}") from None
    strides = list(model.feature_info.reduction())
    if strides != EXPECTED_STRIDES:
        raise UserError(
            f"backbone {config.backbone!r} with out_indices {list(config.backbone_out_indices)} "
            f"has strides {strides}; expected {EXPECTED_STRIDES}"
        )
    return model


def feature_channels(extractor: nn.Module) -> list[int]:
    return list(extractor.feature_info.channels())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt file; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: one clear line
        raise UserError(f"backbone weights file {path} cannot be read: {exc}") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"backbone weights file {path}: expected a mapping of tensors")
    return state


def load_weights_into(extractor: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy the tensors the extractor needs (layers 1-3; the classifier head is ignored)."""
    own = extractor.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(
            f"backbone weights {source} lack {len(missing)} tensors of the feature extractor "
            f"(first: {missing[0]}); is it a checkpoint of this backbone architecture?"
        )
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"backbone weights {source}: tensor {k} has shape {list(state[k].shape)}, "
            f"expected {list(own[k].shape)}"
        )
    extractor.load_state_dict({k: state[k] for k in own}, strict=True)


def build_backbone_pair(config: ModelConfig, load_weights: bool = True) -> tuple[nn.Module, nn.Module]:
    """(prior extractor, trainable copy), both initialized from the same weights."""
    source = config.backbone_weights
    hub = load_weights and source == "hub"
    prior = create_feature_extractor(config, pretrained=hub)
    if load_weights and source not in (None, "hub"):
        load_weights_into(prior, read_state_dict(source), str(source))
    elif load_weights and source is None:
        enable_residual_branches(prior)
        message = (
            f"backbone {config.backbone!r} has RANDOM weights: no backbone_weights file was "
            "given. Anomaly detection quality will be far below the paper's; pass a local "
            ".safetensors/.pth file (or 'hub' when online)."
        )
        warnings.warn(message, RandomBackboneWarning, stacklevel=3)
    copy = create_feature_extractor(config, pretrained=False)
    copy.load_state_dict(prior.state_dict())
    return prior, copy


def enable_residual_branches(extractor: nn.Module) -> None:
    """Random init only: timm zero-initializes the last BatchNorm of every residual block,
    which leaves a random ResNet's stages as bare strided 1×1 projections. Setting those
    scales to 1 gives random features with spatial context."""
    with torch.no_grad():
        for module in extractor.modules():
            if isinstance(module, nn.BatchNorm2d) and not module.weight.any():
                module.weight.fill_(1.0)


@torch.no_grad()
def estimate_bn_statistics(extractor: nn.Module, batches) -> None:
    """Random init only: replace the BatchNorm running statistics (mean 0, var 1 at init) by
    the exact statistics of the given image batches `[n, 3, H, W]`, so every random channel
    is centred and scaled on the user's data (a data-dependent init of a random backbone)."""
    norms = [m for m in extractor.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = extractor.training
    extractor.train()
    for images in batches:
        extractor(images)
    extractor.train(was_training)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


class PriorGenerator(nn.Module):
    """Frozen pretrained CNN: one modality image `[n, 3, H, W]` → priors `[n, C_l, H/s_l, W/s_l]`.

    It always stays in eval mode and never receives gradients, whatever mode the
    surrounding model is in.
    """

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor
        self.channels = feature_channels(extractor)
        self.extractor.requires_grad_(False)
        self.train()  # always eval, see train()

    def train(self, mode: bool = True) -> "PriorGenerator":
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.extractor(x))
