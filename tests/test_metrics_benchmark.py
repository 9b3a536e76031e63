"""The metrics speed benchmark runs end to end on a small set and its reference agrees."""

import json

from benchmarks.metrics_speed import main


def test_benchmark_small_run(tmp_path, capsys):
    out = tmp_path / "metrics_speed.json"
    main(["--n", "20", "--size", "32", "--compare-n", "10", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["comparison"]["aupro_abs_diff"] < 0.02  # 200-threshold grid vs exact
    assert result["comparison"]["speedup"] > 0 and result["full"]["peak_extra_bytes"] > 0
    assert set(result["full"]["metrics"]) >= {"i_auroc", "aupro"}
    assert "wrote" in capsys.readouterr().out
