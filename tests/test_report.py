"""The forgetting report: formulas, loading from a registry, files, and the CLI (no torch)."""

import csv
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from registry.store import (
    ArtifactInfo, EvaluationRow, SampleCounts, TaskSpec, add_tasks, complete_stage, fail_stage, open_registry,
    record_evaluations, start_stage,
)
from unimmad_cl.errors import UserError
from unimmad_cl.evaluation.report import (
    average_incremental, backward_transfer, build_report, forgetting_best, forgetting_learned,
    format_table, leader_shares, load_report, report_csv, report_json, write_report_files,
)

# R[task][stage]: a learned at 0, b at 0, c at 1, d at 2 (the final stage).
MATRIX = {
    "a": {0: 0.90, 1: 0.95, 2: 0.80},
    "b": {0: 0.70, 1: 0.60, 2: 0.75},
    "c": {1: 0.85, 2: 0.80},
    "d": {2: 0.99},
}
LEARNED = {"a": 0, "b": 0, "c": 1, "d": 2}


def test_forgetting_forms_follow_their_definitions():
    # standard form: best of the earlier stages minus final
    assert forgetting_best(MATRIX["a"], 0, 2) == pytest.approx(0.95 - 0.80)
    assert forgetting_best(MATRIX["b"], 0, 2) == pytest.approx(0.70 - 0.75)
    # just-learned form (avalanche-lib): value when learned minus final
    assert forgetting_learned(MATRIX["a"], 0, 2) == pytest.approx(0.90 - 0.80)
    assert forgetting_learned(MATRIX["c"], 1, 2) == pytest.approx(0.05)
    # a task learned in the final stage has not had the chance to forget
    assert forgetting_best(MATRIX["d"], 2, 2) is None
    assert forgetting_learned(MATRIX["d"], 2, 2) is None
    # a missing final value leaves forgetting undefined rather than guessed
    assert forgetting_best({0: 0.9}, 0, 2) is None


def test_bwt_and_average_incremental():
    # BWT = mean over old tasks of (final - just learned)
    expected = np.mean([0.80 - 0.90, 0.75 - 0.70, 0.80 - 0.85])
    assert backward_transfer(MATRIX, LEARNED, 2) == pytest.approx(expected)
    # mean over stages of the mean over tasks learned so far
    stage_means = [np.mean([0.90, 0.70]), np.mean([0.95, 0.60, 0.85]), np.mean([0.80, 0.75, 0.80, 0.99])]
    assert average_incremental(MATRIX, LEARNED, [0, 1, 2]) == pytest.approx(np.mean(stage_means))


def test_build_report_excludes_tasks_of_the_last_stage_from_averages():
    report = build_report("i_auroc", MATRIX, LEARNED)
    assert report.tasks == ["a", "b", "c", "d"]
    assert report.forgetting["d"] is None
    assert report.average_forgetting == pytest.approx(np.mean([0.15, -0.05, 0.05]))
    assert report.average_forgetting_from_learned == pytest.approx(np.mean([0.10, -0.05, 0.05]))
    assert report.bwt == pytest.approx(-report.average_forgetting_from_learned)
    assert report.final_mean() == pytest.approx(np.mean([0.80, 0.75, 0.80, 0.99]))


def test_single_stage_report_has_no_forgetting():
    report = build_report("p_auroc", {"a": {0: 0.9}}, {"a": 0})
    assert report.average_forgetting is None and report.bwt is None
    assert report.average_incremental == pytest.approx(0.9)
    assert "forget" in format_table(report)


def test_bad_metric_and_empty_matrix_are_user_errors():
    with pytest.raises(UserError, match="--metric 'accuracy'"):
        build_report("accuracy", MATRIX, LEARNED)
    with pytest.raises(UserError, match="no i_auroc evaluations"):
        build_report("i_auroc", {}, {})


def test_leader_shares_sum_to_one_per_scale_and_branch():
    counts = np.array([[[2, 2, 0], [0, 0, 0]]])  # L=1, K=2 (second branch never routed), N_r=3
    shares = leader_shares(counts)
    assert shares[0, 0].tolist() == [0.5, 0.5, 0.0]
    assert shares[0, 1].tolist() == [0.0, 0.0, 0.0]


def test_json_and_csv_shapes():
    report = build_report("i_auroc", MATRIX, LEARNED)
    data = report_json(report)
    for key in ("metric", "stages", "tasks", "matrix", "forgetting", "average_forgetting", "bwt",
                "average_incremental", "files", "forgetting_from_learned"):
        assert key in data
    assert data["matrix"]["a"] == {"0": 0.90, "1": 0.95, "2": 0.80}
    assert data["forgetting"]["d"] is None
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN
    rows = list(csv.reader(report_csv(report).splitlines()))
    assert rows[0] == ["task", "learned_in_stage", "stage_0", "stage_1", "stage_2", "forgetting", "forgetting_from_learned"]
    assert rows[3][:3] == ["c", "1", ""]  # no value before the task was learned
    assert rows[-1][0] == "mean"


# --------------------------------------------------------------------------- a fabricated workspace


def _spec(name):
    return TaskSpec(name=name, format="folder", root=f"/data/{name}", modalities=("rgb",), classes=("x", "y"),
                    field="industrial", loss_weight=1.0, samples=SampleCounts(10, 6, 3))


