import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import write_scene
from test_report import write_run
from torch import nn

import bitnerf
import ptq
import rundir
import train
from converters import is_head
from evaluation import Evaluation
from files import write_json
from nerf import NeRF
from reporting.ptq import ptq_section
from utils import UserError

REPO = Path(__file__).resolve().parents[1]
# Each variant's measured weight bits and the input bits of its quantized layers: on the CPU torchao's weight-only
# layers dequantize and multiply in fp32; ternary weights count log2(3) bits, as BitNeRF's summary gives them.
MEASURED_BITS = {
    "fp32": (32, 32),
    "fp16": (16, 16),
    "int8-weight": (8, 32),
    "int8-dynamic": (8, 8),
    "int4-weight": (4, 32),
    "ternary": (1.58, 8),
}
WIDTHS = {
    "fp32": "fp32",
    "fp16": "fp16",
    "int8-weight": "int8",
    "int8-dynamic": "int8",
    "int4-weight": "int4",
    "ternary": "ternary",
}


def expected_layer(variant: str, name: str) -> tuple[str, int, int]:
    """The (format, weight bits, input bits) a variant's layer must measure: fp16 computes every layer in fp16, the
    others keep the heads fp32; the ternary variant's first layers are int8, as exp4's recipe trains them, its hidden
    layers 2-bit packed ternary weights (layers.json's bits) times int8 inputs."""
    if variant == "fp16":
        return "fp16", 16, 16
    if is_head(name) or variant == "fp32":
        return "fp32", 32, 32
    if variant == "ternary":
        return ("int8", 8, 8) if bitnerf.is_first_layer(name) else ("ternary", 2, 8)
    return {"int8-weight": ("int8", 8, 32), "int8-dynamic": ("int8", 8, 8), "int4-weight": ("int4", 4, 32)}[variant]


def test_post_training_quantization_keeps_quality_and_shrinks_the_weights(tiny_config, tmp_path):
    # 16x16 views keep the evaluation of six variants quick (CPU fp16 has no fast kernels).
    scene = write_scene(tmp_path / "small.npz", n=8, size=16)
    config = replace(tiny_config, data=str(scene), steps=100, eval_every=1000, ckpt_every=1000, video_frames=1)
    train.run(config)
    run_dir = Path(config.out) / config.name
    rows = {r["variant"]: r for r in ptq.evaluate_variants(run_dir, ptq.VARIANTS, None, torch.device("cpu"))}
    assert rows.keys() == set(ptq.VARIANTS) == set(MEASURED_BITS)
    fp32 = rows["fp32"]
    assert fp32["psnr_test"] == pytest.approx(json.loads((run_dir / "summary.json").read_text())["psnr_test"], abs=1e-3)
    assert rows["fp16"]["model_bytes"] < 0.6 * fp32["model_bytes"]
    assert rows["int8-weight"]["model_bytes"] < rows["fp16"]["model_bytes"]
    assert rows["ternary"]["model_bytes"] < rows["int8-weight"]["model_bytes"]  # packed 2 bits a weight
    for variant in ("fp16", "int8-weight", "int8-dynamic", "int4-weight"):
        assert abs(rows[variant]["psnr_test"] - fp32["psnr_test"]) < 1.0, variant
    # Measured on each variant: the weights it stores and what its quantized layers multiply.
    assert {v: (r["weight_bits"], r["input_bits"]) for v, r in rows.items()} == MEASURED_BITS
    assert {v: r["width"] for v, r in rows.items()} == WIDTHS
    # Every Linear layer of every variant, under the run's layers.json names (not a padded layer's inner Linear),
    # with its stored weight's format and bits, the bits of its inputs, and its weights' density.
    names = [layer["name"] for layer in rundir.read_layers(run_dir)]
    assert any(bitnerf.is_first_layer(name) for name in names) and any(is_head(name) for name in names)
    for variant, row in rows.items():
        assert list(row["layers"]) == names, variant
        for name, layer in row["layers"].items():
            assert list(layer) == ["weight_bits", "input_bits", "format", "weight_density"]
            assert (layer["format"], layer["weight_bits"], layer["input_bits"]) == expected_layer(variant, name), (
                variant,
                name,
            )
            assert 0 < layer["weight_density"] <= 1
    # Ternary weights are zero where |w| is under half the absmean: a third or so of them, none of the others'.
    ternary = rows["ternary"]["layers"]
    assert all(ternary[n]["weight_density"] < 0.9 for n in names if ternary[n]["format"] == "ternary")
    assert all(rows["fp32"]["layers"][n]["weight_density"] == 1.0 for n in names)
    # A variant that returned the model unchanged would render exactly what fp32 renders.
    cpu = torch.device("cpu")
    _, loaded_scene, model = rundir.load_trained(run_dir, None, cpu)
    evaluation = Evaluation.of(config, loaded_scene, cpu)
    rays = evaluation.rays(loaded_scene.i_test[0])
    with torch.no_grad():
        reference = evaluation.render(model, *rays)["rgb"]
        for variant in ("fp16", "int8-weight", "int8-dynamic", "int4-weight", "ternary"):
            quantized, dtype = ptq.quantized_copy(model, variant)
            difference = (evaluation.with_dtype(dtype).render(quantized, *rays)["rgb"].float() - reference).abs()
            assert 0 < difference.max(), variant
            if variant != "ternary":  # ternary after training is far coarser: how far is the report's question
                assert difference.mean() < 0.01, variant


