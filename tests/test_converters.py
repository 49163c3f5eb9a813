"""Training-time precisions as model converters (converters.CONVERTERS, applied by bitnerf.build_model): exp7's int8
and exp8's fp8 training, what the census measures of them, and their model files."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import write_scene
from torch import nn
from torchao.float8.float8_linear import Float8Linear

import bitnerf
import configs
import converters
import measured
import rundir
import train
from evaluation import Evaluation
from utils import UserError

BOUNDS = argparse.Namespace(near=2.0, far=6.0, white_bkgd=False)
HEADS = ("density_head", "rgb_head")


@pytest.fixture
def small_config(tmp_path):
    """exp1 on a 16x16 scene with one test view, a 2x32 MLP with view directions: a run of a few seconds. Its K are
    39 (the encoded point), 32 and 59 (the view layer): two that torch._scaled_mm cannot take."""
    return replace(
        configs.QUICK,
        data=str(write_scene(tmp_path / "scene.npz", n=6, size=16)),
        out=str(tmp_path / "runs"),
        wandb="disabled",
        depth=2,
        width=32,
        use_viewdirs=True,
        n_coarse=8,
        n_fine=8,
        steps=3,
        batch_rays=64,
        log_every=3,
        eval_every=3,
        ckpt_every=3,
        video_frames=1,
        eval_views=1,
        compile="off",
        occupancy_grid=False,
    )


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def is_head(name: str) -> bool:
    return name.split(".")[-1] in HEADS


def test_each_quantized_training_is_one_converter_that_build_model_applies_to_the_hidden_layers():
    assert set(converters.CONVERTERS) == {"bitnet", *configs.QUANTIZED_TRAINING} - {"none"}
    layer_class = {"int8": bitnerf.Int8TrainingLinear, "fp8-tensorwise": Float8Linear, "fp8-rowwise": Float8Linear}
    for quantized_training, cls in layer_class.items():
        config = replace(configs.QUICK, quantized_training=quantized_training, occupancy_grid=False, use_viewdirs=True)
        layers = linears(bitnerf.build_model(config, BOUNDS, torch.device("cpu")))
        assert len(layers) == 16
        for name, layer in layers.items():
            if is_head(name):  # the heads stay plain fp32 Linears
                assert type(layer) is nn.Linear and converters.layer_format(name, config) is None, name
            else:
                assert isinstance(layer, cls), name
                assert converters.layer_format(name, config) == quantized_training.split("-")[0], name
        unconverted = bitnerf.build_model(config, BOUNDS, torch.device("cpu"), quantized=False)
        assert all(type(layer) is nn.Linear for layer in linears(unconverted).values())
    with pytest.raises(UserError, match=r"^--quantized-training int8 converts NeRF's layers[^\n]*-training none$"):
        replace(configs.QUICK, model="bitnerf", quantized_training="int8")


def test_an_int8_training_layer_multiplies_int8_rows_by_int8_channels_and_has_the_exact_backward():
    torch.manual_seed(0)
    plain = nn.Linear(5, 3)
    layer = nn.Sequential(nn.Linear(5, 3))
    layer[0].load_state_dict(plain.state_dict())
    bitnerf.convert_int8(layer, None)
    assert type(layer[0]) is bitnerf.Int8TrainingLinear
    x = torch.randn(4, 5, requires_grad=True)
    out = layer(x)
    # By hand in float64: each input row and each weight row (output channel) scaled by its absmax / 127 and
    # rounded to integers in [-127, 127], their integer products, then both scales and the bias.
    w, xd = plain.weight.detach().double(), x.detach().double()
    x_scale, w_scale = xd.abs().amax(1, keepdim=True) / 127, w.abs().amax(1, keepdim=True) / 127
    x_int, w_int = torch.round(xd / x_scale), torch.round(w / w_scale)
    assert x_int.abs().max() == 127 and w_int.abs().max() == 127
    expected = (x_int @ w_int.T) * x_scale * w_scale.T + plain.bias.detach().double()
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, plain(x), rtol=1e-5, atol=1e-6)  # int8, not the fp32 product
    # The backward is a plain Linear's, over the fp32 weight and input (not straight-through quantized values).
    grad = torch.randn(4, 3)
    out.backward(grad)
    reference = x.detach().clone().requires_grad_()
    plain(reference).backward(grad)
    assert torch.allclose(x.grad, reference.grad, rtol=1e-6, atol=1e-7)
    assert torch.allclose(layer[0].weight.grad, plain.weight.grad, rtol=1e-6, atol=1e-7)


def read_layers(run_dir: Path) -> dict:
    return json.loads((run_dir / "layers.json").read_text())


def assert_model_file_renders_as_the_checkpoint(run_dir: Path, config) -> nn.Module:
    """The run's model file, loaded through rundir, renders the first test view bit-identically to the checkpoint's
    model (which the run's own final renders came from); returns the loaded model."""
    cpu = torch.device("cpu")
    saved, scene, trained = rundir.load_trained(run_dir, None, cpu)
    exported = rundir.load_model_file(run_dir, saved, scene, cpu)
    evaluation = Evaluation.of(saved, scene, cpu)
    view = int(scene.i_test[0])
    expected, got = (evaluation.render(model, *evaluation.rays(view)) for model in (trained, exported))
    assert torch.equal(got["rgb"], expected["rgb"]) and torch.equal(got["depth"], expected["depth"])
    return exported


def test_exp7_trains_every_hidden_layer_in_int8_and_its_int8_model_file_renders_bit_identically(small_config):
    config = configs.experiment("exp7", small_config)
    summary = train.run(config)
    run_dir = Path(config.out) / config.name
    assert (summary["precision"], summary["weight_bits"], summary["int8_kernel"], summary["emulated"]) == (
        "int8",
        8,
        "int-mm",
        None,
    )
    layers = read_layers(run_dir)
    assert (layers["precision"], layers["emulated"]) == ("int8", None)
    hidden = []
    for layer in layers["layers"]:
        bits = (layer["weight_bits"], layer["input_bits"], layer["format"])
        assert bits == ((32, 32, "fp32") if is_head(layer["name"]) else (8, 8, "int8")), layer["name"]
        hidden += [] if is_head(layer["name"]) else [layer["name"]]
    assert len(hidden) == 8  # 4 hidden layers (2 MLP layers, feature, view layer) in each field
    # The model file: int8 weights with a scale per output channel for every hidden layer, no fp32 copy of them.
    path = run_dir / "model_int8.pt"
    assert summary["model_bytes"] == path.stat().st_size and not (run_dir / "model.pt").exists()
    export = torch.load(path, weights_only=True)
    assert sorted(export["int8"]) == sorted(hidden) and not export["ternary"]
    shapes = {layer["name"]: (layer["out_features"], layer["in_features"]) for layer in layers["layers"]}
    for name, entry in export["int8"].items():
        assert entry["weight"].dtype == torch.int8 and tuple(entry["weight"].shape) == shapes[name]
        assert entry["scale"].dtype == torch.float32 and tuple(entry["scale"].shape) == (shapes[name][0],)
        assert f"{name}.weight" not in export["state"]
    exported = assert_model_file_renders_as_the_checkpoint(run_dir, config)
    assert sorted(n for n, m in exported.named_modules() if isinstance(m, bitnerf.IntegerLinear)) == sorted(hidden)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_exp8_trains_the_hidden_layers_in_fp8_emulated_on_the_cpu_and_stores_fp32_weights(small_config, recipe):
    config = replace(configs.experiment("exp8", small_config), quantized_training=f"fp8-{recipe}")
    summary = train.run(config)
    run_dir = Path(config.out) / config.name
    # The CPU has no fp8 matmul: the census saw fp8 operands multiplied by an fp32 matmul, torchao's emulation.
    assert (summary["precision"], summary["weight_bits"], summary["int8_kernel"], summary["emulated"]) == (
        "fp8",
        8,
        None,
        True,
    )
    layers = read_layers(run_dir)
    assert (layers["precision"], layers["emulated"]) == ("fp8", True)
    for layer in layers["layers"]:
        if is_head(layer["name"]):
            assert (layer["weight_bits"], layer["input_bits"], layer["format"]) == (32, 32, "fp32"), layer["name"]
        else:  # K padded to a multiple of 16 where torch._scaled_mm could not take it (39 -> 48, 59 -> 64); N 32, 16
            assert (layer["weight_bits"], layer["input_bits"], layer["format"]) == (8, 8, "fp8"), layer["name"]
            assert layer["matmul_k"] == -(-layer["in_features"] // 16) * 16, layer["name"]
            assert layer["matmul_n"] == layer["out_features"] == (16 if "view_layer" in layer["name"] else 32)
    # The model file is the fp32 state dict (torchao recomputes the fp8 weights from it every forward), and its size
    # is summary.model_bytes.
    path = run_dir / "model.pt"
    assert summary["model_bytes"] == path.stat().st_size
    weights = torch.load(path, weights_only=True)
    assert {v.dtype for k, v in weights.items() if k.endswith(".weight")} == {torch.float32}
    exported = assert_model_file_renders_as_the_checkpoint(run_dir, config)
    assert sum(isinstance(m, Float8Linear) for m in exported.modules()) == 8


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_on_tensor_cores_runs_scaled_mm_on_shapes_it_takes_and_the_census_says_not_emulated(monkeypatch, recipe):
    # As on a GPU of capability 8.9 or more: torchao runs torch._scaled_mm (the CPU has one, without CUDA's shape
    # rule, which the recorded calls are checked against: K and N multiples of 16).
    calls = []
    scaled_mm = torch._scaled_mm
    monkeypatch.setattr(
        torch, "_scaled_mm", lambda a, b, **kwargs: calls.append((*a.shape, *b.shape)) or scaled_mm(a, b, **kwargs)
    )
    monkeypatch.setattr(converters, "fp8_emulated", lambda device: False)
    # Width 40: out_features 40 and 20 (the view layer) need padding too. The fine pass's 7 rays x 12 samples are
    # no multiple of 16: the inner dimension of its weight gradient's matmul.
    config = replace(
        configs.QUICK,
        quantized_training=f"fp8-{recipe}",
        occupancy_grid=False,
        use_viewdirs=True,
        depth=2,
        width=40,
        n_coarse=8,
        n_fine=4,
        perturb=False,
    )
    torch.manual_seed(0)
    model = bitnerf.build_model(config, BOUNDS, torch.device("cpu"))
    origins, dirs = torch.randn(7, 3), nn.functional.normalize(torch.randn(7, 3), dim=-1)
    with measured.MatmulCensus(model) as census:
        out = model(origins, dirs)
    out["rgb"].sum().backward()
    assert calls and all(k % 16 == 0 and k2 == k and n % 16 == 0 for _, k, k2, n in calls), calls
    assert any(m % 16 for m, *_ in calls)  # the forward's rows, which need no padding, were not all aligned
    fp8 = [layer for name, layer in census.layers.items() if not is_head(name)]
    assert len(fp8) == 8 and all(layer.format == "fp8" and layer.op == "aten::_scaled_mm" for layer in fp8)
    assert census.emulated() is False and census.precision() == "fp8"


def test_padding_leaves_the_fp8_product_of_a_layer_as_it_was():
    torch.manual_seed(0)
    config = replace(configs.QUICK, quantized_training="fp8-tensorwise", occupancy_grid=False)
    for in_features, out_features in [(39, 40), (59, 20)]:
        linear = nn.Linear(in_features, out_features)
        padded = converters.convert_fp8(nn.Sequential(linear), config)[0]
        assert type(padded) is converters.PaddedFloat8Linear
        unpadded = Float8Linear.from_float(nn.Linear(in_features, out_features), config=padded.config)
        unpadded.load_state_dict(padded.state_dict())
        x = torch.randn(50, in_features)
        # Zeros change no scale and add nothing to the sums: equal up to fp32 summation order.
        assert torch.allclose(padded(x), unpadded(x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(padded(x), nn.functional.linear(x, linear.weight, linear.bias), rtol=1e-4, atol=1e-4)


def test_an_int8_layer_that_computes_in_fp32_stops_the_run(small_config, monkeypatch):
    config = configs.experiment("exp7", small_config)

    def fp32_forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x @ weight.T

    with monkeypatch.context() as patch:  # every int8 layer multiplies fp32
        patch.setattr(bitnerf.Int8Matmul, "forward", staticmethod(fp32_forward))
        with pytest.raises(
            SystemExit,
            match=r"^error: the training step ran fp32 with ternary weights in 0 and int8"
            r" weights in 0 of 12 layers, but exp7 asks for int8 with 0 and 8: ",
        ):
            train.run(config)
    convert = converters.CONVERTERS["int8"].convert

    def all_but_the_first_layer(model, config):  # one int8 layer left fp32: the run still looks int8 overall
        convert(model, config).coarse.layers[0].__class__ = nn.Linear
        return model

    monkeypatch.setitem(
        converters.CONVERTERS, "int8", replace(converters.CONVERTERS["int8"], convert=all_but_the_first_layer)
    )
    with pytest.raises(
        SystemExit,
        match=r"ran int8 with ternary weights in 0 and int8 weights in 7 of 12 layers, but"
        r" one_layer asks for int8 with 0 and 8",
    ):
        train.run(replace(config, name="one_layer"))


def test_an_fp8_run_whose_converter_was_not_applied_stops(small_config, monkeypatch):
    monkeypatch.setitem(
        converters.CONVERTERS,
        "fp8-tensorwise",
        replace(converters.CONVERTERS["fp8-tensorwise"], convert=lambda model, config: model),
    )
    with pytest.raises(
        SystemExit,
        match=r"^error: the training step ran fp32 with ternary weights in 0 and int8"
        r" weights in 0 of 12 layers, fp8 in 0, but exp8 asks for fp8 with 0 and 0,"
        r" fp8 in 8: ",
    ):
        train.run(configs.experiment("exp8", small_config))
