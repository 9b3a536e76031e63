"""The continual training engine end to end on tiny synthetic data, through the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli import main
from registry import store
from unimmad_cl.training import artifacts
from unimmad_cl.training.stages import Context, model_at_stage, stage_optimizer
from unimmad_cl.workspace import Workspace

FAST = ["--preset", "tiny", "--epochs", "2", "--batch-size", "4", "--quiet"]


def run(args, workspace, ok=True):
    result = CliRunner().invoke(main, ["--workspace", str(workspace), *args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic data, 7 tasks registered, base on fabric+pcb_ir, one incremental stage."""
    root = tmp_path_factory.mktemp("train")
    data, ws = root / "synth", root / "ws"
    run(["synth", "--out", str(data), "--train", "4", "--test", "4"], ws)
    run(["add-task", "--from", str(data / "tasks.yaml")], ws)
    run(["train-base", "--tasks", "fabric,pcb_ir", *FAST], ws)
    run(["train-incremental", "--tasks", "bagel_rgbd", "--epochs", "2", "--quiet"], ws)
    return ws


def open_ctx(ws):
    workspace = Workspace.resolve(ws)
    return Context(workspace.path, workspace.open_registry(), progress=False)


def test_stages_are_recorded_with_their_artifacts(trained):
    rows = json.loads(run(["stages", "--json"], trained).output)
    assert [(r["stage"], r["kind"], r["status"], r["tasks"]) for r in rows] == [
        (0, "base", "completed", ["fabric", "pcb_ir"]),
        (1, "incremental", "completed", ["bagel_rgbd"]),
    ]
    base, delta = rows
    for row in rows:
        path = trained / row["artifact"]
        assert path.stat().st_size == row["artifact_bytes"]
        assert artifacts.sha256_file(path) == row["sha256"]
    assert delta["trainable_params"] < 0.10 * delta["total_params"]
    assert delta["artifact_bytes"] < 0.10 * base["artifact_bytes"]
    assert not list((trained / "checkpoints").glob("*.safetensors"))
    tasks = {t["name"]: t for t in json.loads(run(["tasks", "--json"], trained).output)}
    assert tasks["fabric"]["trained_in_stage"] == 0 and tasks["bagel_rgbd"]["trained_in_stage"] == 1
    assert tasks["tiles"]["trained_in_stage"] is None


def test_only_incremental_tensors_differ_between_stages(trained):
    ctx = open_ctx(trained)
    base, stage1 = model_at_stage(ctx, 0).state_dict(), model_at_stage(ctx, 1).state_dict()
    changed = {k for k in base if not torch.equal(base[k], stage1[k])}
    delta = load_file(str(trained / "models" / "stage_001.delta.safetensors"))
    assert changed and changed <= set(delta)
    for name in delta:
        assert ".leaders.mixing" in name or ".router." in name or ".aggregate." in name, name
    assert not any("base_experts" in n or n.startswith(("encoder.", "prior.", "embedding.")) for n in delta)


def test_delta_round_trip_reproduces_the_model_bit_exactly(trained, tmp_path):
    ctx = open_ctx(trained)
    model = model_at_stage(ctx, 1)
    stage = store.get_stage(ctx.registry, 1)
    names = artifacts.stage_tensor_names(model, set(stage.trainable_names))
    path = tmp_path / "again.delta.safetensors"
    base_sha = store.get_stage(ctx.registry, 0).artifact.sha256
    artifacts.write_delta(model, names, path, stage=1, parent=0, parent_sha256=base_sha, tasks=["bagel_rgbd"])
    rebuilt = artifacts.load_chain([(trained / "models" / "base.safetensors", base_sha), (path, artifacts.sha256_file(path))])
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key


def test_replay_buffers_are_recorded_and_used(trained):
    ctx = open_ctx(trained)
    for task, classes in (("fabric", 2), ("pcb_ir", 2), ("bagel_rgbd", 2)):
        buffer = store.get_replay_buffer(ctx.registry, task)
        assert buffer is not None and buffer.policy == "avalanche.ClassBalancedBuffer"
        assert len({item.cls for item in buffer.samples}) == classes  # at least one per class
        assert all(len(item.paths) == len(store.get_task(ctx.registry, task).modalities) for item in buffer.samples)
    shown = json.loads(run(["show-task", "fabric", "--json"], trained).output)
    assert shown["replay_samples"] == 2


