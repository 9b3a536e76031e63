"""TaskDataset / MultiTaskDataset, the collate into a Batch, and the class-balanced sampler."""

from collections import Counter

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unimmad_cl.data.dataset import Batch, ClassBalancedSampler, MultiTaskDataset, TaskDataset, collate
from unimmad_cl.data.modalities import MAX_MODALITIES
from unimmad_cl.data.records import Sample
from unimmad_cl.errors import UserError


def rgbd_sample(tmp_path, stem, label):
    rgb = tmp_path / f"{stem}_rgb.png"
    Image.fromarray(np.full((12, 10, 3), 128, np.uint8)).save(rgb)
    depth = tmp_path / f"{stem}_depth.tiff"
    tifffile.imwrite(depth, np.full((12, 10), 0.5, np.float32))
    mask = None
    if label:
        mask = tmp_path / f"{stem}_mask.png"
        pixels = np.zeros((12, 10), np.uint8)
        pixels[:6] = 255
        Image.fromarray(pixels).save(mask)
    return Sample("rgbd", "obj", "test", ("rgb", "depth"), (str(rgb), str(depth)), label,
                  mask and str(mask), "dent" if label else "good", stem)


def ir_sample(tmp_path, stem, cls="part"):
    ir = tmp_path / f"{stem}_ir.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(ir)
    return Sample("ir", cls, "train", ("infrared",), (str(ir),), 0, None, "good", stem)


def test_mixed_batch_of_rgbd_and_infrared(tmp_path):
    rgbd = TaskDataset([rgbd_sample(tmp_path, "a", 1), rgbd_sample(tmp_path, "b", 0)], 16,
                       task_id=0, loss_weight=0.5)
    ir = TaskDataset([ir_sample(tmp_path, "c")], 16, task_id=3, loss_weight=10.0)
    data = MultiTaskDataset([rgbd, ir])
    batch = next(iter(DataLoader(data, batch_size=3, collate_fn=collate)))
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.images.shape == (3, MAX_MODALITIES, 3, 16, 16) and batch.images.dtype == torch.float32
    assert batch.modality_mask.tolist() == [[True, True, False, False]] * 2 + [[True, False, False, False]]
    assert batch.images[2, 1:].abs().sum() == 0 and batch.images[0, 2:].abs().sum() == 0
    assert batch.general_input.shape == (3, 3 * MAX_MODALITIES, 16, 16)
    assert batch.mask.shape == (3, 16, 16) and batch.mask[0, :8].min() == 1 and batch.mask[0, 8:].max() == 0
    assert batch.mask[1:].sum() == 0
    assert batch.label.tolist() == [1, 0, 0] and batch.label.dtype == torch.long
    assert batch.task_id.tolist() == [0, 0, 3] and batch.class_id.tolist() == [0, 0, 0]
    assert batch.loss_weight.tolist() == [0.5, 0.5, 10.0]
    assert [s.stem for s in batch.samples] == ["a", "b", "c"]
    # depth of a flat surface is 0 after centring; the slot of depth is the second one
    assert batch.images[0, 1].abs().max() < 1e-5
    moved = batch.to("cpu")
    assert moved.samples is batch.samples and torch.equal(moved.images, batch.images)


def test_class_ids_follow_the_given_class_list(tmp_path):
    data = TaskDataset([ir_sample(tmp_path, "a", "b_cls"), ir_sample(tmp_path, "b", "a_cls")], 8,
                       classes=["b_cls", "a_cls"])
    assert [data[i]["class_id"] for i in range(2)] == [0, 1]
    with pytest.raises(UserError, match="not in the class list"):
        TaskDataset([ir_sample(tmp_path, "a", "zzz")], 8, classes=["b_cls"])


def test_sampler_balances_classes_and_is_seeded():
    keys = [(0, "big")] * 90 + [(0, "small")] * 10 + [(1, "big")] * 20
    sampler = ClassBalancedSampler(keys, seed=7, num_samples=30_000)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 30_000
    freq = Counter(keys[i] for i in drawn)
    for key in set(keys):
        assert freq[key] / 30_000 == pytest.approx(1 / 3, abs=0.02)
    assert list(ClassBalancedSampler(keys, seed=7, num_samples=30_000)) == drawn
    sampler.set_epoch(1)
    assert list(sampler) != drawn
    assert len(ClassBalancedSampler(keys)) == len(keys)


def test_sampler_from_a_multitask_dataset(tmp_path):
    data = MultiTaskDataset([
        TaskDataset([ir_sample(tmp_path, "a"), ir_sample(tmp_path, "b")], 8, task_id=0),
        TaskDataset([ir_sample(tmp_path, "c")], 8, task_id=1),
    ])
    assert data.class_keys() == [(0, "part"), (0, "part"), (1, "part")]
    sampler = ClassBalancedSampler(data.class_keys(), seed=0, num_samples=6000)
    share_task1 = sum(i == 2 for i in sampler) / 6000
    assert share_task1 == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("old_classes", [2, 8, 32])
def test_new_task_share_does_not_fall_as_old_classes_accumulate(old_classes):
    """An incremental stage: the new task (2 classes, 60 samples) beside one replayed sample
    per old class. Plain class balance would give the new task 2 / (2 + old) of the draws."""
    keys = [(99, "a")] * 40 + [(99, "b")] * 20 + [(t, "x") for t in range(old_classes)]
    replay = [False] * 60 + [True] * old_classes
    sampler = ClassBalancedSampler(keys, seed=3, replay=replay, new_share=0.5)
    assert len(sampler) == 120  # the new task's items about once per epoch
    draws = []
    for epoch in range(50):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    new = [keys[i] for i in draws if not replay[i]]
    assert len(new) / len(draws) == pytest.approx(0.5, abs=0.02)
    freq = Counter(new)  # still class-balanced inside the new task
    assert freq[(99, "a")] / len(new) == pytest.approx(0.5, abs=0.03)
    old = Counter(keys[i] for i in draws if replay[i])
    assert len(old) == old_classes and max(old.values()) / min(old.values()) < 2.5


def test_replay_flags_mark_the_replayed_items(tmp_path):
    data = MultiTaskDataset(
        [TaskDataset([ir_sample(tmp_path, "a"), ir_sample(tmp_path, "b")], 8, task_id=0)],
        replay=[TaskDataset([ir_sample(tmp_path, "c")], 8, task_id=1)],
    )
    assert data.replay_flags() == [False, False, True] and len(data) == 3
    with pytest.raises(UserError, match="new task share"):
        ClassBalancedSampler(data.class_keys(), replay=data.replay_flags(), new_share=0.0)