def small_nerf(width: int = 64) -> NeRF:
    """The full topology (63-wide encoded point, the skip's 319 inputs, the view layer's 283 at width 256), narrower."""
    torch.manual_seed(0)
    return NeRF(
        2.0,
        6.0,
        False,
        n_coarse=8,
        n_fine=8,
        depth=8,
        width=width,
        pos_freqs=10,
        dir_freqs=4,
        skips=(4,),
        use_viewdirs=True,
    ).eval()


def effective_weights(layer: nn.Module) -> torch.Tensor:
    """The weights a layer multiplies by, read through its forward without its bias: fed one-hot rows (which a
    per-row int8 absmax quantizes to 127 and zeros, exactly), row k of the output is what input k is multiplied by."""
    with torch.no_grad():
        layer.bias.zero_()
        return layer(torch.eye(layer.in_features)).T


def test_ternary_variant_multiplies_by_bitnet_b158_absmean_ternary_weights():
    """BitNet b1.58's weights: scale = mean |W| of the layer, W_q = clamp(round(W / scale), -1, 1), W_q * scale. Each
    hidden layer of the ternary variant must multiply by exactly those weights, three values per layer; the first
    layers (exp4's recipe) by int8 weights per output channel, the heads by their fp32 weights."""
    model = small_nerf()
    quantized, dtype = ptq.quantized_copy(model, "ternary")
    assert dtype is None
    checked = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight, effective = module.weight.detach(), effective_weights(quantized.get_submodule(name))
        if is_head(name):
            assert torch.equal(effective, weight), name
        elif bitnerf.is_first_layer(name):
            scale = weight.abs().amax(dim=1, keepdim=True) / 127
            assert torch.allclose(effective, torch.round(weight / scale) * scale, rtol=1e-5, atol=1e-7), name
        else:
            scale = weight.abs().mean()
            expected = torch.clamp(torch.round(weight / scale), -1, 1) * scale
            assert torch.allclose(effective, expected, rtol=1e-5, atol=1e-7), name
            assert len(effective.unique()) == 3, name  # -scale, 0 and +scale
            checked.add(name)
    assert {"coarse.layers.1", "coarse.layers.5", "coarse.view_layer", "fine.layers.7"} <= checked


