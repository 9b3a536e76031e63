"""predict: inputs matched to the task's modalities, threshold, scores equal evaluation."""

import csv
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from demo_workspace import quick_demo

import cli
from unimmad_cl.errors import UserError
from unimmad_cl.evaluation.predict import f1_optimal_threshold, resolve_input, resolve_inputs


def _write_png(path, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (16, 16), 128).save(path)
    return path


def test_f1_optimal_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    threshold, f1 = f1_optimal_threshold(labels, scores)
    # score >= 0.5 flags 0.5, 0.6, 0.7, 0.9: precision 3/4, recall 1 -> F1 6/7, the best cut
    assert threshold == 0.5 and f1 == pytest.approx(6 / 7)
    with pytest.raises(UserError, match="both good and anomalous"):
        f1_optimal_threshold(np.zeros(3), scores[:3])


def test_inputs_are_matched_to_the_task_modalities(tmp_path):
    rgbd = ("rgb", "depth")
    sample = tmp_path / "s1"
    _write_png(sample / "rgb.png")
    _write_png(sample / "depth.png", "I;16")
    (sample / "notes.txt").write_text("ignored")
    assert resolve_input(sample, "parts", rgbd).paths == (str(sample / "rgb.png"), str(sample / "depth.png"))

    with pytest.raises(UserError, match=r"input .*s1: has depth\+rgb, but task 'fab' takes rgb"):
        resolve_input(sample, "fab", ("rgb",))
    with pytest.raises(UserError, match="one image, but task 'parts' takes rgb\\+depth"):
        resolve_input(sample / "rgb.png", "parts", rgbd)
    with pytest.raises(UserError, match="one image, but task 'fab' takes rgb"):
        resolve_input(sample / "depth.png", "fab", ("rgb",))  # named after another modality
    with pytest.raises(UserError, match="not an image"):
        resolve_input(sample / "notes.txt", "fab", ("rgb",))
    with pytest.raises(UserError, match="does not exist"):
        resolve_input(tmp_path / "missing.png", "fab", ("rgb",))
    _write_png(sample / "RGB.jpg")
    with pytest.raises(UserError, match="two files for modality rgb"):
        resolve_input(sample, "parts", rgbd)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        resolve_inputs([tmp_path / "broken.png"], "fab", ("rgb",))


def _test_images(out):
    """The quick demo's coffee task (RGB, learned in stage 1), in the MVTec layout."""
    test = out / "data" / "mvtec" / "coffee" / "test"
    good = sorted((test / "good").glob("*.png"))
    bad = sorted(p for d in test.iterdir() if d.name != "good" for p in d.glob("*.png"))
    return good, bad


def test_predict_writes_heatmaps_and_scores_equal_to_evaluation(tmp_path):
    from unimmad_cl.evaluation.runner import evaluate_task
    from unimmad_cl.training.stages import Context, model_at_stage, task_dataset, task_samples
    from registry import store
    from unimmad_cl.workspace import Workspace

    out, demo = quick_demo()
    assert demo.exit_code == 0, demo.output
    good, bad = _test_images(out)
    folder = tmp_path / "sample"
    folder.mkdir()
    shutil.copy(good[0], folder / "rgb.png")
    inputs = [str(good[0]), str(bad[0]), str(folder)]
    pred = tmp_path / "pred"
    result = CliRunner().invoke(cli.main, ["--workspace", str(out / "workspace"), "predict", "--task", "coffee",
                                           "--out", str(pred), "--quiet", *inputs])
    assert result.exit_code == 0, result.output
    assert "F1-optimal image score on the test split" in result.output
    rows = list(csv.DictReader((pred / "predictions.csv").open()))
    assert [r["input"] for r in rows] == inputs
    assert len({r["threshold"] for r in rows}) == 1
    for row in rows:
        assert row["anomalous"] == str(int(float(row["score"]) >= float(row["threshold"])))
        assert (pred / row["heatmap"]).read_bytes()[:4] == b"\x89PNG"
    assert rows[0]["score"] == rows[2]["score"]  # a file and a folder holding it: same input

    # predictions equal what evaluation computes for the same files
    workspace = Workspace.resolve(out / "workspace")
    with workspace.open_registry() as registry:
        task = store.get_task(registry, "coffee")
        model = model_at_stage(Context(workspace.path, registry), 1)
    samples = {s.paths[0]: s for s in task_samples(task, "test")}
    chosen = [samples[str(good[0])], samples[str(bad[0])]]
    evaluated = evaluate_task(model, task_dataset(task, 0, model, chosen), progress=False)
    assert [float(r["score"]) for r in rows[:2]] == pytest.approx(evaluated.scores.tolist(), rel=1e-5)


def test_predict_refuses_bad_input_and_writes_nothing(tmp_path):
    out, demo = quick_demo()
    assert demo.exit_code == 0, demo.output
    good, _ = _test_images(out)
    sample = tmp_path / "s"
    _write_png(sample / "rgb.png")
    _write_png(sample / "depth.png", "I;16")
    pred = tmp_path / "pred"
    base = ["--workspace", str(out / "workspace"), "predict", "--out", str(pred)]
    cases = [
        (["--task", "coffee", str(sample)], "has depth+rgb, but task 'coffee' takes rgb"),
        (["--task", "coffee", str(good[0]), str(tmp_path / "nope.png")], "does not exist"),
        (["--task", "nosuch", str(good[0])], "no task named 'nosuch'"),
        (["--task", "coffee", "--stage", "0", str(good[0])], "not trained at stage 0"),
        (["--task", "coffee", "--stage", "7", str(good[0])], "stage 7"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli.main, base + args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not pred.exists()
    missing = CliRunner().invoke(cli.main, ["--workspace", str(tmp_path / "nows"), "predict", "--task", "coffee",
                                            "--out", str(pred), str(good[0])])
    assert missing.exit_code == 2 and "no workspace at" in missing.output and not (tmp_path / "nows").exists()
