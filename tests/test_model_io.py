"""Safetensors weights with the config in the metadata; local backbone weight files."""

import pytest
import torch
from safetensors.torch import save_file

from unimmad_cl.config import ModelConfig
from unimmad_cl.errors import UserError
from unimmad_cl.model.backbone import create_feature_extractor
from unimmad_cl.model.io import load_model, read_metadata, save_model
from unimmad_cl.model.unimmad import UniMMAD

TINY = ModelConfig.preset("tiny")


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(1)
    model = UniMMAD(TINY)
    # make the BatchNorm statistics non-trivial
    model.train()(torch.randn(2, 4, 3, 64, 64), torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool))
    path = tmp_path / "m.safetensors"
    save_model(model, path, {"stage": "0"})
    assert not list(tmp_path.glob("*.tmp"))
    meta = read_metadata(path)
    assert meta["stage"] == "0" and ModelConfig.from_json(meta["config"]) == TINY
    loaded = load_model(path)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
        assert value.dtype == original[key].dtype
    assert set(loaded.state_dict()) == set(original)


def test_load_model_rejects_foreign_and_missing_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not a unimmad-cl model"):
        load_model(foreign)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_model(garbage)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_weights_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(3)
    source = create_feature_extractor(TINY).state_dict()
    source = {k: v + 0.5 if v.is_floating_point() else v for k, v in source.items()}
    source["fc.weight"] = torch.zeros(10, 512)  # a classifier head the extractor ignores
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(source, str(path))
    else:
        torch.save({"state_dict": source}, path)
    model = UniMMAD(TINY.replace(backbone_weights=str(path)))
    for key, value in model.prior.extractor.state_dict().items():
        assert torch.equal(value, source[key]), key
    for key, value in model.encoder.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key  # the trainable copy starts equal


def test_backbone_weight_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="nope.pth does not exist"):
        UniMMAD(TINY.replace(backbone_weights=str(tmp_path / "nope.pth")))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(UserError, match="wrong.safetensors lack"):
        UniMMAD(TINY.replace(backbone_weights=str(wrong)))
