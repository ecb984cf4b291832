"""timeaware.diagnostics: embedding survival per normalisation, time sensitivity, report."""

import pytest
import torch

from timeaware.diagnostics import (
    DiagnosticsReport,
    diagnose,
    embedding_survival,
    time_sensitivity,
)
from timeaware.models import NODEClassifier, ODEBlock, ODEFunc, UNet

X = (4, 8, 6, 6)


def test_batchnorm_model_scalar_embedding_does_not_survive():
    f = ODEFunc(8, norm="batch", time_embed="mlp")
    report = diagnose(f, torch.randn(*X))
    assert [s.name for s in report.layers] == ["norm2", "norm3"]
    for s in report.layers:
        assert s.kind == "batch" and s.addends == ("emb",)
        assert s.survival < 1e-5 and s.survival_channel < 1e-5 and s.survival_pos is None
    assert report.sensitivity < 1e-5


def test_positional_model_embedding_survives():
    f = ODEFunc(8, norm="batch", time_embed="mlp", inject="linear", spatial_size=(6, 6))
    report = diagnose(f, torch.randn(*X))
    for s in report.layers:
        assert s.addends == ("emb", "pos")
        assert s.survival_channel < 1e-5  # the channel-wise part is still removed
        assert s.survival > 0.05 and s.survival_pos > 0.05
    assert report.sensitivity > 0.05


def test_concat_conv_with_batchnorm_survives_only_through_the_border():
    # ODEFunc's 3x3 ConcatConvs are zero-padded: BN leaves the border part of the time map
    report = diagnose(ODEFunc(8, norm="batch"), torch.randn(*X))
    for s in report.layers:
        assert s.addends == ("t*time_map",)
        assert 1e-3 < s.survival < 0.5


def test_survival_grows_as_groups_decrease():
    x = torch.randn(*X)
    torch.manual_seed(0)
    base = ODEFunc(8, groups=8, time_embed="mlp")
    means = {}
    for g in (8, 4, 1):
        f = ODEFunc(8, groups=g, time_embed="mlp")
        f.load_state_dict(base.state_dict())  # same weights, only G differs
        means[g] = sum(s.survival for s in embedding_survival(f, x)) / 2
    assert means[8] < 1e-5 < means[4] < means[1], means


def test_report_table_markdown_plot_and_dict(tmp_path):
    f = ODEFunc(8, groups=2, inject="linear", spatial_size=(6, 6))
    report = diagnose(f, torch.randn(*X), ts=[0.0, 0.25, 0.5, 1.0])
    assert isinstance(report, DiagnosticsReport)
    text = str(report)
    for word in (
        "layer",
        "survival",
        "positional",
        "norm2",
        "norm3",
        "G=2, C/G=4",
        "t*time_map+pos",
        "time sensitivity",
    ):
        assert word in text, word
    md = report.to_markdown()
    assert md.startswith("| layer | norm |") and md.count("\n| norm") == 2
    assert len(report.layers[0].per_t) == 4 and len(report.sensitivity_per_t) == 4
    path = report.plot(str(tmp_path / "diag.png"))
    assert (tmp_path / "diag.png").stat().st_size > 1000 and path.endswith("diag.png")
    d = report.to_dict()
    assert d["layers"][0]["name"] == "norm2" and d["ts"] == [0.0, 0.25, 0.5, 1.0]


def test_modes_and_buffers_are_restored():
    f = ODEFunc(8, norm="batch")
    f.eval()
    before = {k: v.clone() for k, v in f.state_dict().items()}
    diagnose(f, torch.randn(*X))
    assert not f.training and not f.norm2.training
    for k, v in f.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert f.nfe == 9  # one evaluation per probed time


def test_time_sensitivity_on_known_functions():
    class Linear(torch.nn.Module):
        def forward(self, t, x):
            return x * (1 + t)

    class Const(torch.nn.Module):
        def forward(self, t, x):
            return x

    x = torch.randn(2, 3)
    s, per_t = time_sensitivity(Const(), x, ts=[0.0, 1.0])
    assert s == 0 and per_t == [0.0, 0.0]
    # f(0) = x, f(1) = 2x: mean 1.5x, deviation 0.5||x|| each, RMS ||f|| = sqrt(2.5)||x||
    s, _ = time_sensitivity(Linear(), x, ts=[0.0, 1.0])
    assert abs(s - 0.5 / 2.5**0.5) < 1e-6


def test_unet_and_classifier_and_block():
    u = UNet(
        ch=4,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        groups=2,
        image_size=8,
        inject="mlp",
    )
    report = diagnose(u, torch.randn(2, 3, 8, 8), ts=[0, 500, 999])
    names = [s.name for s in report.layers]
    assert names and all(n.endswith("norm2") for n in names)
    assert all(s.addends == ("emb", "pos") and s.survival > 0 for s in report.layers)
    m = NODEClassifier(3, 4, channels=4, image_size=8, groups=1, method="euler")
    report = diagnose(m, torch.randn(2, 3, 8, 8))
    assert [s.name for s in report.layers] == ["norm2", "norm3"]
    block = ODEBlock(ODEFunc(4, norm="instance"))
    assert len(diagnose(block, torch.randn(2, 4, 3, 3)).layers) == 2


def test_diagnostics_errors():
    f = ODEFunc(4)
    with pytest.raises(ValueError, match="norm_mode: got 'test'"):
        diagnose(f, torch.randn(2, 4, 3, 3), norm_mode="test")
    with pytest.raises(ValueError, match="ts: got an empty sequence"):
        diagnose(f, torch.randn(2, 4, 3, 3), ts=[])
    with pytest.raises(TypeError, match="model: got function"):
        diagnose(lambda t, x: x, torch.randn(2, 4, 3, 3))