def test_incremental_stage_trains_on_replayed_samples(trained, tmp_path):
    """The stage log states how many replayed samples were mixed in."""
    ws = tmp_path / "ws"
    import shutil

    shutil.copytree(trained, ws)
    result = CliRunner().invoke(
        main, ["--workspace", str(ws), "train-incremental", "--tasks", "liver_ct", "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "(6 replayed)" in result.output  # 2 per earlier task (fabric, pcb_ir, bagel_rgbd)


def test_evaluate_reproduces_stored_values(trained):
    ctx = open_ctx(trained)
    stored = {(r["task"], r["class"]): r for r in store.list_evaluations(ctx.registry, stage=1)}
    assert {task for task, _ in stored} == {"fabric", "pcb_ir", "bagel_rgbd"}
    rows = json.loads(run(["evaluate", "--stage", "1", "--json", "--quiet", "--device", "cpu"], trained).output)
    assert len(rows) == len(stored)
    for row in rows:
        for metric in ("i_auroc", "i_ap", "p_auroc", "aupro"):
            assert row[metric] == pytest.approx(stored[(row["task"], row["class"])][metric], abs=1e-9)
    earlier = store.list_evaluations(ctx.registry, stage=0)
    assert {r["task"] for r in earlier} == {"fabric", "pcb_ir"}


def test_tampered_or_missing_artifacts_are_detected(trained, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    delta = ws / "models" / "stage_001.delta.safetensors"
    data = bytearray(delta.read_bytes())
    data[-1] ^= 0xFF
    delta.write_bytes(bytes(data))
    bad = run(["evaluate", "--stage", "1", "--quiet"], ws, ok=False)
    assert bad.exit_code == 2 and "stage_001.delta.safetensors has sha256" in bad.output
    delta.unlink()
    missing = run(["evaluate", "--stage", "1", "--quiet"], ws, ok=False)
    assert missing.exit_code == 2 and "stage_001.delta.safetensors is missing" in missing.output
    ok = run(["evaluate", "--stage", "0", "--quiet", "--json"], ws)  # the base alone is intact
    assert json.loads(ok.output)


def test_bad_training_requests_are_one_line_errors(trained, tmp_path):
    empty = tmp_path / "empty"
    result = run(["train-incremental", "--quiet"], empty, ok=False)
    assert result.exit_code == 2 and "run train-base first" in result.output
    again = run(["train-base", *FAST], trained, ok=False)
    assert again.exit_code == 2 and "already trained" in again.output
    for tasks, message in (("nope", "no task named 'nope'"), ("fabric", "already trained in stage 0")):
        bad = run(["train-incremental", "--tasks", tasks, "--quiet"], trained, ok=False)
        assert bad.exit_code == 2 and message in bad.output, bad.output
    assert "Traceback" not in bad.output


def test_interrupted_stage_resumes_to_the_same_model(tmp_path, monkeypatch):
    """Ctrl-C after epoch 1 marks the stage failed; the rerun resumes from the checkpoint and
    ends with exactly the model an uninterrupted run gives."""
    from unimmad_cl.training import stages

    # Multithreaded CPU conv backward sums in a varying order (~1e-11 differences that
    # training amplifies); one thread makes two runs comparable bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_resume(tmp_path, monkeypatch, stages)
    finally:
        torch.set_num_threads(threads)


def _check_resume(tmp_path, monkeypatch, stages):

    data = tmp_path / "synth"
    run(["synth", "--out", str(data), "--train", "4", "--test", "2"], tmp_path / "x")
    args = ["train-base", "--tasks", "fabric", "--preset", "tiny", "--epochs", "2", "--batch-size", "4", "--quiet"]
    for ws in (tmp_path / "straight", tmp_path / "resumed"):
        run(["add-task", "--from", str(data / "tasks.yaml")], ws)
    run(args, tmp_path / "straight")

    real_save = stages.save_checkpoint

    def save_then_interrupt(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "save_checkpoint", save_then_interrupt)
    interrupted = run(args, tmp_path / "resumed", ok=False)
    assert interrupted.exit_code == 130
    monkeypatch.setattr(stages, "save_checkpoint", real_save)
    ctx = open_ctx(tmp_path / "resumed")
    stage = store.get_stage(ctx.registry, 0)
    assert stage.status == "failed" and "interrupted after epoch 1" in stage.error
    assert store.get_task(ctx.registry, "fabric").trained_in_stage is None
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "resumed"), *args[:-1]])
    assert result.exit_code == 0 and "resuming after epoch 1" in result.output
    straight = model_at_stage(open_ctx(tmp_path / "straight"), 0).state_dict()
    resumed = model_at_stage(open_ctx(tmp_path / "resumed"), 0).state_dict()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_a_second_training_command_is_refused_while_one_runs(trained):
    from unimmad_cl.training.lock import workspace_lock

    with workspace_lock(trained):
        busy = run(["train-incremental", "--quiet"], trained, ok=False)
    assert busy.exit_code == 2 and "is busy" in busy.output


