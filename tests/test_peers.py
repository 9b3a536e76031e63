"""Smoke test of the anomalib peers (benchmarks/peers.py): PatchCore and Reverse Distillation
with the packaged tf_efficientnet_lite0 weights on a tiny fabricated MVTec-layout class.

Skips, with the reason shown, when the optional extra is absent (`pip install -e ".[peers]"`).
"""

import math

import pytest

from benchmarks import peers

REASON = peers.peers_available()
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers")
    peers.fabricate_mvtec_folder(root, "brick", n_train=6, n_test_good=3, n_test_defect=3, size=64, seed=0)
    return root


def _require():
    if REASON is not None:
        pytest.skip(REASON)


def _check(result, method):
    assert result.method == method and result.cls == "brick"
    for key in ("i_auroc", "p_auroc", "aupro"):
        value = result.metrics[key]
        assert not math.isnan(value) and 0.0 <= value <= 1.0, (key, value)
    weights = result.notes["weights"]
    assert weights["verified"] and weights["tensors_compared"] == weights["tensors_loaded"] > 100
    assert weights["mismatched"] == []
    assert result.notes["normalization"] == [[0.5] * 3, [0.5] * 3]
    assert result.train_seconds > 0 and result.train_samples_per_s > 0 and result.infer_images_per_s > 0
    assert result.peak_memory_bytes is None or result.peak_memory_bytes > 0


def test_fabricated_folder_reads_as_mvtec(tiny_root):
    from unimmad_cl.data.readers import mvtec

    assert len(mvtec.samples(tiny_root, ["brick"], ["rgb"], "train")) == 6
    test = mvtec.samples(tiny_root, ["brick"], ["rgb"], "test")
    assert sorted(s.label for s in test) == [0, 0, 0, 1, 1, 1]


def test_patchcore_with_packaged_weights(tiny_root):
    _require()
    result = peers.run_patchcore(tiny_root, "brick", image_size=64, threads=1)
    _check(result, "patchcore")
    assert result.notes["layer_channels"] == [40, 112] and result.notes["layer_strides"] == [8, 16]


def test_reverse_distillation_with_packaged_weights(tiny_root):
    _require()
    result = peers.run_reverse_distillation(tiny_root, "brick", image_size=64, epochs=1, threads=1)
    _check(result, "reverse_distillation")
    assert result.notes["layer_channels"] == [24, 40, 112]
    assert result.notes["epochs"] == 1


def test_rd_heads_generalize_anomalibs_resnet18_heads():
    _require()
    assert peers.rd_heads_match_resnet18()


def test_patchcore_coreset_is_anomalibs():
    """The memory-safe sampler picks exactly anomalib's k-center-greedy coreset."""
    _require()
    assert peers.coreset_matches_anomalib()


def test_packaged_weights_are_checked_tensor_by_tensor():
    """verify_packaged_weights notices a single changed tensor."""
    _require()
    import timm
    import torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    assert not peers.verify_packaged_weights(model)["verified"]  # random init
    peers.inject_packaged_weights(model)
    assert peers.verify_packaged_weights(model)["verified"]
    with torch.no_grad():
        model.conv_stem.weight[0, 0, 0, 0] += 1e-3
    report = peers.verify_packaged_weights(model)
    assert not report["verified"] and report["mismatched"] == ["conv_stem.weight"]
