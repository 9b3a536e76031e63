"""evaluate_task with a fake model and fake batches (the contract of docs/CONTRACTS.md)."""

import math
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unimmad_cl.evaluation.metrics import METRIC_KEYS, UndefinedMetricWarning, compute_metrics
from unimmad_cl.evaluation.runner import evaluate_task

L, K, NR = 3, 2, 4


@dataclass
class FakePrediction:
    maps: torch.Tensor
    scores: torch.Tensor
    leader_counts: torch.Tensor


class FakeModel(nn.Module):
    """Anomaly map = channel mean of the first modality; score = its max."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.inference_mode_seen = []

    def predict(self, images, modality_mask):
        self.inference_mode_seen.append((torch.is_inference_mode_enabled(), self.training))
        maps = images[:, 0].mean(1) * self.scale
        counts = torch.ones(images.shape[0], L, K, NR, dtype=torch.long)
        return FakePrediction(maps, maps.flatten(1).amax(1), counts)


@dataclass
class FakeBatch:
    images: torch.Tensor
    modality_mask: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor
    class_id: torch.Tensor
    samples: list


def fake_batches(n=12, size=16, batch_size=5, seed=0, classes=("a", "b")):
    """Images whose first modality lights up where the mask is: a learnable-ish signal."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size)
    for i in range(1, n, 2):
        r, c = torch.randint(0, size - 4, (2,), generator=g).tolist()
        masks[i, r : r + 4, c : c + 3] = 1
    images = torch.randn(n, 4, 3, size, size, generator=g) * 0.5
    images[:, 0] += masks[:, None] * 0.8
    images[:, 2:] = 0
    class_ids = (torch.arange(n) // 2) % len(classes)  # each class gets normal and anomalous
    samples = [
        SimpleNamespace(cls=classes[c], defect="good" if i % 2 == 0 else "hole", stem=f"{i:03d}", modalities=("rgb", "depth"))
        for i, c in enumerate(class_ids.tolist())
    ]
    batches = []
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        modality_mask = torch.zeros(len(samples[sl]), 4, dtype=torch.bool)
        modality_mask[:, :2] = True
        batches.append(
            FakeBatch(images[sl], modality_mask, masks[sl], (masks[sl].flatten(1).amax(1) > 0).long(), class_ids[sl], samples[sl])
        )
    return batches


def test_per_class_metrics_task_mean_and_leader_counts():
    model, batches = FakeModel(), fake_batches()
    model.train()
    result = evaluate_task(model, batches, task="t1", progress=False, keep_maps=True)
    assert list(result.per_class) == ["a", "b"] and result.n_samples == {"a": 6, "b": 6}
    assert result.classes == ["a", "a", "b", "b"] * 3 and result.maps.dtype == np.float32
    images = torch.cat([b.images for b in batches])
    masks = torch.cat([b.mask for b in batches]).numpy() > 0.5
    maps = images[:, 0].mean(1).numpy()
    labels = masks.reshape(12, -1).any(1)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.scores, maps.reshape(12, -1).max(1))
    for k, cls in enumerate("ab"):
        idx = np.flatnonzero((np.arange(12) // 2) % 2 == k)
        expected = compute_metrics(labels[idx], result.scores[idx], masks[idx], maps[idx])
        assert result.per_class[cls] == pytest.approx(expected)
    for key in METRIC_KEYS:
        assert result.mean[key] == pytest.approx((result.per_class["a"][key] + result.per_class["b"][key]) / 2)
    assert result.leader_counts.shape == (L, K, NR) and (result.leader_counts == 12).all()
    assert result.rows()[0] == {"task": "t1", "class": "a", **result.per_class["a"]}
    # predict ran in inference mode and eval mode; the previous (training) mode is restored
    assert model.inference_mode_seen == [(True, False)] * 3 and model.training


def test_maps_are_not_kept_unless_asked_and_can_be_downsampled():
    result = evaluate_task(FakeModel(), fake_batches(), progress=False)
    assert result.maps is None and result.masks is None
    small = evaluate_task(FakeModel(), fake_batches(), progress=False, keep_maps=True, map_size=8)
    assert small.maps.shape == (12, 8, 8) and small.masks.dtype == np.bool_
    assert small.masks.any()  # 4x3 defects survive a 2x downsampling
    np.testing.assert_array_equal(small.scores, evaluate_task(FakeModel(), fake_batches(), progress=False).scores)


def test_class_without_anomalies_is_nan_with_named_warning_and_left_out_of_the_mean():
    batches = fake_batches(classes=("a", "b"))
    for b in batches:  # make class "b" all normal
        is_b = b.class_id == 1
        b.mask[is_b] = 0
        b.label[is_b] = 0
    with pytest.warns(UndefinedMetricWarning, match="class 'b'"):
        result = evaluate_task(FakeModel(), batches, progress=False)
    assert math.isnan(result.per_class["b"]["i_auroc"])
    assert result.mean["i_auroc"] == result.per_class["a"]["i_auroc"]


def test_heatmaps_for_selected_samples(tmp_path):
    result = evaluate_task(
        FakeModel(), fake_batches(), progress=False, heatmap_dir=tmp_path,
        heatmap_select=lambda index, sample: sample.defect != "good" and index < 6,
    )
    assert [p.name for p in result.heatmaps] == ["00001_a_hole_001.png", "00003_b_hole_003.png", "00005_a_hole_005.png"]
    for p in result.heatmaps:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > im.height
    assert sorted(tmp_path.iterdir()) == sorted(result.heatmaps)  # no temp files left


def test_batches_without_sample_records_use_class_ids():
    batches = fake_batches()
    for b in batches:
        b.samples = []
    result = evaluate_task(FakeModel(), batches, progress=False)
    assert list(result.per_class) == ["class_0", "class_1"]


def test_empty_split_and_mismatched_maps_raise():
    with pytest.raises(ValueError, match="no test samples"):
        evaluate_task(FakeModel(), [], task="t", progress=False)
    batches = fake_batches()
    batches[0].mask = batches[0].mask[:, :8]
    with pytest.raises(ValueError, match="differ"):
        evaluate_task(FakeModel(), batches, progress=False)


def test_evaluation_modules_do_not_import_torch_or_matplotlib():
    code = (
        "import sys, unimmad_cl.evaluation.metrics, unimmad_cl.evaluation.runner, "
        "unimmad_cl.evaluation.heatmaps; sys.exit('torch' in sys.modules or 'matplotlib' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
