"""Typed config: presets, YAML overrides, validation."""

import pytest

from unimmad_cl.config import ModelConfig, load_model_config
from unimmad_cl.errors import UserError


def test_yaml_overrides_every_field_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  embed_dim: 16\n  kernel_sizes: [1, 3]\n  gate_temperature: 2\n  backbone: resnet34\n")
    config = load_model_config("tiny", path)
    assert config.embed_dim == 16 and config.kernel_sizes == (1, 3)
    assert config.gate_temperature == 2.0 and config.backbone == "resnet34"
    assert config.num_leaders == ModelConfig.preset("tiny").num_leaders
    assert ModelConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("model:\n  top_k: 9\n", "top_k=9: expected <= num_leaders=8"),
        ("model:\n  nonsense: 1\n", "unknown model config field 'nonsense'"),
        ("model:\n  embed_dim: big\n", "embed_dim='big': expected a number"),
        ("model:\n  kernel_sizes: [2]\n", "expected odd sizes"),
        ("model:\n  image_size: 100\n", "multiple of 32"),
        ("model: [\n", "not valid YAML"),
        ("- 1\n", "expected a mapping"),
    ],
)
def test_bad_config_values_are_user_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_model_config("tiny", path)


def test_missing_config_file_and_unknown_preset(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model_config("tiny", tmp_path / "none.yaml")
    with pytest.raises(UserError, match="unknown preset"):
        ModelConfig.preset("medium")


def test_train_settings_from_yaml_are_typed(tmp_path):
    """YAML 1.1 reads `5e-4` as a string; a number setting takes it, a wrong type is one line."""
    from unimmad_cl.config import load_configs

    path = tmp_path / "train.yaml"
    path.write_text("train:\n  lr: 5e-4\n  epochs: 3\n  load_balance_weight: 0\n")
    _, train = load_configs("lite", path)
    assert train.lr == 5e-4 and train.epochs == 3 and train.load_balance_weight == 0.0
    for text, message in [("train:\n  epochs: 2.5\n", "epochs=2.5: expected a whole number"),
                          ("train:\n  lr: fast\n", "lr='fast': expected a number"),
                          ("train:\n  amp: sometimes\n", "amp='sometimes': expected true or false")]:
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            load_configs("lite", path)
