"""Frozen features computed once (training/features.py): the trunk/decode split, cached
incremental training equal to the uncached loop, cached evaluation equal to the uncached
runner, the cache key's invalidation, the budget, and the stage integration."""

import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from registry import store
from unimmad_cl.config import ModelConfig, TrainConfig
from unimmad_cl.errors import UserError
from unimmad_cl.model.unimmad import UniMMAD, freeze_for_incremental
from unimmad_cl.training import features as fc
from unimmad_cl.training.loop import make_feature_batches, make_loader, train_epochs
from unimmad_cl.training.stages import Context, evaluate_tasks, model_at_stage, task_dataset, task_ids, task_samples
from unimmad_cl.workspace import Workspace

METRICS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")
# float16 features (relative rounding 2^-11 ≈ 5e-4 of L2-normalized values) move maps and
# scores by ~1e-4 relative here; metrics move only where two scores swap order.
FP16_METRIC_TOL = 0.02


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Two OpenMP threads on a shared 2-core machine collapse; one also makes runs comparable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.delenv(fc.BUDGET_ENV, raising=False)
    yield
    torch.set_num_threads(threads)


def run(args, workspace, ok=True):
    result = CliRunner().invoke(main, ["--workspace", str(workspace), *args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def based(tmp_path_factory):
    """Synthetic tasks registered, a tiny base stage on fabric + pcb_ir (1 epoch)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fcache")
    data, ws = root / "synth", root / "ws"
    run(["synth", "--out", str(data), "--train", "4", "--test", "3"], ws)
    run(["add-task", "--from", str(data / "tasks.yaml")], ws)
    run(["train-base", "--tasks", "fabric,pcb_ir", "--preset", "tiny", "--epochs", "1", "--batch-size", "4",
         "--quiet", "--device", "cpu"], ws)
    return ws


def copy_ws(based, tmp_path, keep_cache=False):
    """A private copy (tests change files and caches); the registry's paths still point at
    the shared synthetic data."""
    ws = tmp_path / "ws"
    shutil.copytree(based, ws)
    if not keep_cache:
        shutil.rmtree(ws / "cache")  # the base stage's evaluation cached its tasks
    return ws


def open_ctx(ws, echo=None):
    workspace = Workspace.resolve(ws)
    return Context(workspace.path, workspace.open_registry(), progress=False, echo=echo or (lambda m: None))


# --------------------------------------------------------------------------- model split


def test_forward_and_predict_are_decode_of_trunk():
    torch.manual_seed(0)
    model = UniMMAD(ModelConfig.preset("tiny"), load_weights=False).eval()
    images = torch.randn(3, 4, 3, 64, 64)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    images = images * mask[:, :, None, None, None]
    with torch.no_grad():
        f = model.trunk(images, mask)
        assert [tuple(g.shape) for g in f.general] == [(3, 64, 16, 16), (3, 128, 8, 8), (3, 256, 4, 4)]
        assert [tuple(p.shape) for p in f.priors] == [(6, 64, 16, 16), (6, 128, 8, 8), (6, 256, 4, 4)]
        assert f.sample_index.tolist() == [0, 1, 1, 2, 2, 2] and f.batch_size == 3
        assert torch.allclose(f.general[0].norm(dim=1), torch.ones(3, 16, 16), atol=1e-5)
        out, again = model(images, mask), model.decode(f)
        for a, b in zip(out.decoded, again.decoded):
            assert torch.equal(a, b)
        pred, from_features = model.predict(images, mask), model.predict_features(f)
    assert torch.equal(pred.maps, from_features.maps) and torch.equal(pred.scores, from_features.scores)
    assert torch.equal(pred.leader_counts, from_features.leader_counts)


def test_trunk_frozen_only_with_the_incremental_subset():
    model = UniMMAD(ModelConfig.preset("tiny"), load_weights=False).train()
    assert not model.trunk_frozen()  # base stage: everything trains
    freeze_for_incremental(model)
    assert model.train().trunk_frozen()
    everything = [n for n, _ in model.named_parameters() if not n.startswith("prior.")]
    freeze_for_incremental(model, everything)  # --trainable all
    assert not model.train().trunk_frozen()
    config = TrainConfig.preset("tiny")
    freeze_for_incremental(model)
    assert fc.training_cache_applies(model, config, "incremental")
    assert not fc.training_cache_applies(model, config, "base")
    assert not fc.training_cache_applies(model, config.with_overrides(trainable="all"), "incremental")
    assert not fc.training_cache_applies(model, config.with_overrides(feature_cache=False), "incremental")


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tables_in_memory_and_on_disk_give_the_same_rows(tmp_path, dtype):
    """bf16 is what the trunk returns under CUDA autocast; numpy has no bf16 (raw int16)."""
    from safetensors.torch import load_file

    from unimmad_cl.model.unimmad import Features

    g = torch.Generator().manual_seed(0)
    counts = [1, 2, 1, 3, 2]
    batches = [(0, 2), (2, 5)]
    full = Features(
        [torch.randn(5, 4, 8, 8, generator=g).to(dtype), torch.randn(5, 6, 4, 4, generator=g).to(dtype)],
        [torch.randn(9, 4, 8, 8, generator=g).to(dtype), torch.randn(9, 6, 4, 4, generator=g).to(dtype)],
        torch.repeat_interleave(torch.arange(5), torch.tensor(counts)), 5,
    )
    offsets = [0, *np.cumsum(counts)]
    tables = []
    for path in (None, tmp_path / "t.safetensors"):
        writer = fc.TableWriter(fc.table_columns(full, 5, 9, dtype), 2, path, {"key": "k"})
        for a, b in batches:
            pairs = slice(offsets[a], offsets[b])
            writer.put(Features([x[a:b] for x in full.general], [x[pairs] for x in full.priors],
                                full.sample_index[pairs] - a, b - a))
        tables.append(writer.commit())
    memory, disk = tables
    assert disk.metadata["key"] == "k" and set(load_file(str(tmp_path / "t.safetensors"))) == set(disk.data)
    rows = torch.tensor([3, 0, 3, 4])
    for table in tables:
        f = table.gather(rows)
        assert f.sample_index.tolist() == [0, 0, 0, 1, 2, 2, 2, 3, 3] and f.batch_size == 4
        assert torch.equal(f.general[1], full.general[1][rows]) and f.general[1].dtype == dtype
        assert torch.equal(f.priors[0], full.priors[0][[4, 5, 6, 0, 4, 5, 6, 7, 8]])
        s = table.slice(1, 3)
        assert torch.equal(s.priors[1], full.priors[1][1:4]) and s.sample_index.tolist() == [0, 0, 1]
    # A writer that does not get every row leaves no file behind.
    writer = fc.TableWriter(fc.table_columns(full, 5, 9, dtype), 2, tmp_path / "short.safetensors")
    with pytest.raises(ValueError, match="expected 5"):
        writer.commit()
    assert not list(tmp_path.glob("*short*")) and not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- training


def _incremental_setup(based):
    """The base model frozen for an incremental stage on bagel_rgbd (RGB + depth) with
    replay of fabric (a mix of 1- and 2-modality samples)."""
    from unimmad_cl.data.dataset import MultiTaskDataset
    from unimmad_cl.training.stages import replay_samples

    ctx = open_ctx(based)
    model = model_at_stage(ctx, 0)
    freeze_for_incremental(model)
    ids = task_ids(ctx.registry)
    new = store.get_task(ctx.registry, "bagel_rgbd")
    old = store.get_task(ctx.registry, "fabric")
    dataset = MultiTaskDataset(
        [task_dataset(new, ids[new.name], model, task_samples(new, "train"))],
        replay=[task_dataset(old, ids[old.name], model, replay_samples(ctx.registry, old))],
    )
    return ctx, model, dataset


def _train(model, loader, config):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    history = train_epochs(model, loader, optimizer, config, torch.device("cpu"), progress=False)
    return [(h.loss, h.consistency, h.load_balance, h.samples) for h in history]


@pytest.mark.parametrize("memory_mb", [2048.0, 0.0], ids=["in-memory", "spilled-to-disk"])
def test_cached_training_equals_uncached(based, tmp_path, memory_mb):
    ctx, model, dataset = _incremental_setup(based)
    config = TrainConfig.preset("tiny").with_overrides(epochs=3, batch_size=3, device="cpu",
                                                       feature_cache_memory_mb=memory_mb)
    plain, cached = model, copy.deepcopy(model)
    expected = _train(plain, make_loader(dataset, config), config)

    messages = []
    table = fc.precompute_training(cached, dataset, config, torch.device("cpu"), workspace=tmp_path, stage=1,
                                   progress=False, echo=messages.append)
    assert table is not None and table.n_samples == len(dataset)
    assert (table.path is None) == (memory_mb > 0)
    assert f"frozen features of {len(dataset)} training samples computed once" in messages[0]
    got = _train(cached, make_feature_batches(table, dataset, config), config)
    fc.release_training(table)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))

    assert len(got) == len(expected) == 3
    for (a, b, c, n), (x, y, z, m) in zip(got, expected):
        assert n == m
        assert a == pytest.approx(x, rel=1e-5) and b == pytest.approx(y, rel=1e-5) and c == pytest.approx(z, rel=1e-5)
    theirs = dict(plain.named_parameters())
    for name, p in cached.named_parameters():
        assert torch.allclose(p, theirs[name], atol=1e-5, rtol=1e-4), name


def test_training_features_over_both_budgets_run_uncached(based, tmp_path, monkeypatch):
    _, model, dataset = _incremental_setup(based)
    config = TrainConfig.preset("tiny").with_overrides(feature_cache_memory_mb=0.0)
    monkeypatch.setenv(fc.BUDGET_ENV, "0.01")
    messages = []
    table = fc.precompute_training(model, dataset, config, torch.device("cpu"), workspace=tmp_path, stage=3,
                                   progress=False, echo=messages.append)
    assert table is None
    assert len(messages) == 1 and "every epoch recomputes them" in messages[0] and fc.BUDGET_ENV in messages[0]


# --------------------------------------------------------------------------- evaluation


def _evaluate(ws, config, echo=None, model=None, tasks=("fabric", "pcb_ir")):
    """evaluate_tasks on the named tasks (or TaskInfo objects, e.g. with another root)."""
    ctx = open_ctx(ws, echo)
    model = model or model_at_stage(ctx, 0)
    chosen = [store.get_task(ctx.registry, t) if isinstance(t, str) else t for t in tasks]
    return evaluate_tasks(ctx, model, chosen, config, torch.device("cpu"))


def _assert_close(results, reference, tol):
    assert results.keys() == reference.keys()
    for task in reference:
        r, ref = results[task], reference[task]
        for cls in ref.per_class:
            for m in METRICS:
                a, b = r.per_class[cls][m], ref.per_class[cls][m]
                assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tol, (task, cls, m, a, b)
        assert np.array_equal(r.labels, ref.labels)
        np.testing.assert_array_equal(r.leader_counts, ref.leader_counts)


def test_cached_evaluation_equals_uncached_fp32_and_fp16(based, tmp_path):
    ws = copy_ws(based, tmp_path)
    base = TrainConfig.preset("tiny").with_overrides(device="cpu")
    reference = _evaluate(ws, base.with_overrides(feature_cache=False))
    assert not (ws / "cache").exists()

    fp32 = base.with_overrides(feature_cache_dtype="float32")
    first = _evaluate(ws, fp32)  # computes and writes
    entries = sorted((ws / "cache" / "features").glob("*/*.safetensors"))
    assert [p.parent.name for p in entries] == ["fabric", "pcb_ir"]
    messages = []
    again = _evaluate(ws, fp32, echo=messages.append)  # reads
    for results in (first, again):
        _assert_close(results, reference, 1e-6)
        for task in reference:
            np.testing.assert_allclose(results[task].scores, reference[task].scores, rtol=1e-6, atol=1e-7)
            g, h = results[task].gallery, reference[task].gallery
            assert g.keys == h.keys and np.array_equal(g.images, h.images) and np.array_equal(g.masks, h.masks)
    assert not any("do not fit" in m for m in messages)

    # The file is plain safetensors.
    from safetensors.torch import load_file

    loaded = load_file(str(entries[0]))
    table = fc.open_table(entries[0])
    assert torch.equal(loaded["general.1"], table.slice(0, table.n_samples).general[1])
    assert loaded["mask"].dtype == torch.uint8 and loaded["thumb"].shape[1:] == (3, 64, 64)

    fp16 = base.with_overrides(feature_cache_dtype="float16")
    first16, again16 = _evaluate(ws, fp16), _evaluate(ws, fp16)
    assert len(list((ws / "cache" / "features").glob("*/*.safetensors"))) == 4  # fp32 and fp16 entries
    _assert_close(again16, first16, 0.0)  # rounded the same whether computed or read
    _assert_close(again16, reference, FP16_METRIC_TOL)
    for task in reference:
        np.testing.assert_allclose(again16[task].scores, reference[task].scores, rtol=2e-3)


def test_changed_file_base_or_image_size_invalidate(based, tmp_path):
    import dataclasses

    ws = copy_ws(based, tmp_path)
    # A private copy of fabric's data: the test rewrites one of its files.
    ctx = open_ctx(ws)
    fabric = store.get_task(ctx.registry, "fabric")
    data = tmp_path / "fabric"
    shutil.copytree(fabric.root, data)
    fabric = dataclasses.replace(fabric, root=str(data))
    config = TrainConfig.preset("tiny").with_overrides(device="cpu", feature_cache_dtype="float32")

    def cache_for(model=None):
        model = model or model_at_stage(ctx, 0)
        dataset = task_dataset(fabric, 0, model, task_samples(fabric, "test"))
        cache = fc.EvaluationCache(ws, model, config, progress=False)
        cache.plan([("fabric", dataset)])
        return cache, dataset, model

    first = _evaluate(ws, config, tasks=(fabric,))
    cache, dataset, model = cache_for()
    key = cache.keys["fabric"]
    assert cache.batches("fabric", dataset, 4, 0, "cpu").cached

    # A touch (new mtime, same bytes) keeps the entry: the key is the content.
    image = dataset.samples[-1].paths[0]
    os.utime(image, ns=(1, 1))
    assert cache_for()[0].keys["fabric"] == key

    # Other bytes in one test image: a new key, computed from the new file.
    from PIL import Image

    pixels = np.asarray(Image.open(image)).copy()
    pixels[:8, :8] = 255 - pixels[:8, :8]
    Image.fromarray(pixels).save(image)
    changed, dataset, _ = cache_for()
    assert changed.keys["fabric"] != key
    assert not changed.batches("fabric", dataset, 4, 0, "cpu").cached
    after = _evaluate(ws, config, tasks=(fabric,))
    assert not np.array_equal(after["fabric"].scores, first["fabric"].scores)
    uncached = _evaluate(ws, config.with_overrides(feature_cache=False), tasks=(fabric,))
    np.testing.assert_allclose(after["fabric"].scores, uncached["fabric"].scores, rtol=1e-6)

    # Another base stage (other trunk weights), another image size.
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.encoder.fcm.parameters().__next__().add_(1e-3)
    assert cache_for(other)[0].keys["fabric"] != changed.keys["fabric"]
    torch.manual_seed(0)
    bigger = UniMMAD(ModelConfig.preset("tiny").replace(image_size=96), load_weights=False)
    assert fc.trunk_digest(bigger) != fc.trunk_digest(model)
    # An incremental stage (C-MoE tensors only) keeps the trunk's key.
    inc = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in inc.named_parameters():
            if name.startswith("cmoe."):
                p.add_(1e-3)
    assert fc.trunk_digest(inc) == fc.trunk_digest(model)


def test_budget_refuses_with_one_line_and_results_stay_equal(based, tmp_path, monkeypatch):
    ws = copy_ws(based, tmp_path)
    config = TrainConfig.preset("tiny").with_overrides(device="cpu", feature_cache_dtype="float32")
    reference = _evaluate(ws, config.with_overrides(feature_cache=False))
    messages = []
    monkeypatch.setenv(fc.BUDGET_ENV, "0.05")  # 51 KiB: less than one task's entry
    results = _evaluate(ws, config, echo=messages.append)
    _assert_close(results, reference, 1e-6)
    refused = [m for m in messages if "do not fit" in m]
    assert len(refused) == 2 and all("\n" not in m and fc.BUDGET_ENV in m for m in refused)
    assert not list((ws / "cache").rglob("*.safetensors"))

    # Room for one entry: the tasks evaluated together never evict each other...
    monkeypatch.delenv(fc.BUDGET_ENV)
    entry = _evaluate(ws, config.with_overrides(feature_cache_budget_mb=100.0), tasks=("fabric",))
    size = next((ws / "cache" / "features").glob("fabric/*.safetensors")).stat().st_size
    monkeypatch.setenv(fc.BUDGET_ENV, str((size * 1.5 + 20_000) / 2**20))
    messages.clear()
    _evaluate(ws, config, echo=messages.append)
    assert [p.parent.name for p in (ws / "cache" / "features").glob("*/*.safetensors")] == ["fabric"]
    assert len(messages) == 1 and "pcb_ir's test features" in messages[0]
    # ...but an entry not in use goes first when another task needs the room.
    _evaluate(ws, config, tasks=("pcb_ir",))
    assert [p.parent.name for p in (ws / "cache" / "features").glob("*/*.safetensors")] == ["pcb_ir"]
    assert entry  # (the one-task evaluation above ran)


def test_bad_budget_values_are_one_line_user_errors(monkeypatch):
    config = TrainConfig()
    for bad in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv(fc.BUDGET_ENV, bad)
        with pytest.raises(UserError, match=f"{fc.BUDGET_ENV}=.*expected a number of MiB"):
            fc.disk_budget_bytes(config)
    monkeypatch.setenv(fc.BUDGET_ENV, "2.5")
    assert fc.disk_budget_bytes(config) == int(2.5 * 2**20)
    for field, value in (("feature_cache_budget_mb", -1), ("feature_cache_memory_mb", "lots"),
                         ("feature_cache_dtype", "float64"), ("feature_cache", "yes")):
        with pytest.raises(UserError, match=field):
            TrainConfig().with_overrides(**{field: value})


# --------------------------------------------------------------------------- stages


def test_incremental_stage_uses_the_caches_and_trainable_all_does_not(based, tmp_path):
    ws = copy_ws(based, tmp_path, keep_cache=True)
    out = run(["train-incremental", "--tasks", "bagel_rgbd", "--epochs", "2"], ws).output
    assert "frozen features of" in out and "computed once" in out
    assert "feature cache: 2 task(s) evaluated from cached test features, 1 cached now" in out
    assert not list((ws / "cache" / "train").glob("*.safetensors"))  # nothing left of the stage's features
    out = run(["train-incremental", "--tasks", "liver_ct", "--epochs", "1", "--trainable", "all"], ws).output
    assert "computed once" not in out
    # --trainable all changed the trunk: no old entry matches, every task is computed again.
    assert "feature cache: 0 task(s) evaluated from cached test features, 4 cached now" in out
    rows = json.loads(run(["stages", "--json"], ws).output)
    assert [r["status"] for r in rows] == ["completed"] * 3


def test_a_bad_budget_variable_stops_a_stage_before_it_starts(based, tmp_path):
    ws = copy_ws(based, tmp_path, keep_cache=True)
    result = CliRunner().invoke(main, ["--workspace", str(ws), "train-incremental", "--tasks", "tiles", "--quiet"],
                                env={fc.BUDGET_ENV: "lots"})
    assert result.exit_code == 2
    assert f"error: {fc.BUDGET_ENV}='lots': expected a number of MiB >= 0" in result.output
    assert "Traceback" not in result.output
    assert [r["stage"] for r in json.loads(run(["stages", "--json"], ws).output)] == [0]  # nothing recorded


def test_incremental_speed_benchmark_quick_runs(tmp_path):
    from benchmarks import incremental_speed

    incremental_speed.main(["--quick", "--no-memory", "--repeats", "1", "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "incremental_speed.json").read_text())
    assert result["environment"]["torch_threads"] == 1 and "load_avg_end" in result["environment"]
    assert set(result["timings"]) >= {"base_epoch", "incremental_epoch_uncached", "incremental_epoch_cached",
                                      "evaluate_first", "evaluate_cached", "precompute"}
    assert 0 < result["ratios"]["incremental_cached_vs_base_epoch"] and result["eval_entry_bytes"] > 0
    assert result["fp16_cache_max_abs_metric_diff_vs_uncached"] < FP16_METRIC_TOL
