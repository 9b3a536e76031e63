"""The UniMMAD network: shapes, mixed batches, C-MoE maths, cache, freezing, overfitting."""

import warnings

import pytest
import torch

from unimmad_cl.config import ModelConfig
from unimmad_cl.errors import UserError
from unimmad_cl.model.backbone import RandomBackboneWarning
from unimmad_cl.model.cmoe import MoEBranch, grouped_dynamic_filter, route
from unimmad_cl.model.unimmad import (
    UniMMAD,
    freeze_for_incremental,
    incremental_parameter_names,
)

TINY = ModelConfig.preset("tiny")


def make_batch(mask_rows, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor(mask_rows, dtype=torch.bool)
    images = torch.randn(len(mask_rows), 4, 3, size, size, generator=g)
    return images * mask[:, :, None, None, None], mask


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UniMMAD(TINY)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_shapes_for_each_modality_count(tiny, count):
    images, mask = make_batch([[True] * count + [False] * (4 - count)] * 2)
    out = tiny(images, mask)
    n = 2 * count
    assert [tuple(d.shape) for d in out.decoded] == [(n, 64, 16, 16), (n, 128, 8, 8), (n, 256, 4, 4)]
    assert [tuple(p.shape) for p in out.priors] == [(n, 64, 16, 16), (n, 128, 8, 8), (n, 256, 4, 4)]
    assert out.sample_index.tolist() == sorted([0, 1] * count)
    tiny.eval()
    pred = tiny.predict(images, mask)
    tiny.train()
    assert pred.maps.shape == (2, 64, 64) and pred.scores.shape == (2,)
    assert torch.isfinite(pred.maps).all() and (pred.maps >= 0).all()
    # top-2 routing, once per (modality, scale, branch)
    assert pred.leader_counts.shape == (2, 3, 3, TINY.num_leaders)
    assert pred.leader_counts.sum(dim=(1, 2, 3)).tolist() == [count * 3 * 3 * 2] * 2


def test_mixed_batch_matches_samples_alone(tiny):
    """An RGB+depth sample beside an infrared-only one: each result equals the sample alone."""
    images, mask = make_batch([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    tiny.eval()
    together = tiny.predict(images, mask)
    for i in range(3):
        alone = tiny.predict(images[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(alone.maps[0], together.maps[i], atol=1e-4, rtol=1e-4)
        assert torch.equal(alone.leader_counts[0], together.leader_counts[i])
    tiny.train()


def test_bad_inputs_are_rejected(tiny):
    images, mask = make_batch([[1, 0, 0, 0]])
    with pytest.raises(UserError, match="expected"):
        tiny(images[:, :3], mask[:, :3])
    with pytest.raises(UserError, match="at least one modality"):
        tiny(images, torch.zeros_like(mask))


def naive_branch(branch: MoEBranch, values, sample_index, routing):
    """Reference: a Python loop over pairs and experts with one conv2d each."""
    pad = branch.kernel_size // 2
    kernels = branch.leaders(branch.base_experts)
    v = branch.pre(values)[sample_index]
    outs = []
    for i in range(v.shape[0]):
        x = v[i : i + 1]
        fixed = torch.nn.functional.conv2d(x, branch.fixed_expert, padding=pad)
        routed = sum(
            routing.scores[i, t] * torch.nn.functional.conv2d(x, kernels[routing.indices[i, t]], padding=pad)
            for t in range(routing.indices.shape[1])
        )
        outs.append(torch.cat([fixed, routed], dim=1))
    return branch.post(torch.cat(outs))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_grouped_dynamic_filtering_equals_naive_loop(k):
    torch.manual_seed(k)
    branch = MoEBranch(channels=8, kernel_size=k, num_base=4, num_leaders=6).eval()
    values = torch.randn(3, 8, 9, 9)
    sample_index = torch.tensor([0, 0, 1, 2, 2])
    routing = route(torch.randn(5, 6), top_k=2, temperature=1.0)
    with torch.no_grad():
        fast = branch(values, sample_index, routing)
        slow = naive_branch(branch, values, sample_index, routing)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_grouped_filter_is_one_conv_per_item_group():
    values = torch.randn(2, 3, 5, 5)
    kernels = torch.randn(2, 3, 4, 3, 3, 3)
    out = grouped_dynamic_filter(values, kernels)
    for i in range(2):
        for g in range(3):
            ref = torch.nn.functional.conv2d(values[i : i + 1], kernels[i, g], padding=1)[0]
            torch.testing.assert_close(out[i, g], ref, atol=1e-5, rtol=1e-5)


def test_leader_kernels_mix_base_experts_per_output_channel():
    torch.manual_seed(0)
    branch = MoEBranch(channels=4, kernel_size=3, num_base=3, num_leaders=2)
    kernels = branch.leaders(branch.base_experts)
    weights = branch.leaders.mixing.softmax(dim=1)
    j, o = 1, 2
    expected = sum(weights[j, b, o] * branch.base_experts[b, o] for b in range(3))
    torch.testing.assert_close(kernels[j, o], expected)
    # the fixed expert starts as the identity
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, branch.fixed_expert, padding=1), x)


def test_kernel_cache_matches_uncached_and_is_invalidated(tiny):
    images, mask = make_batch([[1, 1, 0, 0], [1, 0, 0, 0]])
    tiny.eval()
    branch = tiny.cmoe[0].branches[1]
    with torch.no_grad():
        via_cache = tiny(images, mask)
    assert branch._cache is not None
    with torch.enable_grad():  # grad mode composes kernels afresh, bypassing the cache
        fresh = tiny(images, mask)
    for a, b in zip(fresh.decoded, via_cache.decoded):
        torch.testing.assert_close(a.detach(), b, atol=1e-6, rtol=1e-6)
    # a parameter change (optimizer step, delta, load) must invalidate the cache
    old = branch._cache[1].clone()
    with torch.no_grad():
        branch.leaders.mixing.add_(1.0 * torch.randn_like(branch.leaders.mixing))
        tiny(images, mask)
    assert not torch.allclose(branch._cache[1], old)
    torch.testing.assert_close(branch._cache[1], branch.leaders(branch.base_experts).detach())
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    state["cmoe.0.branches.1.leaders.mixing"] = torch.zeros_like(state["cmoe.0.branches.1.leaders.mixing"])
    tiny.load_state_dict(state)
    with torch.no_grad():
        tiny(images, mask)
    torch.testing.assert_close(branch._cache[1], branch.leaders(branch.base_experts).detach())
    tiny.train()


def test_tiny_model_overfits_a_few_samples():
    torch.manual_seed(0)
    model = UniMMAD(TINY).train()
    images, mask = make_batch([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(12):
        out = model(images, mask)
        loss = model.loss(out, torch.ones(4), step, 12)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        losses.append(loss.consistency.item())
    assert losses[-1] <= 0.5 * losses[0], losses


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_incremental_subset_is_small(preset):
    from unimmad_cl.model.summary import parameter_summary

    summary = parameter_summary(ModelConfig.preset(preset))
    assert 0 < summary["incremental_fraction"] < 0.10


def test_freezing_sends_gradients_only_to_the_incremental_subset():
    torch.manual_seed(0)
    model = UniMMAD(TINY)
    names = freeze_for_incremental(model)
    assert names == incremental_parameter_names(model)
    assert any(".leaders.mixing" in n for n in names)
    assert any(".router.cond." in n for n in names) and any(".router.gates." in n for n in names)
    assert any(".aggregate." in n for n in names)
    assert not any("base_experts" in n or "fixed_expert" in n or n.startswith("encoder.") for n in names)
    model.train()
    # frozen BatchNorms stay in eval mode, the router's trainable BatchNorm trains
    assert not model.encoder.decoder.stages[0][0].body[1].training
    assert not model.embedding.stem[0][1].training
    assert model.cmoe[0].router.cond[1].training
    images, mask = make_batch([[1, 1, 0, 0], [1, 0, 0, 0]])
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    out = model(images, mask)
    model.loss(out, torch.ones(2), 0, 1).total.backward()
    for name, p in model.named_parameters():
        if name in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith("cmoe.") and ".router.cond.1." in k for k in changed)


def test_random_backbone_warns_loudly():
    with pytest.warns(RandomBackboneWarning, match="RANDOM weights") as caught:
        UniMMAD(TINY)
    assert "resnet18" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomBackboneWarning)
        UniMMAD(TINY, load_weights=False)  # weights come from a checkpoint: no warning


def test_random_backbone_keeps_timm_init_and_gets_data_statistics():
    torch.manual_seed(0)
    model = UniMMAD(TINY)
    bns = [m for m in model.prior.extractor.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # timm's zero-initialized last BN of each residual block stays (re-enabling it lowered
    # the prior ceiling, BENCHMARKS.md section 9)
    assert sum(not m.weight.any() for m in bns) == 6  # one per basic block of layers 1-3
    images, mask = make_batch([[1, 1, 0, 0], [1, 0, 0, 0]])
    images = images * 3 + 2  # data far from the init statistics (mean 0, var 1)
    seen = model.calibrate_random_backbone([(images, mask)])
    assert seen == 3
    first = model.prior.extractor.bn1
    expected = model.prior.extractor.conv1(images[mask]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(first.running_mean, expected, atol=1e-4, rtol=1e-4)
    assert not model.prior.extractor.training and not model.prior.training
    for key, value in model.prior.extractor.state_dict().items():
        assert torch.equal(value, model.encoder.backbone.state_dict()[key]), key