def test_torchrun_two_processes_match_a_single_process(tmp_path):
    """`torchrun --nproc_per_node=2` (gloo) trains stage 0 with only rank 0 writing, and its
    parameters equal one process doing the same computation: each step, the two ranks'
    shards of the class-balanced draw, gradients averaged, one Adam step.

    (BatchNorm batch statistics are per rank under DDP, so the reference accumulates the two
    shards' gradients rather than running one batch of twice the size.)"""
    import os
    import subprocess
    import sys

    from registry import store as st
    from unimmad_cl.config import ModelConfig
    from unimmad_cl.data.dataset import ClassBalancedSampler, TaskDataset, collate
    from unimmad_cl.model.unimmad import UniMMAD
    from unimmad_cl.training.stages import task_samples

    data, ws = tmp_path / "synth", tmp_path / "ddp"
    run(["synth", "--out", str(data), "--train", "4", "--test", "2"], tmp_path / "x")
    run(["add-task", "--from", str(data / "tasks.yaml")], ws)
    args = ["train-base", "--tasks", "fabric", "--preset", "tiny", "--epochs", "1", "--batch-size", "2",
            "--quiet", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731",
         "-m", "cli", "--workspace", str(ws), *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("stage 0 completed") == 1  # rank 0 alone reports and writes
    rows = json.loads(run(["stages", "--json"], ws).output)
    assert [(r["stage"], r["status"]) for r in rows] == [(0, "completed")]
    ctx = open_ctx(ws)
    trained = dict(model_at_stage(ctx, 0).named_parameters())

    # The reference: one process, same init, same draw, the ranks' shards step by step.
    task = st.get_task(ctx.registry, "fabric")
    dataset = TaskDataset(task_samples(task, "train"), 64, task_id=0, classes=task.classes)
    draw = list(ClassBalancedSampler([(0, s.cls) for s in dataset.samples], seed=0))
    torch.manual_seed(0)
    model = UniMMAD(ModelConfig.preset("tiny")).train()
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=collate)
    model.calibrate_random_backbone((b.images, b.modality_mask) for b in loader)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = stage_optimizer(params, 1e-3)
    # One thread like each torchrun worker: Adam turns the ~1e-11 differences of another
    # summation order into sign flips of near-zero gradient entries.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(len(draw) // 4):
            opt.zero_grad()
            for rank in range(2):
                shard = draw[step * 4 :][:4][rank::2]
                batch = collate([dataset[i] for i in shard])
                out = model(batch.images, batch.modality_mask)
                (model.loss(out, batch.loss_weight, 0, 1).total / 2).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    worst = max((p - trained[n]).abs().max().item() for n, p in model.named_parameters())
    assert worst < 1e-6, worst


def test_a_failed_stage_number_is_reused_only_past_the_latest_completed_stage():
    from types import SimpleNamespace

    from unimmad_cl.training.stages import _stage_number

    failed = SimpleNamespace(number=1, tasks=("a",))
    assert _stage_number(failed, ["a"], SimpleNamespace(number=0)) == 1
    assert _stage_number(failed, ["a"], SimpleNamespace(number=2)) is None  # stage 2 completed meanwhile
    assert _stage_number(failed, ["b"], SimpleNamespace(number=0)) is None


def test_a_delta_with_a_wrongly_shaped_tensor_is_refused(trained, tmp_path):
    from unimmad_cl.errors import UserError

    ctx = open_ctx(trained)
    model = model_at_stage(ctx, 0)
    path = tmp_path / "bad.delta.safetensors"
    from unimmad_cl.model.io import write_safetensors_atomic

    name = "cmoe.0.branches.0.leaders.mixing"
    write_safetensors_atomic(
        {name: torch.zeros(1, 2, 3)}, path,
        {"format": artifacts.DELTA_FORMAT, "parent_sha256": "x"},
    )
    with pytest.raises(UserError, match="has shape"):
        artifacts.apply_delta(model, path, "x")
