import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchao.prototype.quantized_training.bitnet as torchao_bitnet
from torch import nn

import bitnerf
import measured
import plan
import train
from nerf import NeRF
from utils import UserError

FIELD = dict(
    near=2.0, far=6.0, white_bkgd=True, n_coarse=8, n_fine=8, depth=3, width=32, pos_freqs=4, dir_freqs=2, skips=(0,)
)


def make_bitnerf(seed=0):
    torch.manual_seed(seed)
    return bitnerf.to_bitnet(bitnerf.bitnerf(**FIELD))


def test_bitnerf_shares_nerf_topology_with_rmsnorm_before_every_linear():
    torch.manual_seed(0)
    plain, bit = NeRF(**FIELD), bitnerf.bitnerf(**FIELD)
    plain_shapes = [(m.in_features, m.out_features) for m in plain.modules() if isinstance(m, nn.Linear)]
    bit_layers = [m for m in bit.modules() if isinstance(m, bitnerf.RMSNormLinear)]
    assert [(m.in_features, m.out_features) for m in bit_layers] == plain_shapes
    assert all(isinstance(m.norm, nn.RMSNorm) for m in bit_layers)


FIELD_LINEARS = ["layers.0", "layers.1", "layers.2", "density_head", "feature", "view_layer", "rgb_head"]


def test_only_hidden_layers_are_quantized():
    quantized = bitnerf.quantized_linears(make_bitnerf())
    # FIELD's 3 hidden layers, feature and view layers in each field; the density and colour heads stay.
    assert sorted(quantized) == sorted(
        f"{field}.{layer}.linear"
        for field in ("coarse", "fine")
        for layer in ("layers.0", "layers.1", "layers.2", "feature", "view_layer")
    )
    every = bitnerf.quantized_linears(bitnerf.to_bitnet(bitnerf.bitnerf(**FIELD), quantize_heads=True))
    assert sorted(every) == sorted(f"{field}.{layer}.linear" for field in ("coarse", "fine") for layer in FIELD_LINEARS)


@pytest.mark.parametrize("first_layer", ["int8", "fp32"])
def test_the_first_layer_can_train_in_int8_or_fp32(first_layer):
    model = bitnerf.to_bitnet(bitnerf.bitnerf(**FIELD), first_layer=first_layer)
    assert sorted(bitnerf.quantized_linears(model)) == sorted(
        f"{field}.{layer}.linear"
        for field in ("coarse", "fine")
        for layer in ("layers.1", "layers.2", "feature", "view_layer")
    )
    firsts = ["coarse.layers.0.linear", "fine.layers.0.linear"]
    assert sorted(bitnerf.int8_linears(model)) == (firsts if first_layer == "int8" else [])
    assert bitnerf.is_ternary_layer("coarse.layers.10.linear", first_layer=first_layer)
    assert not bitnerf.is_int8_layer("coarse.layers.10.linear", first_layer=first_layer)


def bitnet_layer(weight: list[list[float]]) -> nn.Linear:
    """A bias-free Linear with this weight, converted to torchao's BitNet training weight."""
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return bitnerf.to_bitnet(layer, quantize_heads=True)


def test_ternary_weights_and_output_of_a_2x3_layer_by_hand():
    layer = bitnet_layer([[0.9, -0.05, 0.3], [-1.2, 0.6, 0.0]])
    ternary, scale = bitnerf.ternarize(layer.weight)
    # absmean = (0.9 + 0.05 + 0.3 + 1.2 + 0.6 + 0) / 6; W / absmean = [[1.77, -0.10, 0.59], [-2.36, 1.18, 0]]
    # rounds to [[2, 0, 1], [-2, 1, 0]] and clips to +-1.
    absmean = 3.05 / 6
    assert scale.item() == pytest.approx(absmean)
    assert ternary.tolist() == [[1, 0, 1], [-1, 1, 0]] and ternary.dtype == torch.int8
    # The input row in int8: absmax 4 is 127, so [0.5, -1, 4] * 127/4 = [15.875, -31.75, 127] -> [16, -32, 127].
    # Integer products: [16 + 127, -16 - 32] = [143, -48], then times both scales.
    out = layer(torch.tensor([[0.5, -1.0, 4.0]]))
    expected = torch.tensor([[143.0, -48.0]]) * (4 / 127) * absmean
    assert torch.allclose(out, expected, rtol=1e-6)


