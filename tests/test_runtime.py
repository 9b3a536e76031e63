"""Threads and OpenMP wait policy (unimmad_cl/runtime.py): the pure policy, the overrides
reaching torch in a fresh process, torch-free commands staying torch-free. No timings here
(the measurements: benchmarks/concurrency.py, BENCHMARKS.md "Fair under load")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from unimmad_cl import runtime
from unimmad_cl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
_OMP = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "UNIMMAD_THREADS")


# --------------------------------------------------------------------------- the pure policy


@pytest.mark.parametrize(
    ("cpus", "load", "threads"),
    [(2, 0.0, 2), (2, 0.3, 2), (2, 0.6, 1), (2, 1.2, 1), (2, 6.0, 1), (2, None, 2),
     (16, 3.4, 13), (16, 0.0, 16), (1, 0.0, 1), (4, 2.5, 2)],
)
def test_auto_threads_are_the_free_cores_and_waiting_threads_spin_briefly(cpus, load, threads):
    s = runtime.decide(cpus, load)
    assert (s.threads, s.spin_count, s.source) == (threads, runtime.SPIN_COUNT, "auto")


def test_requested_threads_win_and_zero_leaves_torch_alone():
    assert runtime.decide(2, 6.0, 2).threads == 2
    s = runtime.decide(2, 0.0, 3, requested_from="UNIMMAD_THREADS")
    assert (s.threads, s.source, s.spin_count) == (3, "UNIMMAD_THREADS", 1000)
    s = runtime.decide(2, 6.0, 0)
    assert (s.threads, s.spin_count, s.source) == (None, None, "torch default")


def test_the_users_openmp_environment_is_respected():
    assert runtime.decide(8, 0.0, env={"OMP_NUM_THREADS": "3"}).threads == 3  # e.g. set by torchrun
    assert runtime.decide(8, 0.0, env={"OMP_NUM_THREADS": "3"}).source == "OMP_NUM_THREADS"
    assert runtime.decide(8, 0.0, 5, env={"OMP_NUM_THREADS": "3"}).threads == 5  # the flag is stronger
    assert runtime.decide(8, 7.0, env={"OMP_NUM_THREADS": "junk"}).threads == 1  # not a count: auto
    for var, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "1000")):
        assert runtime.decide(2, 0.0, env={var: value}).spin_count is None  # kept as the user set it


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("auto", None), ("AUTO", None), ("", None),
                                                 ("0", 0), ("3", 3), (4, 4), (" 2 ", 2)])
def test_parse_threads(value, expected):
    assert runtime.parse_threads(value) == expected


@pytest.mark.parametrize("value", ["-1", "many", "1.5", -2])
def test_parse_threads_refuses_what_is_not_a_count(value):
    with pytest.raises(UserError, match="expected auto or a whole number >= 0"):
        runtime.parse_threads(value, "UNIMMAD_THREADS")


def test_describe_names_threads_source_and_wait_policy():
    assert runtime.decide(2, 3.4).describe() == "threads: 1 (auto: 2 CPUs, load 3.4), OpenMP waits spin 1000 then sleep"
    assert runtime.decide(2, 0.0, 2).describe() == "threads: 2 (--threads), OpenMP waits spin 1000 then sleep"
    assert runtime.decide(2, 0.0, 0).describe() == "threads: torch default (--threads 0)"
    assert "policy from the environment" in runtime.decide(2, 0.0, env={"OMP_WAIT_POLICY": "ACTIVE"}).describe()


def test_configure_writes_the_openmp_environment():
    env: dict[str, str] = {"UNIMMAD_THREADS": "1"}
    if "torch" in sys.modules:  # the flag/env path must work whether torch is imported or not
        import torch

        before = torch.get_num_threads()
    s = runtime.configure(environ=env, cpus=2, load=0.0)
    try:
        assert (s.threads, s.source) == (1, "UNIMMAD_THREADS")
        assert env["OMP_NUM_THREADS"] == "1" and env["GOMP_SPINCOUNT"] == "1000"
        env2: dict[str, str] = {"UNIMMAD_THREADS": "5"}
        assert runtime.configure("0", environ=env2, cpus=2, load=0.0).threads is None  # flag beats env
        assert env2 == {"UNIMMAD_THREADS": "5"}  # 0: nothing set
    finally:
        if "torch" in sys.modules:
            torch.set_num_threads(before)


def test_available_cpus_is_at_most_the_affinity_mask():
    assert 1 <= runtime.available_cpus() <= len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- through the CLI, fresh processes

# a throw-away command that imports torch the way the real ones do, in its body
PROBE = """
import json, os, sys, click, cli
@click.command("probe")
def probe():
    import torch
    print(json.dumps({"threads": torch.get_num_threads(), "spin": os.environ.get("GOMP_SPINCOUNT"),
                      "omp": os.environ.get("OMP_NUM_THREADS")}))
