"""Crash safety, integrity and the one-writer lock, with real processes.

`train-base` and `train-incremental` run as subprocesses and die by SIGKILL at chosen points:
- mid-epoch: killed from outside as soon as the first per-epoch checkpoint appears;
- during the artifact write, during evaluation, and after everything but the final
  "completed" commit: the subprocess runs the real CLI through a small test-side wrapper
  (`HOOK`, below) that replaces one library function by one that SIGKILLs its own process
  at that exact point. Nothing in the engine knows about these tests: no fault-injection
  flags, and the kill is as abrupt as a power cut (no `finally`, no `except` runs).
After every kill the registry must be consistent, and rerunning the same command must resume
(or cleanly restart) and finish with a valid model. Ctrl-C (SIGINT) marks the stage
interrupted and exits cleanly with status 130, one line, no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from registry import store
from unimmad_cl.training import artifacts
from unimmad_cl.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--preset", "tiny", "--epochs", "2", "--batch-size", "8"]
WAIT_S = 240

# Runs the real CLI; RELIABILITY_KILL_AT picks the function that kills the process instead.
HOOK = r"""
import os, signal, sys

def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

point = os.environ.get("RELIABILITY_KILL_AT")
if point == "artifact_write":
    # the model/delta file is half written (to its temporary name) when the power goes
    import safetensors.torch as st
    real_save = st.save_file
    def save_file(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if (metadata or {}).get("format") in ("unimmad-cl/model/1", "unimmad-cl/delta/1"):
            with open(filename, "r+b") as fh:
                fh.truncate(os.path.getsize(filename) // 2)
            die()
    st.save_file = save_file
elif point == "evaluation":
    import unimmad_cl.evaluation.runner as runner
    runner.evaluate_task = lambda *a, **k: die()
elif point == "hold_after_checkpoint":
    # the first epoch's checkpoint is written, then the process waits to be killed or
    # interrupted from outside (a fast machine would otherwise finish the stage first)
    import time
    import unimmad_cl.training.stages as stages
    real_checkpoint = stages.save_checkpoint
    def save_checkpoint(*args, **kwargs):
        real_checkpoint(*args, **kwargs)
        time.sleep(600)
    stages.save_checkpoint = save_checkpoint
elif point == "before_complete":
    # evaluations and replay buffers are recorded; the "completed" commit never happens
    from registry import store
    store.complete_stage = lambda *a, **k: die()
elif point:
    raise SystemExit(f"unknown RELIABILITY_KILL_AT {point!r}")

import cli
sys.argv[0] = "unimmad-cl"
cli.main()
"""


# --------------------------------------------------------------------------- helpers


class Run:
    """A CLI subprocess whose output goes to files (a full pipe would block it)."""

    def __init__(self, ws: Path, args: list[str], kill_at: str | None = None):
        self.log = ws.parent / f"log-{time.monotonic_ns()}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        env.pop("RELIABILITY_KILL_AT", None)
        if kill_at:
            env["RELIABILITY_KILL_AT"] = kill_at
        with open(f"{self.log}.out", "w") as out, open(f"{self.log}.err", "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", HOOK, "--workspace", str(ws), *args],
                cwd=REPO, env=env, stdout=out, stderr=err, text=True,
            )

    def output(self) -> str:
        return Path(f"{self.log}.out").read_text() + Path(f"{self.log}.err").read_text()

    def wait(self, timeout: float = WAIT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"command did not finish in {timeout}s:\n{self.output()[-3000:]}")

    def wait_for(self, path: Path, timeout: float = WAIT_S) -> None:
        """Poll until `path` exists; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"process ended ({self.proc.returncode}) before {path} appeared:\n"
                            f"{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"{path} did not appear in {timeout}s")
            time.sleep(0.02)

    def signal(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.wait()


def cli(ws: Path, *args: str):
    return CliRunner().invoke(main, ["--workspace", str(ws), *args])


def registry(ws: Path) -> store.Registry:
    return Workspace.resolve(ws).open_registry()


def killed(ws: Path, args: list[str], point: str) -> Run:
    run = Run(ws, args, kill_at=point)
    code = run.wait()
    assert code == -signal.SIGKILL, f"expected death by SIGKILL at {point}, got {code}:\n{run.output()[-3000:]}"
    return run


def state(ws: Path) -> dict:
    with registry(ws) as reg:
        return {
            "stages": {s.number: s for s in store.list_stages(reg)},
            "tasks": {t.name: t for t in store.list_tasks(reg)},
            "evaluations": store.list_evaluations(reg),
        }


def unfinished_results(ws: Path) -> dict:
    """Rows that only a completed stage may have, read from the database itself."""
    with sqlite3.connect(ws / "registry.db") as conn:
        evaluations = conn.execute(
            "SELECT DISTINCT e.stage_number FROM evaluations e JOIN stages s "
            "ON s.number = e.stage_number WHERE s.status != 'completed'"
        ).fetchall()
        replay = conn.execute(
            "SELECT t.name FROM replay_buffers b JOIN tasks t ON t.id = b.task_id "
            "WHERE t.trained_in_stage IS NULL"
        ).fetchall()
    return {k: v for k, v in (("evaluation rows of stages", evaluations),
                              ("replay buffers of untrained tasks", replay)) if v}


def assert_consistent(ws: Path, results_of_unfinished: bool = False) -> dict:
    """What must hold after any crash: every completed stage has its intact artifact and its
    tasks; nothing refers to a stage that did not complete; files are whole; the database
    itself is sound. Returns the registry state (and the leftover results of an unfinished
    stage under "leftovers" when `results_of_unfinished` allows them)."""
    now = state(ws)
    stages, tasks = now["stages"], now["tasks"]
    completed = {n for n, s in stages.items() if s.status == "completed"}
    unfinished = [s for s in stages.values() if s.status != "completed"]
    assert len(unfinished) <= 1, unfinished
    for number, stage in stages.items():
        if stage.status == "completed":
            assert stage.artifact is not None, f"completed stage {number} without artifact"
            path = ws / stage.artifact.path
            assert path.is_file(), f"completed stage {number}: {path} missing"
            assert path.stat().st_size == stage.artifact.bytes
            assert artifacts.sha256_file(path) == stage.artifact.sha256
            for name in stage.tasks:
                assert tasks[name].trained_in_stage == number
        else:
            assert stage.artifact is None, f"{stage.status} stage {number} has an artifact row"
            assert stage.status in ("running", "failed")
    for task in tasks.values():
        assert task.trained_in_stage is None or task.trained_in_stage in completed, task
    # what users see is the history of completed stages only
    assert {row["stage"] for row in now["evaluations"]} <= completed
    now["leftovers"] = unfinished_results(ws)
    if not results_of_unfinished:
        assert not now["leftovers"], now["leftovers"]
    with sqlite3.connect(ws / "registry.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    # a file is either complete under its final name or not there at all
    from unimmad_cl.model.io import read_metadata

    for path in (ws / "models").glob("*.safetensors"):
        read_metadata(path)  # raises on a torn file
    return now


def assert_valid_model(ws: Path, number: int) -> None:
    """The chain to `number` loads with every hash verified; no checkpoint is left."""
    from unimmad_cl.training.stages import Context, model_at_stage

    with registry(ws) as reg:
        model_at_stage(Context(Path(ws).resolve(), reg, progress=False), number)
    assert not list((ws / "checkpoints").glob("*.safetensors")), "checkpoint left after completion"


def stray_files(ws: Path) -> list[str]:
    return sorted(str(p.relative_to(ws)) for p in ws.rglob(".*.tmp"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    out = root / "synth"
    result = cli(root / "scratch", "synth", "--out", str(out), "--train", "4", "--test", "2")
    assert result.exit_code == 0, result.output
    return out


def fresh(tmp_path: Path, data: Path, name: str = "ws") -> Path:
    ws = tmp_path / name
    result = cli(ws, "add-task", "--from", str(data / "tasks.yaml"))
    assert result.exit_code == 0, result.output
    return ws


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data) -> dict:
    """The base stage killed three times on the way, then completed. Observations are
    collected here and asserted by the tests below."""
    ws = fresh(tmp_path_factory.mktemp("base"), data)
    args = ["train-base", "--tasks", "fabric", *TRAIN]
    notes: dict = {"ws": ws}

    # 1. SIGKILL mid-stage, from outside, right after the first epoch's checkpoint appears.
    #    Meanwhile a second training command is refused (one writer).
    run = Run(ws, args, kill_at="hold_after_checkpoint")
    run.wait_for(ws / "checkpoints" / "stage_000.ckpt.safetensors")
    busy = cli(ws, "train-incremental", "--tasks", "pcb_ir", "--quiet")
    notes["busy"] = (busy.exit_code, busy.output, state(ws)["stages"])
    assert run.signal(signal.SIGKILL) == -signal.SIGKILL
    notes["mid_epoch"] = assert_consistent(ws)

    # 2. the next command finds stage 0 "running" (its process is dead), resumes it from
    #    the checkpoint and dies half-way through writing base.safetensors
    run = killed(ws, args, "artifact_write")
    notes["resume_output"] = run.output()
    notes["artifact_write"] = assert_consistent(ws)
    notes["torn_base_exists"] = (ws / "models" / "base.safetensors").exists()

    # 3. dies after evaluations and replay buffers are recorded, before "completed"
    killed(ws, args, "before_complete")
    notes["before_complete"] = assert_consistent(ws, results_of_unfinished=True)

    # 4. any training command that holds the lock settles the dead stage: failed, with its
    #    partial results removed (this one then fails on its own bad input)
    bad = cli(ws, "train-base", "--tasks", "nope", "--quiet")
    notes["settled"] = (bad.exit_code, bad.output, assert_consistent(ws))

    # 5. the same command again completes (in-process: the kills above were the point)
    final = cli(ws, *args)
    notes["final"] = (final.exit_code, final.output)
    return notes


@pytest.fixture(scope="module")
def incremental_run(base_run, tmp_path_factory) -> dict:
    """Stage 1 interrupted by Ctrl-C, killed during evaluation, then completed."""
    ws = tmp_path_factory.mktemp("incremental") / "ws"
    shutil.copytree(base_run["ws"], ws, ignore=shutil.ignore_patterns(".*.tmp"))
    args = ["train-incremental", "--tasks", "pcb_ir", "--epochs", "2", "--batch-size", "8"]
    notes: dict = {"ws": ws}

    run = Run(ws, args, kill_at="hold_after_checkpoint")
    run.wait_for(ws / "checkpoints" / "stage_001.ckpt.safetensors")
    notes["ctrl_c"] = (run.signal(signal.SIGINT), run.output(), assert_consistent(ws))

    killed(ws, args, "evaluation")
    notes["evaluation"] = assert_consistent(ws)
    notes["delta_before_record"] = (ws / "models" / "stage_001.delta.safetensors").exists()

    final = cli(ws, *args)
    notes["final"] = (final.exit_code, final.output)
    return notes


# --------------------------------------------------------------------------- crash safety


def test_killed_base_stage_leaves_a_consistent_registry_and_resumes(base_run):
    ws = base_run["ws"]
    stage = base_run["mid_epoch"]["stages"][0]
    assert stage.status == "running" and stage.artifact is None  # the dead process's row
    assert base_run["mid_epoch"]["tasks"]["fabric"].trained_in_stage is None
    # the rerun resumed from the checkpoint instead of starting over
    assert "resuming after epoch 1" in base_run["resume_output"], base_run["resume_output"][-2000:]
    assert not base_run["torn_base_exists"], "a torn base.safetensors under its final name"
    for point in ("artifact_write", "before_complete"):
        assert base_run[point]["stages"][0].status == "running", point
        assert base_run[point]["tasks"]["fabric"].trained_in_stage is None, point
    code, output, settled = base_run["settled"]
    assert code == 2 and "no task named 'nope'" in output
    assert settled["stages"][0].status == "failed" and "interrupted" in settled["stages"][0].error
    code, output = base_run["final"]
    assert code == 0, output[-3000:]
    assert "resuming after epoch 2" in output
    assert "stage 0 completed: models/base.safetensors" in output
    done = assert_consistent(ws)
    assert done["stages"][0].status == "completed"
    assert done["tasks"]["fabric"].trained_in_stage == 0 and done["tasks"]["fabric"].replay_samples
    assert {row["stage"] for row in done["evaluations"]} == {0}
    assert_valid_model(ws, 0)


def test_stage_results_are_committed_together_with_completion(base_run):
    """Killed after the evaluations and replay buffers were written but before "completed":
    those rows must not exist yet (the registry records them in the completing transaction,
    `store.complete_stage(..., evaluations=, replay_buffers=)`)."""
    assert base_run["before_complete"]["leftovers"] == {}


def test_killed_writes_leave_no_temporary_files_behind(base_run):
    """A write killed half-way leaves its temporary file; the next stage (holding the
    workspace lock, so no write can be in flight) must remove it, else every crash during a
    write leaks a model-sized file."""
    assert stray_files(base_run["ws"]) == []


def test_a_second_training_command_is_refused_while_one_runs(base_run):
    code, output, stages_then = base_run["busy"]
    assert code == 2 and "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: workspace ") and "is busy" in lines[0]
    assert "pid " in lines[0] and "unknown" not in lines[0]
    # the refused command changed nothing: stage 0 is still the running one
    assert [s.status for s in stages_then.values()] == ["running"]


def test_incremental_stage_survives_ctrl_c_and_kills(incremental_run):
    ws = incremental_run["ws"]
    code, output, after = incremental_run["ctrl_c"]
    assert code == 130, output[-3000:]
    assert "Traceback" not in output and output.strip().splitlines()[-1] == "interrupted"
    assert after["stages"][1].status == "failed" and "interrupted after epoch" in after["stages"][1].error

    after = incremental_run["evaluation"]
    assert after["stages"][1].status == "running" and after["stages"][0].status == "completed"
    assert after["tasks"]["pcb_ir"].trained_in_stage is None
    assert incremental_run["delta_before_record"]  # written, not yet recorded: harmless

    code, output = incremental_run["final"]
    assert code == 0, output[-3000:]
    assert "resuming after epoch 2" in output
    done = assert_consistent(ws)
    assert [done["stages"][n].status for n in (0, 1)] == ["completed", "completed"]
    assert done["tasks"]["pcb_ir"].trained_in_stage == 1
    assert {row["stage"] for row in done["evaluations"]} == {0, 1}
    assert_valid_model(ws, 1)


# --------------------------------------------------------------------------- integrity


def files(ws: Path) -> list:
    """Every file but the registry (compared by content) and the lock: name, size, mtime."""
    return sorted(
        (str(p.relative_to(ws)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in ws.rglob("*")
        if p.is_file() and not p.name.startswith(("registry.db", "train.lock"))
    )


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _foreign_base(path: Path) -> None:
    """Another registry's base: a valid model file, but not the bytes this registry recorded."""
    from unimmad_cl.model.io import load_model, save_model

    save_model(load_model(path), path, {"stage": "0", "tasks": json.dumps(["elsewhere"])})


@pytest.fixture(scope="module")
def two_stage_ws(incremental_run) -> Path:
    assert incremental_run["final"][0] == 0, incremental_run["final"][1][-3000:]
    return incremental_run["ws"]


TAMPER = {
    "truncated base": ("base.safetensors", lambda p: os.truncate(p, p.stat().st_size // 2)),
    "edited base": ("base.safetensors", lambda p: _flip(p, p.stat().st_size // 2)),
    "base of another registry": ("base.safetensors", _foreign_base),
    "truncated delta": ("stage_001.delta.safetensors", lambda p: os.truncate(p, 100)),
    "edited delta": ("stage_001.delta.safetensors", lambda p: _flip(p, p.stat().st_size - 5)),
    "delta of another registry": ("stage_001.delta.safetensors", None),
    "missing delta": ("stage_001.delta.safetensors", lambda p: p.unlink()),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_artifacts_are_caught_by_hash_before_use(case, two_stage_ws, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(two_stage_ws, ws)
    name, tamper = TAMPER[case]
    path = ws / "models" / name
    if tamper is None:  # a delta made on the same base, by another workspace's stage 1
        from unimmad_cl.training.stages import Context, model_at_stage

        with registry(ws) as reg:
            model = model_at_stage(Context(ws.resolve(), reg, progress=False), 1)
            base_sha = store.get_stage(reg, 0).artifact.sha256
            names = artifacts.stage_tensor_names(model, set(store.get_stage(reg, 1).trainable_names))
        with __import__("torch").no_grad():
            model.state_dict()[names[0]].add_(1.0)
        artifacts.write_delta(model, names, path, stage=1, parent=0, parent_sha256=base_sha, tasks=["x"])
    else:
        tamper(path)
    before = files(ws)
    expected = "is missing" if case == "missing delta" else "has sha256"
    commands = [["evaluate", "--stage", "1", "--quiet", "--device", "cpu"]]
    if case.startswith("edited"):  # training loads the chain through the same check
        commands.append(["train-incremental", "--tasks", "tiles", "--epochs", "1", "--quiet"])
    for args in commands:
        result = cli(ws, *args)
        assert result.exit_code == 2, (case, args, result.output)
        line = result.output.strip()
        assert "\n" not in line and "Traceback" not in line
        assert line.startswith(f"error: artifact {path.resolve()} ") and expected in line, line
    if case != "missing delta":
        assert "truncated, modified, or belongs to another registry" in line
    with registry(ws) as reg:  # nothing was started
        assert [s.status for s in store.list_stages(reg)] == ["completed", "completed"]
    assert files(ws) == before


def test_discard_stage_removes_a_running_stage_and_its_results(tmp_path):
    """The registry side of "bad data found mid-stage changes nothing": a running stage and
    whatever it recorded go; a completed one cannot be discarded."""
    from registry.store import ArtifactInfo, EvaluationRow, ReplayItem, SampleCounts, TaskSpec

    with store.open_registry(f"sqlite:///{tmp_path / 'r.db'}") as reg:
        spec = TaskSpec("t1", "folder", "/d", ("rgb",), ("a",), "industrial", 1.0, SampleCounts(1, 2, 1))
        store.add_tasks(reg, [spec, TaskSpec(**{**spec.__dict__, "name": "t2"})])
        store.start_stage(reg, "base", ["t1"])
        store.complete_stage(reg, 0, artifact=ArtifactInfo("base", "b", "0" * 64, 1), seconds=1)
        store.start_stage(reg, "incremental", ["t2"], parent=0)
        store.record_evaluations(reg, 1, [EvaluationRow("t2", "a", "i_auroc", 0.5)])
        store.record_replay_buffer(reg, "t2", policy="p", seed=0, ratio=0.1,
                                   samples=[ReplayItem("a", "000", ("/d/x.png",))], stage=1)
        store.discard_stage(reg, 1)
        assert [s.number for s in store.list_stages(reg)] == [0]
        assert store.get_task(reg, "t2").replay_samples == 0
        with pytest.raises(store.UserError, match="stage 0 is completed, not running"):
            store.discard_stage(reg, 0)


def test_a_unit_of_work_that_lost_a_race_runs_again(tmp_path):
    """Two machines sharing a PostgreSQL registry can both pass "name is free" before either
    commits; the loser's IntegrityError makes the unit of work run again, whose own check
    then reports the clash as a one-line UserError (on SQLite, BEGIN IMMEDIATE serializes)."""
    from sqlalchemy.exc import IntegrityError

    from registry.db import transaction

    with store.open_registry(f"sqlite:///{tmp_path / 'r.db'}") as reg:
        calls = []

        def work(session):
            calls.append(1)
            if len(calls) == 1:
                raise IntegrityError("INSERT", {}, Exception("duplicate key value violates unique constraint"))
            return "second try"

        assert transaction(reg.engine, work) == "second try" and len(calls) == 2

        def always(session):
            raise IntegrityError("INSERT", {}, Exception("duplicate key value"))

        with pytest.raises(store.UserError, match=r"registry sqlite:///.*: duplicate key value"):
            transaction(reg.engine, always)
