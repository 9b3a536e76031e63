"""Training-throughput changes keep the numbers: depthwise 1x1 as a product, and the
decoded-image cache of training loaders (BENCHMARKS.md, "Training throughput")."""

import numpy as np
import pytest
import torch
from PIL import Image

from unimmad_cl.config import TrainConfig
from unimmad_cl.data import dataset as dataset_module
from unimmad_cl.data.dataset import MultiTaskDataset, TaskDataset, collate, image_cache_budget_bytes
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError
from unimmad_cl.model.fcm import DepthwiseSeparable
from unimmad_cl.training.loop import make_loader


def test_depthwise_1x1_is_the_same_product():
    torch.manual_seed(0)
    block = DepthwiseSeparable(12, 8, 1)
    x = torch.randn(2, 12, 6, 6)
    conv = block.pointwise(block.depthwise(x))
    scaled = block.pointwise(x * block.depthwise.weight.view(1, -1, 1, 1))
    assert torch.equal(conv, scaled)
    assert torch.equal(block(x), block.act(block.norm(scaled)))


# --------------------------------------------------------------------------- image cache


def _samples(tmp_path, n=3, size=20):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        mask_path = None
        if i == 0:
            mask_path = tmp_path / "0_mask.png"
            m = np.zeros((size, size), dtype=np.uint8)
            m[2:6, 3:9] = 255
            Image.fromarray(m).save(mask_path)
        out.append(Sample(task="t", cls="c", split="train", modalities=("rgb",), paths=(str(path),), label=int(i == 0),
                          mask_path=str(mask_path) if mask_path else None, defect="good", stem=str(i)))
    return out


def test_image_cache_gives_the_same_items_and_decodes_once(tmp_path, monkeypatch):
    samples = _samples(tmp_path)
    norm = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    plain_ds = TaskDataset(samples, 16, normalization=norm)
    data = MultiTaskDataset([TaskDataset(samples, 16, normalization=norm)])
    cache = data.enable_image_cache(2**20)
    calls = []
    real = dataset_module.load_sample
    monkeypatch.setattr(dataset_module, "load_sample", lambda *a: calls.append(a[0].stem) or real(*a))
    for _ in range(3):
        batch = collate([data[i] for i in range(len(data))])
        expected = collate([plain_ds[i] for i in range(len(plain_ds))])
        assert torch.equal(batch.images, expected.images) and torch.equal(batch.mask, expected.mask)
    from collections import Counter

    assert Counter(calls) == {"0": 4, "1": 4, "2": 4}  # the plain dataset 3 times, the cached one once
    assert cache.hits == 6 and cache.misses == 3 and len(cache) == 3
    # good samples' all-zero masks are not stored
    assert sum(m is None for _, m in cache._items.values()) == 2
    # the cached arrays are not written by collate / training
    batch.images.add_(1.0)
    assert torch.equal(collate([data[0]]).images, collate([plain_ds[0]]).images)
    assert data.enable_image_cache(2**20) is cache  # enabling again keeps it


def test_image_cache_budget_and_setting(tmp_path, monkeypatch):
    samples = _samples(tmp_path)
    data = MultiTaskDataset([TaskDataset(samples, 16)])
    one = 3 * 16 * 16 * 4
    cache = data.enable_image_cache(one * 2 + 16 * 16 * 4 + 100)  # two images and sample 0's mask
    for i in range(3):
        data[i]
    assert len(cache) == 2 and cache.refused == 1 and cache.used_bytes <= cache.budget_bytes
    assert data.enable_image_cache(0) is None and data.image_cache is None
    monkeypatch.setenv("UNIMMAD_IMAGE_CACHE_MB", "0")
    assert image_cache_budget_bytes() == 0
    monkeypatch.setenv("UNIMMAD_IMAGE_CACHE_MB", "1.5")
    assert image_cache_budget_bytes() == int(1.5 * 2**20)
    monkeypatch.setenv("UNIMMAD_IMAGE_CACHE_MB", "lots")
    with pytest.raises(UserError, match="UNIMMAD_IMAGE_CACHE_MB"):
        image_cache_budget_bytes()
    monkeypatch.delenv("UNIMMAD_IMAGE_CACHE_MB")
    assert image_cache_budget_bytes() == dataset_module.IMAGE_CACHE_MB * 2**20


def test_make_loader_caches_images_and_keeps_workers(tmp_path, monkeypatch):
    samples = _samples(tmp_path)
    data = MultiTaskDataset([TaskDataset(samples, 16)])
    config = TrainConfig(batch_size=2, device="cpu")
    loader = make_loader(data, config)
    assert data.image_cache is not None and data.image_cache.budget_bytes == image_cache_budget_bytes()
    assert not loader.persistent_workers and not loader.pin_memory
    loader = make_loader(MultiTaskDataset([TaskDataset(samples, 16)]), config.with_overrides(num_workers=2))
    assert loader.persistent_workers and loader.dataset.image_cache.budget_bytes == image_cache_budget_bytes() // 2
    monkeypatch.setenv("UNIMMAD_IMAGE_CACHE_MB", "0")
    fresh = MultiTaskDataset([TaskDataset(samples, 16)])
    make_loader(fresh, config)
    assert fresh.image_cache is None
