import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import bitnerf
import ptq
import rundir
import train
from conftest import write_scene
from evaluation import Evaluation
from nerf import NeRF
from utils import UserError

REPO = Path(__file__).resolve().parents[1]


def test_post_training_quantization_keeps_quality_and_shrinks_the_weights(tiny_config, tmp_path):
    # 16x16 views keep the evaluation of four variants quick (CPU fp16 has no fast kernels).
    scene = write_scene(tmp_path / "small.npz", n=8, size=16)
    config = replace(tiny_config, data=str(scene), steps=100, eval_every=1000, ckpt_every=1000, video_frames=1)
    train.run(config)
    run_dir = Path(config.out) / config.name
    rows = {r["variant"]: r for r in ptq.evaluate_variants(run_dir, ptq.VARIANTS, None, torch.device("cpu"))}
    assert rows.keys() == set(ptq.VARIANTS)
    fp32 = rows["fp32"]
    assert fp32["psnr_test"] == pytest.approx(json.loads((run_dir / "summary.json").read_text())["psnr_test"], abs=1e-3)
    assert rows["fp16"]["model_bytes"] < 0.6 * fp32["model_bytes"]
    assert rows["int8-weight"]["model_bytes"] < rows["fp16"]["model_bytes"]
    for variant in ("fp16", "int8-weight", "int8-dynamic"):
        assert abs(rows[variant]["psnr_test"] - fp32["psnr_test"]) < 1.0, variant
    # Measured on each variant: the weights it stores and what its quantized layers multiply (on the CPU,
    # torchao's int8 weight-only layers dequantize and multiply in fp32).
    assert {v: (r["weight_bits"], r["input_bits"]) for v, r in rows.items()} == {
        "fp32": (32, 32), "fp16": (16, 16), "int8-weight": (8, 32), "int8-dynamic": (8, 8)}
    # A variant that returned the model unchanged would render exactly what fp32 renders.
    cpu = torch.device("cpu")
    _, loaded_scene, model = rundir.load_trained(run_dir, None, cpu)
    evaluation = Evaluation.of(config, loaded_scene, cpu)
    rays = evaluation.rays(loaded_scene.i_test[0])
    with torch.no_grad():
        reference = evaluation.render(model, *rays)["rgb"]
        for variant in ("fp16", "int8-weight", "int8-dynamic"):
            quantized, dtype = ptq.quantized_copy(model, variant)
            difference = (evaluation.with_dtype(dtype).render(quantized, *rays)["rgb"].float() - reference).abs()
            assert 0 < difference.max() and difference.mean() < 0.01, variant


def test_bitnerf_runs_and_missing_runs_are_refused(tiny_config, tmp_path):
    config = replace(tiny_config, model="bitnerf", steps=2, eval_every=1000, ckpt_every=1000, video_frames=1)
    train.run(config)
    with pytest.raises(UserError, match="bitnerf run"):
        ptq.evaluate_variants(Path(config.out) / config.name, ["fp32"], None, torch.device("cpu"))
    result = subprocess.run([sys.executable, str(REPO / "ptq.py"), str(tmp_path / "nothing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: no checkpoint at")
    assert "Traceback" not in result.stderr


def int8_dynamic(module: nn.Module) -> nn.Module:
    import torchao.quantization

    bitnerf.quantize_(module, torchao.quantization.Int8DynamicActivationInt8WeightConfig(),
                      filter_fn=lambda m, name: isinstance(m, nn.Linear))
    return module


@pytest.mark.parametrize("in_features", [39, 63, 283, 319])
def test_zero_padding_a_layer_leaves_its_int8_dynamic_output_unchanged(in_features):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 64)
    padded = ptq.ZeroPaddedLinear(linear)
    assert padded.linear.in_features % 8 == 0 and padded.linear.in_features - in_features < 8
    assert not padded.linear.weight[:, in_features:].any()  # else the padding could move a weight row's scale
    x = torch.randn(300, in_features) * torch.rand(300, 1) * 4  # rows of different scales: per-row int8 scales
    assert torch.allclose(padded(x), linear(x), atol=1e-5)  # in fp32 the BLAS may sum in another order
    expected = int8_dynamic(nn.Sequential(linear))(x)  # integer sums: exactly
    assert torch.equal(int8_dynamic(nn.Sequential(padded))(x), expected)


def test_int8_dynamic_variant_runs_every_quantized_matmul_at_widths_of_multiples_of_8(monkeypatch):
    """The full topology (63-wide encoded point, the skip's 319 inputs and the view layer's 283 at width 256;
    here width 64): every quantized layer's int8 weight has rows and columns in multiples of 8, as CUDA's int8
    matmul needs (torchao falls back to an int32 matmul on the CPU otherwise), and the renders do not change."""
    torch.manual_seed(0)
    model = NeRF(2.0, 6.0, False, n_coarse=8, n_fine=8, depth=8, width=64, pos_freqs=10, dir_freqs=4,
                 skips=(4,), use_viewdirs=True).eval()
    quantized, _ = ptq.quantized_copy(model, "int8-dynamic")
    widths = {name: m.weight.shape for name, m in quantized.named_modules()
              if isinstance(m, nn.Linear) and bitnerf.is_ternary_layer(name)}
    assert {"coarse.layers.0.linear", "coarse.layers.5.linear", "coarse.view_layer.linear"} <= widths.keys()
    assert all(rows % 8 == 0 and columns % 8 == 0 for rows, columns in widths.values()), widths
    monkeypatch.setattr(ptq, "pad_quantized_inputs", lambda model: None)
    unpadded, _ = ptq.quantized_copy(model, "int8-dynamic")
    points, viewdirs = torch.rand(64, 3) * 2 - 1, nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        for field in ("coarse", "fine"):
            for a, b in zip(getattr(quantized, field)(points, viewdirs), getattr(unpadded, field)(points, viewdirs)):
                assert torch.equal(a, b)
