"""Losses and the anomaly map / image score, on hand-built tensors with known answers."""

import math

import torch

from unimmad_cl.model.cmoe import route
from unimmad_cl.model.losses import annealing_factor, focal_cosine_loss, load_balance_loss
from unimmad_cl.model.scoring import anomaly_map, gaussian_blur, image_score


def test_focal_cosine_is_zero_for_perfect_reconstruction_and_weighted():
    p = [torch.rand(3, 4, 5, 5) + 0.1]
    assert focal_cosine_loss(p, p, torch.ones(3)).item() < 1e-6
    d = [-p[0]]  # opposite direction: c = 2 everywhere → c · c² = 8 per map
    assert math.isclose(focal_cosine_loss(d, p, torch.ones(3)).item(), 3 * 8, rel_tol=1e-5)
    assert math.isclose(focal_cosine_loss(d, p, torch.full((3,), 10.0)).item(), 3 * 80, rel_tol=1e-5)
    # stop-gradient on the focal factor: the gradient is that of c·c0² (c0 fixed), a third
    # of the gradient of c³
    prior = torch.rand(2, 4, 3, 3)
    d = torch.randn(2, 4, 3, 3, requires_grad=True)
    focal_cosine_loss([d], [prior], torch.ones(2)).backward()
    d_cubed = d.detach().clone().requires_grad_(True)
    c = 1 - torch.nn.functional.cosine_similarity(d_cubed, prior, dim=1)
    (3 * c.pow(3).mean()).backward()
    torch.testing.assert_close(d.grad * 3, d_cubed.grad, atol=1e-6, rtol=1e-5)


def test_load_balance_is_zero_for_uniform_routing_and_positive_otherwise():
    uniform = route(torch.zeros(6, 8), top_k=2, temperature=1.0)
    assert load_balance_loss([[uniform]], z_weight=0.0).item() < 1e-8
    z = load_balance_loss([[uniform]], z_weight=1.0).item()
    assert math.isclose(z, math.log(8) ** 2, rel_tol=1e-5)
    skewed = route(torch.tensor([[10.0] + [0.0] * 7] * 6), top_k=2, temperature=1.0)
    assert load_balance_loss([[skewed]], z_weight=0.0).item() > 1.0
    assert annealing_factor(0, 10) == 1.0 and annealing_factor(5, 10) == 0.5
    assert annealing_factor(10, 10) == 0.001


def test_anomaly_map_is_root_sum_square_over_scales_and_modalities():
    p = torch.ones(3, 2, 4, 4)
    d = p.clone()
    d[1, 1] = -1.0  # pair 1: cos = 0 → distance 1 everywhere
    sample_index = torch.tensor([0, 0, 1])
    maps = anomaly_map([p, p], [d, d], sample_index, 2, (8, 8))
    # sample 0 has pair 0 (distance 0) and pair 1 (distance 1) at two scales: sqrt(1 + 1)
    torch.testing.assert_close(maps[0], torch.full((8, 8), math.sqrt(2)))
    torch.testing.assert_close(maps[1], torch.zeros(8, 8))


def test_blur_keeps_constants_and_spreads_peaks():
    flat = torch.full((1, 32, 32), 3.0)
    torch.testing.assert_close(gaussian_blur(flat), flat)
    peak = torch.zeros(1, 32, 32)
    peak[0, 16, 16] = 1.0
    blurred = gaussian_blur(peak, sigma=4.0, size=15)
    assert math.isclose(blurred.sum().item(), 1.0, rel_tol=1e-5)
    assert blurred[0, 16, 16] < 0.02 and blurred[0, 16, 16] == blurred.max()


def test_image_score_is_mean_of_top_fraction():
    maps = torch.zeros(2, 100, 100)  # 10,000 pixels → top 10
    maps[0].view(-1)[:10] = 1.0
    maps[0].view(-1)[10:20] = 0.5
    maps[1].view(-1)[0] = 7.0
    scores = image_score(maps, 0.001)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.7]))