mod = type(sys)("probe_mod"); mod.probe = probe; sys.modules["probe_mod"] = mod
cli.COMMANDS["probe"] = "probe_mod:probe"
cli.main(sys.argv[1:])
"""


def _clean_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _OMP}
    return {**env, "PYTHONPATH": str(REPO), "UNIMMAD_HOME": str(tmp_path / "ws"), **extra}


def _probe(tmp_path: Path, *args: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args, "probe"], cwd=tmp_path, capture_output=True,
                          text=True, env=_clean_env(tmp_path, **env), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_threads_flag_and_env_var_reach_torch(tmp_path):
    assert _probe(tmp_path, "--threads", "1") == {"threads": 1, "spin": "1000", "omp": "1"}
    assert _probe(tmp_path, UNIMMAD_THREADS="1")["threads"] == 1
    # the flag wins, and a count above the cores (which MKL would cap at torch's start) is exact
    assert _probe(tmp_path, "--threads", "3", UNIMMAD_THREADS="1")["threads"] == 3
    untouched = _probe(tmp_path, "--threads", "0")
    assert untouched["spin"] is None and untouched["omp"] is None


def test_threads_flag_keeps_registry_commands_torch_free(tmp_path):
    code = (
        "import sys\nfrom cli import main\n"
        "for args in (['--threads', '1', 'tasks'], ['--threads', 'auto', 'stages'], ['--threads', '2', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit as exc:\n        assert exc.code == 0, (args, exc.code)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'timm', 'avalanche') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=_clean_env(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


# --------------------------------------------------------------------------- in-process (CliRunner)


def test_bad_threads_value_is_one_error_line(tmp_path, monkeypatch):
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "--threads", "many", "tasks"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: --threads 'many': expected auto or a whole number >= 0 (0: torch's default threads)"]
    monkeypatch.setenv("UNIMMAD_THREADS", "-1")
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "tasks"])
    assert result.exit_code == 2 and "error: UNIMMAD_THREADS '-1': expected auto" in result.output
    assert not (tmp_path / "ws").exists()


def test_an_in_process_command_leaves_the_callers_threads_and_environment(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    for var in _OMP:
        monkeypatch.delenv(var, raising=False)
    seen = {}

    @__import__("click").command("peek")
    def peek():
        seen["threads"] = torch.get_num_threads()
        seen["omp"] = os.environ.get("OMP_NUM_THREADS")

    mod = type(sys)("peek_mod")
    mod.peek = peek
    monkeypatch.setitem(sys.modules, "peek_mod", mod)
    import cli

    monkeypatch.setitem(cli.COMMANDS, "peek", "peek_mod:peek")
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "--threads", str(target), "peek"])
    assert result.exit_code == 0, result.output
    assert seen == {"threads": target, "omp": str(target)}  # torch was imported already: set directly
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "peek"])  # auto
    assert result.exit_code == 0 and seen["threads"] == before  # the caller's own choice is kept


# --------------------------------------------------------------------------- the benchmark, smoke


def test_concurrency_benchmark_smoke(tmp_path):
    from benchmarks import concurrency

    concurrency.main(["--quick", "--variants", "policy", "--processes", "1", "--steps", "1",
                      "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "concurrency.json").read_text())
    run = result["runs"][0]
    assert run["variant"] == "policy" and len(run["workers"]) == 1
    worker = run["workers"][0]
    assert worker["samples_per_s"] > 0 and worker["wait_policy"] == "spin 1000"
    assert worker["threads"] == worker["decided"]["threads"]
    assert result["summary"]["policy"]["1"]["ratio_to_solo_min"] == 1.0


def test_the_choice_is_printed_before_the_first_line_only():
    lines: list[str] = []
    echo = runtime.described_first(lines.append, runtime.decide(2, 0.0, 1))
    assert lines == []  # nothing until the command has something to say (not before an error)
    echo("stage 0 (base) on fabric")
    echo("epoch 1")
    assert lines == ["threads: 1 (--threads), OpenMP waits spin 1000 then sleep", "stage 0 (base) on fabric", "epoch 1"]
    plain = lines.append
    assert runtime.described_first(plain, None) is plain
