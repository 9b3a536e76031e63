"""The paper-size preset builds, runs a 256×256 forward pass on CPU and has the paper's counts."""

import json

import torch
from click.testing import CliRunner

from cli import main
from unimmad_cl.config import ModelConfig
from unimmad_cl.model.unimmad import UniMMAD

PAPER = ModelConfig.preset("paper")


def test_paper_preset_matches_model_md():
    assert PAPER.backbone == "wide_resnet50_2" and PAPER.image_size == 256
    assert (PAPER.embed_dim, PAPER.fcm_width, PAPER.num_base_experts, PAPER.num_leaders, PAPER.top_k) == (
        256, 512, 8, 32, 2,
    )
    assert PAPER.kernel_sizes == (1, 3, 5) and PAPER.max_modalities == 4


def test_info_paper_json_has_the_paper_counts():
    result = CliRunner().invoke(main, ["info", "--preset", "paper", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert len(info["cmoe"]) == 3
    for row in info["cmoe"]:
        assert row["base_expert_params"] == 18_350_080
        assert row["leader_params"] == 196_608
        assert row["fixed_expert_params"] == 256 * 256 * 35
        assert row["plain_moe_equivalent_params"] == 73_400_320
    assert info["moe_param_reduction"] >= 0.74
    assert 0 < info["incremental_fraction"] < 0.10
    assert info["prior_params"] < info["total_params"]


def test_info_human_output_and_bad_preset():
    runner = CliRunner()
    ok = runner.invoke(main, ["info", "--preset", "tiny"])
    assert ok.exit_code == 0 and "MoE-in-MoE saves" in ok.output
    bad = runner.invoke(main, ["info", "--preset", "huge"])
    assert bad.exit_code != 0
    assert "unknown preset 'huge'" in bad.output and "Traceback" not in bad.output


def test_paper_preset_forward_pass_on_cpu():
    torch.manual_seed(0)
    model = UniMMAD(PAPER).eval()
    images = torch.zeros(1, 4, 3, 256, 256)
    images[0, :2] = torch.randn(2, 3, 256, 256)
    mask = torch.tensor([[True, True, False, False]])
    pred = model.predict(images, mask)
    assert pred.maps.shape == (1, 256, 256) and torch.isfinite(pred.maps).all()
    assert pred.scores.shape == (1,) and pred.leader_counts.shape == (1, 3, 3, 32)