def _artifact(kind):
    return ArtifactInfo(kind=kind, path=f"models/{kind}.safetensors", sha256="ab" * 32, bytes=1000)


@pytest.fixture
def workspace(tmp_path):
    """A workspace whose registry holds MATRIX (both classes equal) and a failed stage 3."""
    ws = tmp_path / "ws"
    ws.mkdir()
    with open_registry(f"sqlite:///{ws / 'registry.db'}") as reg:
        add_tasks(reg, [_spec(t) for t in ("a", "b", "c", "d", "e")])
        for number, tasks in enumerate([["a", "b"], ["c"], ["d"]]):
            start_stage(reg, "base" if number == 0 else "incremental", tasks, parent=None if number == 0 else number - 1,
                        config={"model": {"kernel_sizes": [1, 3, 5]}})
            rows = [EvaluationRow(t, cls, m, MATRIX[t][number]) for t in MATRIX if number in MATRIX[t]
                    for cls in ("x", "y") for m in ("i_auroc", "p_auroc")]
            record_evaluations(reg, number, rows)
            complete_stage(reg, number, artifact=_artifact("base" if number == 0 else "delta"), seconds=1.0)
        start_stage(reg, "incremental", ["e"], parent=2)
        record_evaluations(reg, 3, [EvaluationRow("a", "x", "i_auroc", 0.1)])
        fail_stage(reg, 3, "killed")
    counts = {t: np.arange(1 * 3 * 4).reshape(1, 3, 4).tolist() for t in "abcd"}
    summary = {t: {"mean": {}, "per_class": {}, "leader_counts": counts[t]} for t in counts}
    (ws / "evaluations").mkdir()
    (ws / "evaluations" / "stage_002.json").write_text(json.dumps(summary))
    return ws


def test_load_report_reads_completed_stages_and_leader_usage(workspace):
    with open_registry(f"sqlite:///{workspace / 'registry.db'}") as reg:
        report = load_report(reg, workspace, "i_auroc")
    assert report.stages == [0, 1, 2]  # the failed stage 3 and its evaluation are ignored
    assert report.matrix["a"] == pytest.approx(MATRIX["a"])
    assert report.learned == LEARNED
    assert report.expert_usage.stage == 2 and report.expert_usage.kernel_sizes == (1, 3, 5)
    assert report.expert_usage.shares()["a"].sum(axis=-1) == pytest.approx(np.ones((1, 3)))


def test_write_report_files_are_complete_and_listed(workspace, tmp_path):
    with open_registry(f"sqlite:///{workspace / 'registry.db'}") as reg:
        report = load_report(reg, workspace, "p_auroc")
    report = write_report_files(report, tmp_path / "out")
    names = sorted(p.split("/")[-1] for p in report.files)
    assert names == ["expert_usage.png", "forgetting_p_auroc.png", "matrix_p_auroc.png",
                     "report_p_auroc.csv", "report_p_auroc.json"]
    for path in report.files:
        assert (tmp_path / "out" / path.split("/")[-1]).stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names  # no temporary files left
    assert json.loads((tmp_path / "out" / "report_p_auroc.json").read_text())["files"] == report.files
    for png in names[:3]:
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report_table_and_errors(workspace, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli.main, ["--workspace", str(workspace), "report"])
    assert result.exit_code == 0, result.output
    assert "average forgetting 0.050" in result.output and "BWT" in result.output
    assert (workspace / "reports" / "forgetting_i_auroc.png").is_file()

    bad = runner.invoke(cli.main, ["--workspace", str(workspace), "report", "--metric", "accuracy"])
    assert bad.exit_code == 2
    (tmp_path / "afile").write_text("x")
    bad = runner.invoke(cli.main, ["--workspace", str(workspace), "report", "--out", str(tmp_path / "afile")])
    assert bad.exit_code == 2 and "is a file" in bad.output
    missing = runner.invoke(cli.main, ["--workspace", str(tmp_path / "missing"), "report"])
    assert missing.exit_code == 2 and "no workspace at" in missing.output
    assert not (tmp_path / "missing").exists()
    assert runner.invoke(cli.main, ["--workspace", str(tmp_path / "empty"), "init"]).exit_code == 0
    empty = runner.invoke(cli.main, ["--workspace", str(tmp_path / "empty"), "report"])
    assert empty.exit_code == 2 and "run train-base first" in empty.output
    assert not (tmp_path / "empty" / "reports").exists()


def test_report_json_imports_no_torch(workspace):
    """`report --json` runs in a fresh interpreter without torch, timm, avalanche or matplotlib."""
    code = textwrap.dedent(f"""
        import json, sys
        from click.testing import CliRunner
        import cli
        result = CliRunner().invoke(cli.main, ["--workspace", {str(workspace)!r}, "report", "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        heavy = [m for m in ("torch", "timm", "avalanche", "matplotlib") if m in sys.modules]
        print(json.dumps({{"heavy": heavy, "bwt": data["bwt"], "files": len(data["files"])}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["heavy"] == []
    assert math.isclose(data["bwt"], -np.mean([0.10, -0.05, 0.05]))
    assert data["files"] == 2  # JSON and CSV; PNGs only when asked (--plots) or for the table
