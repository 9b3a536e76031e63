"""The task CLI end to end on fabricated folder-layout data: init, add-task, tasks, show-task,
remove-task, db; bad input; shipped task definitions; concurrency; no torch import."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cli import main
from registry import migrate
from registry.definitions import read_definitions
from registry.store import ArtifactInfo, complete_stage, open_registry, start_stage
from unimmad_cl.data.modalities import check_modalities
from unimmad_cl.data.readers import FORMATS

REPO = Path(__file__).resolve().parents[1]


def make_tree(root: Path, classes=("a", "b"), modalities=("infrared",), n_train=3) -> Path:
    """A tiny dataset in the folder layout: per class n_train good, 1 good + 1 crack test."""
    for cls in classes:
        groups = [("train/good", f"{i:03d}") for i in range(n_train)]
        groups += [("test/good", "100"), ("test/crack", "101")]
        for group, stem in groups:
            for modality in modalities:
                folder = root / cls / group / modality
                folder.mkdir(parents=True, exist_ok=True)
                Image.new("L", (8, 8), 40).save(folder / f"{stem}.png")
        masks = root / cls / "ground_truth" / "crack"
        masks.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 255).save(masks / "101.png")
    return root


@pytest.fixture
def ws(tmp_path) -> Path:
    return tmp_path / "ws"


def run(ws: Path, *args: str):
    return CliRunner().invoke(main, ["--workspace", str(ws), *args])


def ok(ws: Path, *args: str):
    result = run(ws, *args)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def dump(db: Path) -> list:
    """Every row of every table: the registry's whole state."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(n, sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall())) for n in sorted(names)]


def test_add_task_as_typed_uses_the_default_data_root(ws):
    make_tree(ws / "data" / "light")
    result = ok(ws, "add-task", "--name", "light", "--modality", "infrared")
    assert "added task light" in result.output
    shown = json.loads(ok(ws, "show-task", "light", "--json").output)
    assert shown == {
        "name": "light",
        "format": "folder",
        "root": str((ws / "data" / "light").resolve()),
        "field": "industrial",
        "modalities": ["infrared"],
        "classes": ["a", "b"],
        "loss_weight": 1.0,
        "trained_in_stage": None,
        "samples": {"train": 6, "test": 4, "test_anomalous": 2},
        "replay_samples": 0,
        "label_disagreements": [],
        "training": None,
    }
    listed = json.loads(ok(ws, "tasks", "--json").output)
    assert listed == [shown]


def test_init_sets_the_data_root(tmp_path, ws):
    data = make_tree(tmp_path / "datasets" / "light").parent
    result = ok(ws, "init", "--data-root", str(data))
    assert str(data.resolve()) in result.output and (ws / "registry.db").exists()
    ok(ws, "add-task", "--name", "light", "--modality", "infrared")
    assert json.loads(ok(ws, "show-task", "light", "--json").output)["root"] == str(
        (data / "light").resolve()
    )


def test_all_flags_and_human_output(tmp_path, ws):
    root = make_tree(tmp_path / "parts", classes=("x", "y", "z"), modalities=("rgb", "depth"))
    ok(ws, "add-task", "--name", "parts", "--root", str(root), "--format", "folder",
       "--modality", "depth", "--modality", "rgb", "--class", "z", "--class", "x",
       "--field", "medical", "--loss-weight", "2.5")
    shown = json.loads(ok(ws, "show-task", "parts", "--json").output)
    assert shown["modalities"] == ["depth", "rgb"] and shown["classes"] == ["z", "x"]
    assert (shown["field"], shown["loss_weight"]) == ("medical", 2.5)
    assert shown["samples"] == {"train": 6, "test": 4, "test_anomalous": 2}
    table = ok(ws, "tasks").output.splitlines()
    assert table[0].split()[:3] == ["NAME", "FORMAT", "FIELD"]
    assert table[1].split()[:5] == ["parts", "folder", "medical", "depth,rgb", "2"]
    text = ok(ws, "show-task", "parts").output
    assert "modalities   depth, rgb" in text and "6 train, 4 test (2 anomalous)" in text