def test_int4_variant_stores_each_group_of_32_weights_in_16_levels():
    model = small_nerf()
    quantized, _ = ptq.quantized_copy(model, "int4-weight")
    for name, module in model.named_modules():
        if not (isinstance(module, nn.Linear) and bitnerf.is_ternary_layer(name)):
            continue
        layer = quantized.get_submodule(name)
        if module.in_features % ptq.INT4_GROUP_SIZE:  # the encoded point, the skip and the view layers: padded
            layer = layer.linear
        assert -8 <= layer.weight.qdata.min() and layer.weight.qdata.max() <= 7, name
        weight = layer.weight.dequantize()
        assert all(len(group.unique()) <= 16 for group in weight.reshape(-1, ptq.INT4_GROUP_SIZE)), name
        assert not weight[:, module.in_features :].any(), name
        error = (weight[:, : module.in_features] - module.weight).abs()
        assert 0 < error.max() <= module.weight.abs().max() / 7, name


def briefly_trained(tiny_config, tmp_path, **overrides):
    """A run of 2 steps on 16x16 views (its final evaluation quick), with overrides; its config."""
    scene = write_scene(tmp_path / "small.npz", n=6, size=16)
    config = replace(
        tiny_config, data=str(scene), steps=2, eval_every=1000, ckpt_every=1000, video_frames=1, **overrides
    )
    train.run(config)
    return config


