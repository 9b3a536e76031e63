"""Interrupted stages: a killed training command leaves its stage `interrupted` (not
`running`) in `stages` and `show-task`, with the command that resumes it, and that command
resumes it; a stage shows `running` only while its process holds the workspace lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from registry import store
from unimmad_cl.training.lock import LOCK_FILE, lock_state, stage_states, workspace_lock

REPO = Path(__file__).resolve().parents[1]


def cli(ws, *args):
    result = CliRunner().invoke(main, ["--workspace", str(ws), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _registry_with_running_stage(ws: Path):
    reg = store.open_registry(f"sqlite:///{ws / 'registry.db'}")
    spec = store.TaskSpec("t1", "folder", "/d/t1", ("rgb",), ("a",), "industrial", 1.0, store.SampleCounts(2, 2, 1))
    store.add_tasks(reg, [spec])
    store.start_stage(reg, "base", ["t1"])
    return reg


def test_running_only_while_the_lock_is_held(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    with _registry_with_running_stage(ws) as reg:
        stages = store.list_stages(reg)
    # No lock file: nothing in this workspace ever trained; it cannot tell, so "running".
    assert stage_states(ws, stages)[0].status == "running"
    with workspace_lock(ws):
        assert lock_state(ws).held
        assert stage_states(ws, stages)[0].status == "running"
        rows = json.loads(cli(ws, "stages", "--json"))
        assert rows[0]["status"] == "running" and rows[0]["resume"] is None
    assert not lock_state(ws).held
    state = stage_states(ws, stages)[0]
    assert state.status == "interrupted" and "train-base --tasks t1" in state.resume
    shown = json.loads(cli(ws, "show-task", "t1", "--json"))["training"]
    assert shown["stage"] == 0 and shown["status"] == "interrupted" and shown["resume"] == state.resume


def test_a_probe_does_not_make_a_starting_command_fail(tmp_path):
    """`stages` probes the lock with a shared flock; a training command starting in that
    instant retries instead of reporting the workspace busy."""
    import fcntl

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / LOCK_FILE).write_text("")
    probe = open(ws / LOCK_FILE)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    released = []

    def release():
        time.sleep(0.2)
        fcntl.flock(probe, fcntl.LOCK_UN)
        released.append(True)

    import threading

    thread = threading.Thread(target=release)
    thread.start()
    with workspace_lock(ws):
        assert released == [True]
    thread.join()
    probe.close()


def _wait_for(predicate, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended (status {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.skipif(shutil.which("unimmad-cl") is None, reason="the unimmad-cl script is not installed")
def test_a_killed_training_command_shows_interrupted_and_its_resume_command_works(tmp_path):
    data, ws = tmp_path / "synth", tmp_path / "ws"
    cli(ws, "synth", "--out", str(data), "--train", "4", "--test", "2")
    cli(ws, "add-task", "--name", "fabric", "--root", str(data / "fabric"), "--modality", "rgb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["unimmad-cl", "--workspace", str(ws), "train-base", "--preset", "tiny", "--tasks", "fabric",
            "--epochs", "4", "--batch-size", "4", "--restart"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = ws / "checkpoints"
    try:
        _wait_for(lambda: any(checkpoints.glob("stage_000.ckpt.safetensors")), 300, "the first epoch checkpoint", proc)
        # While it runs: "running" (its process holds the workspace lock).
        assert json.loads(cli(ws, "stages", "--json"))[0]["status"] == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    rows = json.loads(cli(ws, "stages", "--json"))
    assert rows[0]["recorded_status"] == "running"  # nobody marked it: the process was killed
    assert rows[0]["status"] == "interrupted"
    resume = rows[0]["resume"]
    assert resume.startswith("cd ") and "train-base" in resume and "--tasks fabric" in resume
    assert "--restart" not in resume  # --restart would discard the checkpoint
    table = cli(ws, "stages")
    assert "interrupted" in table and f"resume it with: {resume}" in table
    assert "running" not in table.splitlines()[1]
    shown = cli(ws, "show-task", "fabric")
    assert "stage 0 is interrupted" in shown and resume in shown

    done = subprocess.run(resume, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "resuming after epoch" in done.stderr
    assert "stage 0 completed" in done.stdout
    rows = json.loads(cli(ws, "stages", "--json"))
    assert [(r["stage"], r["status"], r["resume"]) for r in rows] == [(0, "completed", None)]


def test_stages_does_not_import_torch(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    _registry_with_running_stage(ws).close()
    code = (
        "import sys; from cli import main\n"
        "try:\n"
        f"    main(['--workspace', {str(ws)!r}, 'stages'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'timm', 'avalanche') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
