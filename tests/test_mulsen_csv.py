"""MulSen-AD labels as the dataset defines them: `RGB/GT/<defect>/data.csv` wins over the
masks, disagreements are counted by `add-task` and listed by `show-task`; the registry
column that keeps them migrates up and down with the tasks kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from registry import migrate
from registry.db import make_engine
from registry.store import SampleCounts, TaskSpec, add_tasks, get_task, list_tasks, open_registry
from unimmad_cl.data.readers import list_samples
from unimmad_cl.data.readers.mulsen import checked_test_samples
from unimmad_cl.errors import UserError


def png(path: Path, value: int = 0, mode="L", size=(6, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size + (3,) if mode == "RGB" else size
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def mulsen(root: Path, csv_rows: str | None) -> Path:
    """light: train 0..2; test good/0, hole/1..3. Masks: 1 anomalous in both sensors, 2 in RGB
    only (infrared mask empty), 3 in infrared only."""
    base = root / "light"
    for sensor, mode in (("RGB", "RGB"), ("Infrared", "L")):
        for n in range(3):
            png(base / f"{sensor}/train/{n}.png", mode=mode)
        png(base / f"{sensor}/test/good/0.png", mode=mode)
        for n in (1, 2, 3):
            png(base / f"{sensor}/test/hole/{n}.png", mode=mode)
    png(base / "RGB/GT/hole/1.png", 255)
    png(base / "RGB/GT/hole/2.png", 255)
    png(base / "RGB/GT/hole/3.png", 0)
    png(base / "Infrared/GT/hole/1.png", 255)
    png(base / "Infrared/GT/hole/2.png", 0)  # empty, while data.csv says 1 below
    png(base / "Infrared/GT/hole/3.png", 255)
    if csv_rows is not None:
        (base / "RGB/GT/hole/data.csv").write_text(
            "object,rgb_label,infrared_label,pointcloud_label\n" + csv_rows
        )
    return root


AGREEING = "1,1,1,1\n2,1,0,1\n3,0,1,0\n"
DISAGREEING = "1,1,1,1\n2,1,1,1\n3,0,1,0\n"  # sample 2: infrared anomalous by data.csv, its mask is empty


def labels(root, modalities):
    return {s.stem: s.label for s in list_samples("mulsen", root, modalities, "test")}


def test_data_csv_decides_the_labels_and_disagreements_are_listed(tmp_path):
    root = mulsen(tmp_path, DISAGREEING)
    samples, notes = checked_test_samples(root, ["light"], ["infrared"])
    assert {s.stem: s.label for s in samples} == {"0": 0, "1": 1, "2": 1, "3": 1}
    # sample 2 is anomalous (data.csv) but its infrared mask is empty: no mask is kept
    assert next(s for s in samples if s.stem == "2").mask_path is None
    assert notes == [{"class": "light", "defect": "hole", "stem": "2", "modality": "infrared", "csv_label": 1,
                      "mask_label": 0, "mask": str(root / "light/Infrared/GT/hole/2.png")}]
    # RGB agrees with its masks everywhere
    assert checked_test_samples(root, ["light"], ["rgb"])[1] == []


def test_agreeing_csv_and_no_csv_give_the_mask_labels(tmp_path):
    with_csv = mulsen(tmp_path / "a", AGREEING)
    without = mulsen(tmp_path / "b", None)
    for modalities in (["infrared"], ["rgb"], ["rgb", "infrared"]):
        assert labels(with_csv, modalities) == labels(without, modalities)
    assert labels(without, ["infrared"]) == {"0": 0, "1": 1, "2": 0, "3": 1}
    assert checked_test_samples(with_csv, ["light"], ["rgb", "infrared"])[1] == []


def test_csv_label_zero_drops_a_non_empty_mask(tmp_path):
    root = mulsen(tmp_path, "1,1,1,1\n2,1,0,1\n3,0,0,0\n")  # sample 3: infrared mask has pixels, csv 0
    samples, notes = checked_test_samples(root, ["light"], ["infrared"])
    three = next(s for s in samples if s.stem == "3")
    assert three.label == 0 and three.mask_path is None
    assert [(n["stem"], n["csv_label"], n["mask_label"]) for n in notes] == [("3", 0, 1)]


@pytest.mark.parametrize("rows, message", [
    ("1,1,yes,1\n", "infrared_label 'yes' is not 0 or 1"),
])
def test_a_bad_csv_is_a_user_error_naming_the_file(tmp_path, rows, message):
    root = mulsen(tmp_path, rows)
    with pytest.raises(UserError, match=message) as caught:
        list_samples("mulsen", root, ["infrared"], "test")
    assert "data.csv line 2" in str(caught.value)


def test_a_csv_without_the_label_column_is_a_user_error(tmp_path):
    root = mulsen(tmp_path, None)
    (root / "light/RGB/GT/hole/data.csv").write_text("object,rgb_label\n1,1\n")
    with pytest.raises(UserError, match="has no column 'infrared_label'"):
        list_samples("mulsen", root, ["infrared"], "test")


def test_add_task_counts_and_show_task_lists_the_disagreements(tmp_path):
    root = mulsen(tmp_path / "MulSen_AD", DISAGREEING)
    ws = tmp_path / "ws"

    def cli(*args):
        result = CliRunner().invoke(main, ["--workspace", str(ws), *args])
        assert result.exit_code == 0, result.output
        return result.output

    added = cli("add-task", "--name", "light", "--format", "mulsen", "--root", str(root), "--class", "light")
    assert "4 test (3 anomalous)" in added  # the reader alone counted 2 by the masks
    assert "1 label disagreement between the dataset's label file and the masks" in added
    shown = cli("show-task", "light")
    assert "light/hole/2 infrared: data.csv 1, mask empty -> label 1" in shown
    as_json = json.loads(cli("show-task", "light", "--json"))
    assert as_json["label_disagreements"][0]["stem"] == "2"
    assert as_json["samples"]["test_anomalous"] == 3


def test_migration_0003_round_trip_keeps_tasks(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    note = {"class": "light", "defect": "hole", "stem": "2", "modality": "infrared", "csv_label": 1,
            "mask_label": 0, "mask": None}
    with open_registry(url) as registry:
        add_tasks(registry, [
            TaskSpec("a", "mulsen", "/d", ("infrared",), ("light",), "industrial", 1.0, SampleCounts(3, 4, 3), (note,)),
            TaskSpec("b", "folder", "/e", ("rgb",), ("x",), "industrial", 1.0, SampleCounts(1, 1, 0)),
        ])
    engine = make_engine(url)
    migrate.downgrade(engine, "0002")
    assert migrate.current(engine) == "0002"
    migrate.upgrade(engine)
    engine.dispose()
    with open_registry(url) as registry:
        assert [t.name for t in list_tasks(registry)] == ["a", "b"]
        # the column came back empty (the downgrade dropped it) for every task
        assert get_task(registry, "a").label_disagreements == ()
        add_tasks(registry, [TaskSpec("c", "mulsen", "/d", ("infrared",), ("light",), "industrial", 1.0,
                                      SampleCounts(3, 4, 3), (note,))])
        assert get_task(registry, "c").label_disagreements == (note,)
