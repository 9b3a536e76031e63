"""The prior-ceiling baseline: nearest-neighbour anomaly maps on the frozen prior, scored like
the model."""

import pytest
import torch

from unimmad_cl.config import ModelConfig
from unimmad_cl.evaluation.prior_ceiling import (
    CeilingConfig,
    PriorNearestNeighbour,
    evaluate_prior_ceiling,
    greedy_coreset,
    nearest_distance,
)
from unimmad_cl.model.unimmad import UniMMAD

LITE64 = ModelConfig.preset("lite").replace(image_size=64)


@pytest.fixture(scope="module")
def prior():
    return UniMMAD(LITE64).prior


def test_nearest_distance_is_one_minus_the_best_cosine():
    bank = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    queries = torch.cat([bank[:3], torch.nn.functional.normalize(torch.randn(4, 8), dim=1)])
    d = nearest_distance(queries, bank, chunk=2)
    assert torch.allclose(d[:3], torch.zeros(3), atol=1e-6)
    expected = 1 - (queries[3:] @ bank.T).max(dim=1).values
    assert torch.allclose(d[3:], expected, atol=1e-6)


def test_greedy_coreset_covers_the_set():
    """Two tight clusters far apart: two picks take one point of each."""
    a = torch.randn(100, 4) * 0.01
    b = torch.randn(100, 4) * 0.01 + 10
    picked = greedy_coreset(torch.cat([a, b]), 2, seed=3)
    assert {int(i) // 100 for i in picked} == {0, 1}
    assert torch.equal(greedy_coreset(torch.randn(5, 4), 9), torch.arange(5))


def test_training_images_score_zero_and_a_pasted_patch_is_found(prior):
    torch.manual_seed(0)
    normal = torch.rand(6, 1, 3, 64, 64) * 0.2 - 0.1  # one modality slot
    detector = PriorNearestNeighbour(prior, CeilingConfig(pool=1, coreset=1.0)).fit([normal])
    maps, scores = detector.predict(normal[:2])
    assert maps.shape == (2, 64, 64) and scores.max() < 1e-3  # every patch is in the bank
    defect = normal[:1].clone()
    defect[..., 20:36, 24:40] = 1.0  # a bright square
    maps, scores = detector.predict(defect)
    assert scores[0] > 0.05
    y, x = divmod(int(maps[0].argmax()), 64)
    assert 14 <= y <= 42 and 18 <= x <= 46  # the peak is on (or next to) the square


def test_evaluate_prior_ceiling_on_a_real_photo_task(prior, tmp_path):
    from unimmad_cl.data.dataset import TaskDataset
    from unimmad_cl.data.readers import list_samples
    from unimmad_cl.data.synth.photos import write_photo_benchmark

    write_photo_benchmark(tmp_path / "data", 0, 64, 6, 6, tasks=["brick"])
    root = tmp_path / "data" / "mvtec"

    def dataset(split):
        samples = list_samples("mvtec", root, ("gray",), split, ["brick"], task="brick")
        return TaskDataset(samples, 64, classes=["brick"], normalization=((0.5,) * 3, (0.5,) * 3))

    result = evaluate_prior_ceiling(prior, dataset("train"), dataset("test"), task="brick", model_config=LITE64)
    assert set(result.per_class) == {"brick"} and result.n_samples == {"brick": 6}
    for key in ("i_auroc", "p_auroc", "aupro"):
        assert 0.0 <= result.mean[key] <= 1.0
    assert result.mean["p_auroc"] > 0.6  # the pretrained prior sees these defects