def test_tasks_on_an_empty_registry(ws):
    assert json.loads(ok(ws, "tasks", "--json").output) == []
    assert "no tasks registered" in ok(ws, "tasks").output


def test_remove_task(ws):
    make_tree(ws / "data" / "t1")
    make_tree(ws / "data" / "t2")
    ok(ws, "add-task", "--name", "t1", "--modality", "infrared")
    ok(ws, "add-task", "--name", "t2", "--modality", "infrared")
    assert "removed task t2" in ok(ws, "remove-task", "t2").output
    with open_registry(f"sqlite:///{ws / 'registry.db'}") as registry:
        start_stage(registry, "base", ["t1"])
        complete_stage(registry, 0, artifact=ArtifactInfo("base", "/b", "0" * 64, 1), seconds=1)
    before = dump(ws / "registry.db")
    result = run(ws, "remove-task", "t1")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: task 't1' was trained in stage 0; trained tasks are part of the model's "
        "history and cannot be removed\n"
    )
    assert dump(ws / "registry.db") == before
    assert json.loads(ok(ws, "show-task", "t1", "--json").output)["trained_in_stage"] == 0


BAD_INPUTS = {
    "duplicate name": (["--name", "light", "--modality", "infrared"],
                       "a task named 'light' is already registered"),
    "path-like name": (["--name", "../x", "--modality", "infrared"],
                       "task name '../x' is not a safe identifier"),
    "name with a space": (["--name", "my task", "--modality", "infrared"],
                          "task name 'my task' is not a safe identifier"),
    "empty name": (["--name", "", "--modality", "infrared"],
                   "task name '' is not a safe identifier"),
    "unknown modality": (["--name", "t", "--modality", "thermal"],
                         "unknown modality 'thermal'; known modalities: rgb"),
    "unknown format": (["--name", "t", "--format", "coco", "--modality", "rgb"],
                       "unknown dataset format 'coco'; known formats: mvtec"),
    "duplicate modality": (["--name", "t", "--modality", "rgb", "--modality", "rgb"],
                           "modalities must be distinct"),
    "five modalities": (["--name", "t"] + [a for m in ("rgb", "depth", "infrared", "ct", "oct")
                                           for a in ("--modality", m)],
                        "a task needs 1 to 4 modalities, got 5"),
    "missing default data root": (["--name", "nowhere", "--modality", "infrared"],
                                  "data root not found: {ws}/data/nowhere (the default"),
    "missing --root": (["--name", "t", "--modality", "infrared", "--root", "{ws}/gone"],
                       "data root not found: {ws}/gone"),
    "class not in the data": (["--name", "t", "--modality", "infrared", "--root",
                               "{ws}/data/light", "--class", "a", "--class", "zz"],
                              "class 'zz' not found under {ws}/data/light (format folder); "
                              "classes there: a, b"),
    "modality not in the data": (["--name", "t", "--modality", "rgb", "--root",
                                  "{ws}/data/light"], "rgb folder not found"),
    "bad loss weight": (["--name", "t", "--modality", "infrared", "--root", "{ws}/data/light",
                         "--loss-weight", "0"], "loss weight 0.0 must be a positive number"),
    "no name": (["--modality", "infrared"], "give --name"),
    "--from with flags": (["--from", "x.yaml", "--name", "t"], "drop --name"),
    "missing YAML": (["--from", "{ws}/none.yaml"], "cannot read task definitions {ws}/none.yaml"),
    "unreadable YAML": (["--from", "{ws}/bad.yaml"],
                        "task definitions {ws}/bad.yaml are not valid YAML (line"),
    "YAML not a mapping": (["--from", "{ws}/scalar.yaml"], "must hold a mapping (one task)"),
    "YAML unknown key": (["--from", "{ws}/typo.yaml"], "unknown key 'modality'"),
    "YAML list with one bad task": (["--from", "{ws}/partly.yaml"],
                                    "task 'bad': data root not found"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, case):
    make_tree(ws / "data" / "light")
    make_tree(ws / "data" / "good1")
    ok(ws, "add-task", "--name", "light", "--modality", "infrared")
    (ws / "bad.yaml").write_text("- name: x\n  modalities: [rgb\n")
    (ws / "scalar.yaml").write_text("just text\n")
    (ws / "typo.yaml").write_text("name: t\nmodality: [infrared]\n")
    (ws / "partly.yaml").write_text(yaml.safe_dump([
        {"name": "good1", "modalities": ["infrared"]},
        {"name": "bad", "modalities": ["infrared"], "root": "missing"},
    ]))
    before = dump(ws / "registry.db")
    args, expected = BAD_INPUTS[case]
    result = run(ws, "add-task", *(a.format(ws=ws) for a in args))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert expected.format(ws=ws) in result.stderr
    assert dump(ws / "registry.db") == before


@pytest.mark.parametrize(
    "db_url, expected",
    [
        ("sqlite:///{tmp}/no/such/dir/registry.db", "folder {tmp}/no/such/dir does not exist"),
        ("not a url", "'not a url' is not a SQLAlchemy database URL"),
        ("nosuchdb://host/x", "cannot open registry nosuchdb://host/x"),
        ("sqlite:///{tmp}", "cannot open registry sqlite:///{tmp}: unable to open database"),
    ],
)
def test_unreachable_db_is_one_line(tmp_path, db_url, expected):
    url = db_url.format(tmp=tmp_path)
    for command in (["tasks"], ["add-task", "--name", "t", "--modality", "rgb"], ["db", "current"]):
        result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "--db", url,
                                           *command])
        assert result.exit_code == 2
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert expected.format(tmp=tmp_path) in result.stderr
    assert not (tmp_path / "no").exists()


