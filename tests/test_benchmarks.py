"""Smoke tests of the benchmark suite at tiny sizes (the real figures: BENCHMARKS.md)."""

import json

from benchmarks import cmoe_inference, storage
from benchmarks.__main__ import SUITE
from benchmarks.__main__ import main as suite_main


def test_cmoe_inference_quick_runs_and_variants_agree(tmp_path):
    cmoe_inference.main(["--quick", "--tiny-pairs", "2", "--repeats", "1", "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "cmoe_inference.json").read_text())
    tiny = result["presets"]["tiny"]
    assert set(tiny["variants"]) == {"cached", "on_the_fly", "loop", "original_cached", "original_on_the_fly"}
    for row in tiny["variants"].values():  # every variant computes the same C-MoE output
        assert row["max_abs_diff_vs_original"] < 1e-4 and row["images_per_s"] > 0
    assert result["environment"]["torch_threads"] == 1 and "load_avg_end" in result["environment"]


def test_storage_sizes_match_real_files_and_paper_saves_experts(tmp_path):
    storage.main(["--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "storage.json").read_text())
    assert result["presets"]["tiny"]["files"]["estimate_error_bytes"] == {"base": 0, "delta": 0}
    paper = result["presets"]["paper"]
    assert paper["moe_reduction_target_met"] and paper["files"]["delta_over_base"] < 0.05
    growth = {g["tasks"]: g for g in paper["growth"]}
    assert growth[1]["per_task_over_continual"] == 1.0 and growth[66]["per_task_over_continual"] > 10


def test_suite_runner_lists_every_benchmark_and_rejects_unknown(tmp_path, capsys):
    assert {"cmoe_inference", "inference", "training_speed", "storage", "metrics_speed",
            "registry_scale", "cli_startup", "concurrency"} == set(SUITE)
    assert suite_main(["--only", "storage", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "storage.json").is_file()
    assert "1/1 benchmarks" in capsys.readouterr().out


def test_defect_type_auroc_separates_types_and_finds_an_inverted_one():
    from benchmarks.defect_types import defect_type_auroc

    labels = ["good"] * 4 + ["stain"] * 2 + ["hole"] * 2
    scores = [0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.1, 0.15]  # stains above every good image, holes below
    row = defect_type_auroc(labels, scores)
    assert row["stain"]["auroc"] == 1.0 and abs(row["stain"]["median"] - 0.85) < 1e-12
    assert row["hole"]["auroc"] == 0.0 and row["hole"]["count"] == 2
    assert row["all"] == 0.5 and row["good_median"] == 0.35