def reference_bitnet_linear(x, weight, bias):
    """BitNet b1.58 in plain PyTorch: absmean ternary weights, per-row absmax int8 inputs."""
    scale = weight.abs().mean()
    ternary = torch.clamp(torch.round(weight / scale.clamp(min=1e-5)), -1, 1)
    row_scale = x.abs().amax(-1, keepdim=True) / 127
    x_int = torch.round(x / row_scale.clamp(min=1e-5))
    return (x_int @ ternary.T) * scale * row_scale + bias, ternary, x_int


def test_quantized_forward_matches_a_plain_reference_with_ternary_weights_and_int8_rows():
    layer = make_bitnerf().coarse.layers[2]
    linear = layer.linear
    x = torch.randn(64, 32)
    normed = layer.norm(x)
    expected, ternary, x_int = reference_bitnet_linear(normed, linear.weight._data, linear.bias)
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert set(ternary.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert x_int.abs().max() <= 127 and torch.equal(x_int, x_int.round())
    values, scale = bitnerf.ternarize(linear.weight)
    assert values.dtype == torch.int8 and torch.equal(values.float(), ternary)
    assert scale == pytest.approx(linear.weight._data.abs().mean().item())


def test_gradients_reach_the_latent_weights_straight_through():
    layer = make_bitnerf().coarse.layers[2]
    x = torch.randn(16, 32, requires_grad=True)
    layer(x).sum().backward()
    grad = layer.linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # Straight-through: the weight gradient is that of a plain Linear over the quantized inputs.
    normed = layer.norm(x).detach()
    row_scale = normed.abs().amax(-1, keepdim=True) / 127
    x_dequant = torch.round(normed / row_scale) * row_scale
    assert torch.allclose(grad, torch.ones(16, 32).T @ x_dequant, rtol=1e-4, atol=1e-4)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_packing_puts_four_codes_in_a_byte_lowest_bits_first():
    # Codes value + 1: [-1, 0, 1, 1 | 0, pad, pad, pad] -> [0, 1, 2, 2 | 1, 1, 1, 1].
    packed = bitnerf.pack_ternary(torch.tensor([-1, 0, 1, 1, 0], dtype=torch.int8))
    assert packed.tolist() == [0 | 1 << 2 | 2 << 4 | 2 << 6, 1 | 1 << 2 | 1 << 4 | 1 << 6] == [164, 85]
    assert bitnerf.unpack_ternary(torch.tensor([164, 85], dtype=torch.uint8), (5,)).tolist() == [-1, 0, 1, 1, 0]


def test_packing_round_trips():
    values = torch.randint(-1, 2, (7, 13), dtype=torch.int8)
    packed = bitnerf.pack_ternary(values)
    assert packed.dtype == torch.uint8 and packed.numel() == (7 * 13 + 3) // 4
    assert torch.equal(bitnerf.unpack_ternary(packed, (7, 13)), values)


@pytest.mark.parametrize("first_layer", ["ternary", "int8"])
def test_export_reloads_to_bit_identical_renders(tmp_path, first_layer):
    torch.manual_seed(0)
    model = bitnerf.to_bitnet(bitnerf.bitnerf(**FIELD), first_layer=first_layer)
    with torch.no_grad():  # make the latent weights differ from their initial scale
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    origins, dirs = torch.randn(50, 3), torch.randn(50, 3)
    expected = model(origins, dirs)
    size = bitnerf.export_ternary(model, tmp_path / "model_ternary.pt")
    torch.manual_seed(1)
    loaded = bitnerf.load_ternary(tmp_path / "model_ternary.pt", bitnerf.bitnerf(**FIELD)).eval()
    got = loaded(origins, dirs)
    assert torch.equal(got["rgb"], expected["rgb"]) and torch.equal(got["depth"], expected["depth"])
    export = torch.load(tmp_path / "model_ternary.pt", weights_only=True)
    for name, module in bitnerf.quantized_linears(model).items():
        assert export["ternary"][name]["packed"].numel() == -(-module.weight.numel() // 4)  # 2 bits a weight
    for name, module in bitnerf.int8_linears(model).items():  # a byte a weight, a scale per output channel
        assert export["int8"][name]["weight"].dtype == torch.int8
        assert export["int8"][name]["scale"].shape == (module.out_features,)
    assert len(export["int8"]) == (2 if first_layer == "int8" else 0)
    torch.save({k: v.detach().float() for k, v in NeRF(**FIELD).state_dict().items()}, tmp_path / "fp32.pt")
    assert size < (tmp_path / "fp32.pt").stat().st_size / 2


def test_bitnerf_run_learns_and_reports_ternary_bits(tiny_config):
    # compile auto, the default: BitNeRF's fields are compiled wherever a C++ compiler is found.
    config = replace(tiny_config, model="bitnerf", steps=300, eval_every=300, ckpt_every=300, compile="auto")
    summary = train.run(config)
    run_dir = Path(config.out) / config.name
    assert summary["model"] == "bitnerf" and summary["precision"] == "ternary-int8"
    assert summary["weight_bits"] == 1.58 and summary["compiled"] == (shutil.which("g++") is not None)
    assert summary["model_bytes"] == (run_dir / "model_ternary.pt").stat().st_size
    assert summary["psnr_test"] > 16.0
    if plan.compile_decision(config, plan.Target("cpu"))[0]:  # its first step compiled, which is not throughput
        assert summary["compile_s"] > 0
        assert summary["train_samples_per_s"] > config.batch_rays * config.samples_per_ray * 300 / summary["train_s"]
    layers = {layer["name"]: layer for layer in json.loads((run_dir / "layers.json").read_text())["layers"]}
    assert (layers["fine.layers.1.linear"]["weight_bits"], layers["fine.layers.1.linear"]["input_bits"]) == (2, 8)
    assert layers["fine.rgb_head.linear"]["weight_bits"] == 32
    # Every Linear of both fields (depth 2, view directions) in execution order, also when compiled fields
    # run their layers past the hooks.
    assert list(layers) == [
        f"{field}.{layer}.linear"
        for field in ("coarse", "fine")
        for layer in ("layers.0", "layers.1", "density_head", "feature", "view_layer", "rgb_head")
    ]


@pytest.mark.parametrize(
    "first_layer, weight_bits, input_bits, bytes_per_weight", [("fp32", 32, 32, 4), ("int8", 8, 8, 1 + 4 / 39)]
)  # int8: a 4-byte scale per 39 weights
def test_a_first_layer_in_int8_or_fp32_is_measured_and_counted_in_the_model_file(
    tiny_config, first_layer, weight_bits, input_bits, bytes_per_weight
):
    base = replace(tiny_config, model="bitnerf", steps=10, eval_every=10, ckpt_every=10, video_frames=1)
    kept = train.run(replace(base, name="kept", first_layer=first_layer))
    plain = train.run(replace(base, name="plain"))
    layers = {
        layer["name"]: layer for layer in json.loads((Path(base.out) / "kept" / "layers.json").read_text())["layers"]
    }
    first, second = layers["coarse.layers.0.linear"], layers["coarse.layers.1.linear"]
    assert (first["weight_bits"], first["input_bits"], second["weight_bits"]) == (weight_bits, input_bits, 2)
    # Its weights (39 inputs x 64 outputs in each field) replace 2-bit packed ones.
    extra = 2 * 39 * 64 * (bytes_per_weight - 0.25)
    assert kept["model_bytes"] - plain["model_bytes"] == pytest.approx(extra, rel=0.1)


def test_compile_auto_compiles_bitnerf_and_fp8_training_only(tiny_config, monkeypatch):
    cpu = plan.Target("cpu")
    compiles = lambda **changes: plan.compile_decision(replace(tiny_config, **changes), cpu)[0]  # noqa: E731
    monkeypatch.setattr(plan.shutil, "which", lambda name: "/usr/bin/" + name)
    assert compiles(model="bitnerf", compile="auto")
    assert not compiles(model="nerf", compile="auto")
    assert compiles(quantized_training="fp8-tensorwise", compile="auto")
    assert compiles(quantized_training="fp8-rowwise", compile="auto")
    assert not compiles(quantized_training="int8", compile="auto")
    assert not compiles(quantized_training="fp8-rowwise", compile="off")
    assert compiles(model="nerf", compile="on")
    assert not compiles(model="bitnerf", compile="off")
    monkeypatch.setattr(plan.shutil, "which", lambda name: None)  # no C++ compiler for inductor on the CPU
    assert not compiles(model="bitnerf", compile="auto")
    with pytest.raises(UserError, match=r"^--compile on cannot compile here: g\+\+ is not on the PATH; install one"):
        compiles(model="bitnerf", compile="on")


@pytest.fixture
def int8_kernel_restored(monkeypatch):
    """Undo use_int8_kernel after the test: it rebinds bitnerf's and torchao's kernel globals for the process."""
    monkeypatch.setattr(bitnerf, "int8_mm", bitnerf.int8_mm)
    monkeypatch.setattr(torchao_bitnet, "scaled_int8_mm", torchao_bitnet.scaled_int8_mm)


def test_padded_int_mm_runs_shapes_cublas_accepts_and_equals_int_mm_bit_for_bit(monkeypatch):
    shapes = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda A, B: shapes.append((*A.shape, B.shape[1])) or int_mm(A, B))
    torch.manual_seed(0)
    # BitNeRF's unaligned K (63 encoded inputs, 256 + 63 after the skip, 256 + 27 into the view layer); 5 rows
    # are fewer than cuBLAS takes, 13 columns no multiple of 8; one scale per column, or one in all (BitNet's).
    for (M, K, N), col_scale in [
        ((5, 63, 256), torch.rand(256)),
        ((40, 319, 13), torch.rand(())),
        ((17, 283, 128), torch.rand(128)),
    ]:
        A = torch.randint(-128, 128, (M, K), dtype=torch.int8)
        B = torch.randint(-128, 128, (N, K), dtype=torch.int8).T  # column-major, as torchao passes it
        row_scale = torch.rand(M)
        shapes.clear()
        padded = bitnerf.int_mm_padded(A, B, row_scale, col_scale)
        assert len(shapes) == 1 and shapes[0][0] >= 17 and shapes[0][1] % 8 == 0 and shapes[0][2] % 8 == 0
        assert torch.equal(padded, bitnerf.int_mm(A, B, row_scale, col_scale))
        assert torch.equal(padded, (A.double() @ B.double()).float() * col_scale.view(-1) * row_scale.view(-1, 1))


def int8_first_bitnerf() -> NeRF:
    torch.manual_seed(0)
    model = bitnerf.to_bitnet(bitnerf.bitnerf(**FIELD), first_layer="int8").eval()
    with torch.no_grad():  # latent weights off their initial scale, as after training
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


# The in_features of each field's int8 and ternary layers in FIELD: 27 encoded inputs (3 + 3·2·4), 32 + 27 after
# the skip, 32 twice, 32 + 15 encoded directions into the view layer.
INT8_MATMUL_KS = sorted([27, 59, 32, 32, 47] * 2)


def test_the_chosen_kernel_runs_every_int8_matmul_in_training_and_exported_layers(
    tmp_path, monkeypatch, int8_kernel_restored
):
    ks = []

    def counting_int_mm(A, B, row_scale, col_scale):
        ks.append(A.shape[1])
        return bitnerf.int_mm(A, B, row_scale, col_scale)

    monkeypatch.setitem(bitnerf.INT8_KERNELS, "int-mm-padded", counting_int_mm)
    bitnerf.use_int8_kernel("int-mm-padded")
    model = int8_first_bitnerf()
    origins, dirs = torch.randn(50, 3), torch.randn(50, 3)
    expected = model(origins, dirs)  # torchao's ternary layers and Int8Matmul
    assert sorted(ks) == INT8_MATMUL_KS
    bitnerf.export_ternary(model, tmp_path / "model_ternary.pt")
    loaded = bitnerf.load_ternary(tmp_path / "model_ternary.pt", bitnerf.bitnerf(**FIELD)).eval()
    ks.clear()
    got = loaded(origins, dirs)  # IntegerLinear
    assert sorted(ks) == INT8_MATMUL_KS
    assert torch.equal(got["rgb"], expected["rgb"])


def test_the_census_names_the_kernel_that_ran_and_padding_changes_no_output(int8_kernel_restored):
    model = int8_first_bitnerf()
    origins, dirs = torch.randn(50, 3), torch.randn(50, 3)
    with measured.MatmulCensus(model) as census:  # before any choice: what torchao picked (no Triton here)
        model(origins, dirs)
    assert bitnerf.TORCHAO_INT8_KERNEL == census.int8_kernel() == "int-mm"
    renders = {}
    for kernel in ("int-mm", "int-mm-padded"):
        bitnerf.use_int8_kernel(kernel)
        with measured.MatmulCensus(model) as census:
            renders[kernel] = model(origins, dirs)
        assert census.int8_kernel() == kernel
        # int-mm-padded pads K 27, 59 and 47 to multiples of 8 and runs K 32 as it is, still named int-mm-padded.
        int8_ks = sorted(layer.k for layer in census.layers.values() if layer.int8_kernel() is not None)
        assert int8_ks == (sorted([32, 64, 32, 32, 48] * 2) if kernel == "int-mm-padded" else INT8_MATMUL_KS)
    assert torch.equal(renders["int-mm"]["rgb"], renders["int-mm-padded"]["rgb"])
    assert torch.equal(renders["int-mm"]["depth"], renders["int-mm-padded"]["depth"])
    plain = NeRF(**FIELD)
    with measured.MatmulCensus(plain) as census:
        plain(origins, dirs)
    assert census.layers and census.int8_kernel() is None


def int_matmul(op: str, k: int, in_features: int) -> measured.LayerMatmul:
    return measured.LayerMatmul(torch.int8, torch.int8, 3, op=op, k=k, in_features=in_features)


def test_the_census_calls_layers_that_ran_different_kernels_mixed():
    census = measured.MatmulCensus(nn.Linear(1, 1))
    padded, unaligned = int_matmul("aten::_int_mm", 64, 63), int_matmul("aten::_int_mm", 63, 63)
    aligned, triton = int_matmul("aten::_int_mm", 32, 32), int_matmul("torchao::scaled_int8_mm", 63, 63)
    float_layer = measured.LayerMatmul(torch.float32, torch.float32, None, op="aten::addmm", k=63, in_features=63)
    for layers, kernel in [
        ((padded, aligned, float_layer), "int-mm-padded"),
        ((unaligned, aligned), "int-mm"),
        ((padded, unaligned), "mixed (int-mm, int-mm-padded)"),
        ((triton, aligned), "mixed (int-mm, torchao-triton)"),
        ((triton,), "torchao-triton"),
    ]:
        census.layers = {str(i): layer for i, layer in enumerate(layers)}
        assert census.int8_kernel() == kernel


def test_torchao_triton_where_it_cannot_run_is_one_line_naming_the_kernel_to_use(monkeypatch, int8_kernel_restored):
    kernel, torchao_kernel = bitnerf.int8_mm, torchao_bitnet.scaled_int8_mm
    with pytest.raises(UserError, match=r"^[^\n]*use --int8-kernel int-mm$"):  # on any machine: the model on the CPU
        bitnerf.use_int8_kernel("torchao-triton", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, the model on its CPU
    with pytest.raises(UserError, match=r"^[^\n]*use --int8-kernel int-mm$"):
        bitnerf.use_int8_kernel("torchao-triton")
    monkeypatch.setattr(bitnerf, "has_triton", lambda: False)  # a GPU without Triton (a P100)
    with pytest.raises(UserError, match=r"^[^\n]*use --int8-kernel int-mm-padded$"):
        bitnerf.use_int8_kernel("torchao-triton", torch.device("cuda"))
    with pytest.raises(UserError, match="must be one of torchao-triton, int-mm, int-mm-padded, got 'auto'"):
        bitnerf.use_int8_kernel("auto")
    assert bitnerf.int8_mm is kernel and torchao_bitnet.scaled_int8_mm is torchao_kernel