def test_bitnerf_runs_and_missing_runs_are_refused(tiny_config, tmp_path):
    config = briefly_trained(tiny_config, tmp_path, model="bitnerf")
    with pytest.raises(UserError, match="bitnerf run"):
        ptq.evaluate_variants(Path(config.out) / config.name, ["fp32"], None, torch.device("cpu"))
    result = subprocess.run(
        [sys.executable, str(REPO / "ptq.py"), str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.startswith("error: no checkpoint at")
    assert "Traceback" not in result.stderr


def test_runs_trained_quantized_are_refused_in_one_line(tiny_config, tmp_path, capsys):
    config = briefly_trained(tiny_config, tmp_path, name="exp7", quantized_training="int8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        ptq.main([str(Path(config.out) / config.name), "--variants", "fp32", "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("error: ") and "--quantized-training int8" in stderr
    assert not (Path(config.out) / config.name / rundir.PTQ).exists()


def int8_dynamic(module: nn.Module) -> nn.Module:
    import torchao.quantization

    bitnerf.quantize_(
        module,
        torchao.quantization.Int8DynamicActivationInt8WeightConfig(),
        filter_fn=lambda m, name: isinstance(m, nn.Linear),
    )
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
    model = small_nerf()
    quantized, _ = ptq.quantized_copy(model, "int8-dynamic")
    widths = {
        name: m.weight.shape
        for name, m in quantized.named_modules()
        if isinstance(m, nn.Linear) and bitnerf.is_ternary_layer(name)
    }
    assert {"coarse.layers.0.linear", "coarse.layers.5.linear", "coarse.view_layer.linear"} <= widths.keys()
    assert all(rows % 8 == 0 and columns % 8 == 0 for rows, columns in widths.values()), widths
    monkeypatch.setattr(ptq, "pad_quantized_inputs", lambda model, multiple: None)
    unpadded, _ = ptq.quantized_copy(model, "int8-dynamic")
    points, viewdirs = torch.rand(64, 3) * 2 - 1, nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        for field in ("coarse", "fine"):
            for a, b in zip(getattr(quantized, field)(points, viewdirs), getattr(unpadded, field)(points, viewdirs)):
                assert torch.equal(a, b)


def ptq_rows(psnr: dict[str, float]) -> list[dict]:
    """ptq.json's rows with the given test PSNR per variant (its other fields made up)."""
    return [
        {
            "variant": variant,
            "width": WIDTHS[variant],
            "weight_bits": MEASURED_BITS[variant][0],
            "input_bits": MEASURED_BITS[variant][1],
            "model_bytes": 100_000,
            "psnr_test": value,
            "ssim_test": 0.8,
            "eval_s": 1.0,
            "layers": {},
        }
        for variant, value in psnr.items()
    ]


def test_report_puts_each_ptq_point_beside_its_twin_trained_quantized_over_the_seeds(tmp_path):
    """Seeds 0-2 of exp1 (with ptq.json), exp4 and exp7, and no exp2: each PTQ point's mean ± 95% t interval
    beside its twin's, and PTQ − QAT paired seed by seed."""
    runs_dir = tmp_path / "runs"
    ternary, int8_dynamic, fp16 = [20.0, 21.0, 22.0], [24.0, 24.5, 25.5], [25.0, 25.0, 25.0]
    bitnerf_psnr, int8_training = [22.0, 24.0, 23.0], [25.0, 25.0, 25.0]
    for seed in range(3):
        run_dir = write_run(runs_dir, f"exp1-seed{seed}", experiment="exp1", seed=seed, psnr=25.0)
        write_json(
            run_dir / rundir.PTQ,
            ptq_rows(
                {
                    "fp32": 25.0,
                    "fp16": fp16[seed],
                    "int8-weight": 24.9,
                    "int8-dynamic": int8_dynamic[seed],
                    "ternary": ternary[seed],
                }
            ),
        )
        write_run(
            runs_dir,
            f"exp4-seed{seed}",
            experiment="exp4",
            seed=seed,
            model="bitnerf",
            precision="ternary-int8",
            psnr=bitnerf_psnr[seed],
        )
        write_run(
            runs_dir, f"exp7-seed{seed}", experiment="exp7", seed=seed, precision="int8", psnr=int8_training[seed]
        )
    section = "\n".join(ptq_section(rundir.find_runs(runs_dir)))
    rows = {
        cells[1]: cells
        for cells in (
            [c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")
        )
        if len(cells) == 8
    }
    # Ternary: PTQ 21 ± t·1/√3 = 21 ± 2.48; BitNeRF 23 ± 2.48; PTQ − QAT per seed -2, -3, -1: -2 ± 2.48.
    assert rows["exp1 + ternary"] == [
        "ternary",
        "exp1 + ternary",
        "0, 1, 2",
        "21.00 ± 2.48",
        "exp4 (ternary-int8)",
        "0, 1, 2",
        "23.00 ± 2.48",
        "-2.00 ± 2.48 (not significant)",
    ]
    # int8: PTQ 24.67 ± 1.90, QAT 25 ± 0; per seed -1, -0.5, +0.5: -0.33 ± 1.90.
    assert rows["exp1 + int8-dynamic"] == [
        "int8",
        "exp1 + int8-dynamic",
        "0, 1, 2",
        "24.67 ± 1.90",
        "exp7 (int8)",
        "0, 1, 2",
        "25.00 ± 0.00",
        "-0.33 ± 1.90 (not significant)",
    ]
    assert rows["exp1 + fp16"][4:] == ["no exp2 run", "—", "n/a", "n/a"]
    assert "exp1 + int8-weight" not in rows  # int8 weights alone have no twin trained quantized
    assert "95% t interval" in section and "One seed" not in section
    # Every variant as measured, beside the runs that train quantized.
    assert "| exp1-seed0, ternary | after training (ptq.py) | 1.58 | 100 kB | 20.00 | 0.800 | 8 | ternary |" in section
    assert "| exp7-seed2 | during training (int8) | 32 | 448 kB | 25.00 | 0.800 | — | int8 |" in section

    # One seed: the values and the difference, no interval; a significant difference is not marked.
    one = tmp_path / "one"
    write_json(write_run(one, "exp1") / rundir.PTQ, ptq_rows({"ternary": 20.0, "fp16": 24.0}))
    write_run(one, "exp4", model="bitnerf", precision="ternary-int8", psnr=23.5)
    write_run(one, "exp2", precision="bf16-amp", psnr=24.25)
    section = "\n".join(ptq_section(rundir.find_runs(one)))
    assert "| ternary | exp1 + ternary | 0 | 20.00 | exp4 (ternary-int8) | 0 | 23.50 | -3.50 |" in section
    assert "| fp16 | exp1 + fp16 | 0 | 24.00 | exp2 (bf16-amp) | 0 | 24.25 | -0.25 |" in section
    assert "One seed" in section and "±" not in section