def test_from_yaml_list_synth_style_relative_roots(tmp_path, ws):
    bench = tmp_path / "bench"
    make_tree(bench / "one", classes=("p",), modalities=("rgb",))
    make_tree(bench / "two", classes=("q", "r"), modalities=("rgb", "depth"))
    entries = [
        {"name": "one", "format": "folder", "root": "one", "modalities": ["rgb"],
         "classes": ["p"], "field": "synthetic", "loss_weight": 1.0},
        {"name": "two", "format": "folder", "root": "two", "modalities": ["rgb", "depth"],
         "classes": ["q", "r"], "field": "synthetic", "loss_weight": 0.5},
    ]
    (bench / "tasks.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
    result = ok(tmp_path / "ws", "add-task", "--from", str(bench / "tasks.yaml"))
    assert result.output.count("added task") == 2
    listed = json.loads(ok(tmp_path / "ws", "tasks", "--json").output)
    assert [(t["name"], t["root"], t["loss_weight"]) for t in listed] == [
        ("one", str((bench / "one").resolve()), 1.0),
        ("two", str((bench / "two").resolve()), 0.5),
    ]


def test_from_yaml_single_mapping_with_data_root_placeholder(tmp_path, ws):
    data = tmp_path / "datasets"
    make_tree(data / "MulSenLike", classes=("light",))
    ok(ws, "init", "--data-root", str(data))
    (tmp_path / "one.yaml").write_text(
        "name: light\nformat: folder\nroot: ${data_root}/MulSenLike\nmodalities: [infrared]\n"
    )
    ok(ws, "add-task", "--from", str(tmp_path / "one.yaml"))
    assert json.loads(ok(ws, "show-task", "light", "--json").output)["classes"] == ["light"]


def test_synth_output_registers_as_is(tmp_path, ws):
    from unimmad_cl.data.synth import write_benchmark

    entries = write_benchmark(tmp_path / "synth", image_size=32, n_train=1, n_test=2)
    ok(ws, "add-task", "--from", str(tmp_path / "synth" / "tasks.yaml"))
    listed = json.loads(ok(ws, "tasks", "--json").output)
    assert [t["name"] for t in listed] == [e["name"] for e in entries]
    assert all(t["samples"] == {"train": len(t["classes"]), "test": 2 * len(t["classes"]),
                                "test_anomalous": len(t["classes"])} for t in listed)


SHIPPED = sorted((REPO / "tasks").glob("*.yaml"))


def test_shipped_definitions_are_valid_and_point_at_the_data_root(tmp_path):
    assert {p.name for p in SHIPPED} >= {"mvtec_ad.yaml", "visa.yaml", "mvtec_3d_ad.yaml",
                                         "eyecandies.yaml", "mulsen_ad_infrared.yaml",
                                         "brats.yaml", "bmad.yaml", "synthetic.yaml"}
    names = []
    for path in SHIPPED:
        for definition in read_definitions(path, data_root=tmp_path):
            assert definition.format in FORMATS
            assert check_modalities(definition.modalities) == definition.modalities
            assert definition.root.is_relative_to(tmp_path), path
            names.append(definition.name)
    assert len(names) == len(set(names)), "task names must be unique across the shipped files"
    assert {"mulsen_light", "brats", "bmad_liver", "bmad_retina", "eyecandies",
            "mvtec3d_bagel", "mvtec_bottle", "visa_pcb1"} <= set(names)


def test_shipped_synthetic_definitions_match_synth(tmp_path):
    from unimmad_cl.data.synth import task_entries

    shipped = read_definitions(REPO / "tasks" / "synthetic.yaml", data_root=tmp_path)
    assert [(d.name, list(d.modalities), list(d.classes), d.field) for d in shipped] == [
        (e["name"], e["modalities"], e["classes"], e["field"]) for e in task_entries()
    ]
    assert [d.root for d in shipped] == [tmp_path / "synthetic" / e["root"] for e in task_entries()]


def test_db_commands(ws):
    make_tree(ws / "data" / "light")
    ok(ws, "add-task", "--name", "light", "--modality", "infrared")
    head = migrate.head()
    assert ok(ws, "db", "current").output.strip() == f"{head} (head)"
    assert f"registry at 0001; head is {head}" in ok(ws, "db", "downgrade", "0001").output
    assert ok(ws, "db", "current").output.strip() == f"0001; head is {head}"
    ok(ws, "db", "upgrade")
    ok(ws, "db", "downgrade", "base")
    assert "base (empty)" in ok(ws, "db", "current").output
    # any other command upgrades the registry again
    assert json.loads(ok(ws, "tasks", "--json").output) == []
    assert ok(ws, "db", "current").output.strip() == f"{head} (head)"
    result = run(ws, "db", "downgrade", "zzz")
    assert result.exit_code == 2 and result.stderr.startswith("error: migration failed")


def subprocess_env(ws: Path) -> dict:
    return {**os.environ, "UNIMMAD_HOME": str(ws), "PYTHONPATH": str(REPO)}


def test_concurrent_add_task_processes_all_succeed(tmp_path):
    ws = tmp_path / "ws"
    names = [f"task{i}" for i in range(8)]
    for name in names:
        make_tree(ws / "data" / name, classes=("c",), n_train=1)
    # a fresh registry: the processes also race to create the schema
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli", "add-task", "--name", name,
                          "--modality", "infrared"], cwd=tmp_path, env=subprocess_env(ws),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in names
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    assert [rc for rc, _ in results] == [0] * 8, results
    listed = json.loads(ok(ws, "tasks", "--json").output)
    assert sorted(t["name"] for t in listed) == names


def test_registry_commands_never_import_torch(tmp_path):
    ws = tmp_path / "ws"
    make_tree(ws / "data" / "light")
    code = f"""
import sys
from cli import main
for args in (["--help"], ["init"], ["add-task", "--name", "light", "--modality", "infrared"],
             ["tasks"], ["tasks", "--json"], ["show-task", "light", "--json"],
             ["remove-task", "light"], ["db", "current"], ["add-task", "--name", "../x"]):
    try:
        main(["--workspace", {str(ws)!r}, *args])
    except SystemExit as exc:
        assert exc.code in (0, 2), (args, exc.code)
heavy = sorted(m for m in ("torch", "timm", "avalanche", "torchvision") if m in sys.modules)
print("HEAVY", heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=subprocess_env(ws), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
