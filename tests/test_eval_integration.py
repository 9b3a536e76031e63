"""The runner on the real tiny UniMMAD and a real (synthetic, RGB + depth) test split."""

import math
import warnings

import numpy as np
import pytest
import torch

from unimmad_cl.config import ModelConfig
from unimmad_cl.data.dataset import TaskDataset, collate
from unimmad_cl.data.readers import get_reader
from unimmad_cl.data.synth.benchmark import TASKS, write_task
from unimmad_cl.evaluation.metrics import METRIC_KEYS
from unimmad_cl.evaluation.runner import evaluate_task
from unimmad_cl.model.unimmad import UniMMAD


@pytest.fixture(scope="module")
def tiny_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # offline: random backbone weights, loudly warned
        torch.manual_seed(0)
        return UniMMAD(ModelConfig.preset("tiny"))


def test_evaluate_tiny_model_on_synthetic_rgbd_task(tmp_path, tiny_model):
    index, task = next((i, t) for i, t in enumerate(TASKS) if len(t.modalities) == 2)
    write_task(tmp_path, index, task, 0, 64, 1, 4)
    classes = [c.name for c in task.classes]
    samples = get_reader("folder").samples(tmp_path / task.name, classes, task.modalities, "test")
    dataset = TaskDataset(samples, 64, classes=classes)

    result = evaluate_task(
        tiny_model, dataset, task=task.name, batch_size=3, progress=False, keep_maps=True,
        heatmap_dir=tmp_path / "heatmaps", heatmap_select=lambda i, s: i == 0,
    )
    assert list(result.per_class) == classes and sum(result.n_samples.values()) == len(samples)
    for values in [*result.per_class.values(), result.mean]:
        assert set(values) == set(METRIC_KEYS)
        assert all(math.isnan(v) or 0 <= v <= 1 for v in values.values())
    assert result.maps.shape == (len(samples), 64, 64) and np.isfinite(result.maps).all()
    cfg = tiny_model.config
    assert result.leader_counts.shape[0] == 3 and result.leader_counts.shape[-1] == cfg.num_leaders
    assert result.leader_counts.sum() > 0 and len(result.heatmaps) == 1
    # the runner's scores are the model's own (top-0.1 % mean of its blurred maps)
    batch = collate([dataset[0], dataset[1]])
    tiny_model.eval()
    direct = tiny_model.predict(batch.images, batch.modality_mask)
    np.testing.assert_allclose(result.scores[:2], direct.scores.numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.maps[:2], direct.maps.numpy(), rtol=1e-5, atol=1e-6)
