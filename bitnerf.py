"""BitNeRF: NeRF's topology with BitNet b1.58 layers (ternary weights, int8 activations) via torchao.

Every layer is an `RMSNormLinear` (BitNet puts an RMSNorm before each quantized Linear, which keeps
the int8 activation scales well conditioned). `to_bitnet` then swaps the hidden Linear weights for
torchao's `BitNetTrainingLinearWeight`: the forward pass quantizes the latent fp32 weight to
{-1, 0, +1} times its absmean and each input row to int8 (absmax), multiplies in integers, and the
backward pass is straight-through to the latent weights. The output heads (density, colour) stay
in high precision, as torchao's BitNet recipe keeps the output head. Each field's first layer, which
multiplies the positional encoding, trains ternary as well (`first_layer="ternary"`), in int8
(`"int8"`: the forward pass of torchao's int8 mixed-precision training, int8 weights per output
channel times int8 input rows, with an exact backward) or in fp32 (`"fp32"`), as quantization practice keeps a
network's input layer in higher precision.

For deployment, `export_ternary` packs each ternary weight 2 bits per value with its fp32 scale, and each
int8 layer's weight (an int8 first layer's, or every hidden layer of a NeRF trained in int8) as int8 with its
per-channel scales; `load_ternary` rebuilds a model whose `IntegerLinear` layers compute exactly what the
trained model's layers computed, so its renders are bit-identical.

Every int8 matmul (the ternary layers', the int8 first layer's, the inference layers') runs the kernel
`use_int8_kernel` chooses from INT8_KERNELS: torchao's Triton kernel, or cuBLAS/CPU `torch._int_mm` as
it is or zero-padded to the shapes cuBLAS accepts.

Each training-time precision is a model converter (converters.py), which `build_model` applies; this module
registers the two built on its layers: BitNeRF's "bitnet" and the int8 training of NeRF, "int8", whose
every hidden layer is an `Int8TrainingLinear`.
"""

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._triton import has_triton

# torchao 0.18 registers an Enum with torch's pytree at import, which logs a deprecation warning on
# every start (and would make one-line error messages two lines); it is harmless, so silence it.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import torchao.prototype.quantized_training.bitnet as torchao_bitnet  # noqa: E402
from torchao import quantize_  # noqa: E402
from torchao.prototype.quantized_training import bitnet_training  # noqa: E402
from torchao.prototype.quantized_training.bitnet import (  # noqa: E402
    BitNetTrainingLinearWeight,
    get_bitnet_scale,
    quantize_bitnet_weight,
)
from torchao.prototype.quantized_training.int8 import quantize_int8_rowwise  # noqa: E402

import converters  # noqa: E402
from converters import Converter, hidden_layers_in, is_head  # noqa: E402
from dataset import scene_box  # noqa: E402
from files import atomic_write  # noqa: E402
from gpus import INT_MM_MULTIPLE  # noqa: E402
from nerf import NeRF, OccupancyGrid, deployable_state, load_deployable_state  # noqa: E402
from utils import UserError  # noqa: E402

# torchao's BitNet forward clips the int8 activation scale at this epsilon, its int8 matmul at the second;
# the inference layers (IntegerLinear) must match.
ACTIVATION_EPS = 1e-5
INT8_ACTIVATION_EPS = 1e-12
# cuBLAS's int8 GEMM (torch._int_mm on CUDA) refuses A with 16 rows or fewer (ATen's Blas.cpp: "self.size(0)
# needs to be greater than 16"), besides K and N that are not multiples of INT_MM_MULTIPLE.
INT_MM_MIN_ROWS = 17


def torchao_triton_mm(
    A: torch.Tensor, B: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor
) -> torch.Tensor:
    """torchao's Triton int8 kernel: an op registered for CUDA only, once its module is imported (use_int8_kernel)."""
    return torch.ops.torchao.scaled_int8_mm(A, B, row_scale, col_scale)


def int_mm(A: torch.Tensor, B: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """torchao's fallback without Triton: torch._int_mm, then the column scales (first, as torchao's) and the row's."""
    return torch._int_mm(A, B) * col_scale.view(-1) * row_scale.view(-1, 1)


def int_mm_padded(A: torch.Tensor, B: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """int_mm over A and B zero-padded to the shapes cuBLAS accepts (K and N multiples of INT_MM_MULTIPLE, at least
    INT_MM_MIN_ROWS rows), the product sliced back. Zeros add nothing to an integer dot product, so the result is
    int_mm's bit for bit; a matmul that needs no padding runs as it is."""
    (M, K), N = A.shape, B.shape[1]
    pad_m, pad_k, pad_n = max(INT_MM_MIN_ROWS - M, 0), -K % INT_MM_MULTIPLE, -N % INT_MM_MULTIPLE
    if pad_m or pad_k or pad_n:
        A = F.pad(A, (0, pad_k, 0, pad_m))
        B = F.pad(B.T, (0, pad_k, 0, pad_n)).T  # column-major, as torchao passes B: cuBLAS's int8 layout
    return torch._int_mm(A, B)[:M, :N] * col_scale.view(-1) * row_scale.view(-1, 1)


# The int8 matmuls BitNeRF can run, each (A int8 (M, K), B int8 (K, N), row_scale (M), col_scale (N or one)) ->
# (A @ B) * row_scale * col_scale; configs.INT8_KERNELS names them (and auto, which plan.py resolves).
INT8_KERNELS = {"torchao-triton": torchao_triton_mm, "int-mm": int_mm, "int-mm-padded": int_mm_padded}
# What torchao picked at import: its Triton kernel wherever Triton is usable, else torch._int_mm.
TORCHAO_INT8_KERNEL = "torchao-triton" if has_triton() else "int-mm"
# The kernel Int8Matmul and IntegerLinear call; use_int8_kernel rebinds it (with torchao's) for a run.
int8_mm = INT8_KERNELS[TORCHAO_INT8_KERNEL]


def use_int8_kernel(name: str, device: torch.device | None = None) -> None:
    """Make every int8 matmul of BitNeRF run INT8_KERNELS[name]: torchao's ternary layers, Int8Matmul and
    IntegerLinear. device: where the model runs (None: this machine's GPU if it has one). A kernel that cannot
    run there is a UserError naming the one to use."""
    global int8_mm
    if name not in INT8_KERNELS:
        raise UserError(f"--int8-kernel must be one of {', '.join(INT8_KERNELS)}, got {name!r}")
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if name == "torchao-triton":
        if not (on_cuda and has_triton()):
            fix = "int-mm-padded" if on_cuda else "int-mm"
            raise UserError(
                f"--int8-kernel torchao-triton needs a CUDA GPU of compute capability 7.0 or newer with"
                f" Triton, which this run does not have: use --int8-kernel {fix}"
            )
        # Registers torch.ops.torchao.scaled_int8_mm; torchao imports it only where Triton was usable at import.
        import torchao.prototype.quantized_training.int8_mm  # noqa: F401
    int8_mm = INT8_KERNELS[name]
    # torchao's BitNet forward looks its kernel up in this module global at every call, and torchao chose it by
    # has_triton() at import, not by what the GPU runs well (Triton's int8 dot has no tensor cores below
    # capability 8.0): the only place that replaces it.
    torchao_bitnet.scaled_int8_mm = int8_mm


class RMSNormLinear(nn.Module):
    """RMSNorm over the input features, then a Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.norm = nn.RMSNorm(in_features, eps=1e-6)
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def is_first_layer(name: str) -> bool:
    """Whether the Linear at this module path is a field's first layer (`layers.0`), the one that
    multiplies the positional encoding."""
    parts = name.split(".")
    return any(a == "layers" and b == "0" for a, b in zip(parts, parts[1:]))


def is_ternary_layer(name: str, quantize_heads: bool = False, first_layer: str = "ternary") -> bool:
    """Whether the Linear at this module path trains ternary weights: every one but the output heads
    (unless quantize_heads) and, unless first_layer is "ternary", but each field's first layer."""
    if first_layer != "ternary" and is_first_layer(name):
        return False
    return quantize_heads or not is_head(name)


def is_int8_layer(name: str, first_layer: str = "ternary") -> bool:
    """Whether the Linear at this module path trains int8 weights (first_layer="int8": the fields' first layers)."""
    return first_layer == "int8" and is_first_layer(name)


def bitnerf(**nerf_kwargs) -> NeRF:
    """A NeRF built from RMSNormLinear layers, not yet quantized (see to_bitnet)."""
    return NeRF(linear=RMSNormLinear, **nerf_kwargs)


def to_bitnet(model: nn.Module, quantize_heads: bool = False, first_layer: str = "ternary") -> nn.Module:
    """Swap the Linear weights that is_ternary_layer names for torchao's BitNet b1.58 training weights, and
    turn the Linears that is_int8_layer names into Int8TrainingLinear, in place."""
    quantize_(
        model,
        bitnet_training(),
        filter_fn=lambda m, name: isinstance(m, nn.Linear) and is_ternary_layer(name, quantize_heads, first_layer),
    )
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_int8_layer(name, first_layer):
            module.__class__ = Int8TrainingLinear
    return model


class Int8Matmul(torch.autograd.Function):
    """x @ weight.T with both quantized to int8 in the forward pass (as torchao's dynamic int8 matmul: input
    rows and weight rows absmax-scaled, through the chosen int8_mm) and an exact backward, straight-through to
    the fp32 weight.

    Ours, not torchao's Int8MixedPrecisionTrainingLinear: in torchao 0.18 its weight subclass's linear
    silently computes in fp32, and its module passes a config object that torch.compile cannot trace."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        x_i8, x_scale = quantize_int8_rowwise(x.reshape(-1, x.shape[-1]))
        weight_i8, weight_scale = quantize_int8_rowwise(weight)
        out = int8_mm(x_i8.contiguous(), weight_i8.contiguous().T, x_scale.contiguous(), weight_scale.contiguous())
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_weight = grad.reshape(-1, weight.shape[0]).T @ x.reshape(-1, weight.shape[1])
        return grad @ weight, grad_weight


class Int8TrainingLinear(nn.Linear):
    """A Linear that trains int8 (Int8Matmul): to_bitnet turns a field's first layer into one, convert_int8 every
    hidden layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = Int8Matmul.apply(x, self.weight.to(x.dtype))
        return out + self.bias if self.bias is not None else out


def convert_bitnet(model: nn.Module, config) -> nn.Module:
    return to_bitnet(model, config.quantize_heads, config.first_layer)


def bitnet_layer_format(name: str, config) -> str | None:
    if is_ternary_layer(name, config.quantize_heads, config.first_layer):
        return "ternary"
    return "int8" if is_int8_layer(name, config.first_layer) else None


def convert_int8(model: nn.Module, config) -> nn.Module:
    """int8 training (exp7): every hidden Linear becomes an Int8TrainingLinear, int8 weights per output channel
    times int8 input rows in the forward pass. Not torchao's int8_mixed_precision_training, whose weight subclass
    computes in fp32 in torchao 0.18. The density and colour heads stay fp32, as BitNeRF's do and as torchao's
    BitNet recipe keeps its output head: they are a handful of weights whose rounding errors land directly in the
    density and colour, so quantizing them would cost quality for next to no savings."""
    for name, module in model.named_modules():
        if type(module) is nn.Linear and not is_head(name):
            module.__class__ = Int8TrainingLinear
    return model


converters.register("bitnet", Converter(convert_bitnet, bitnet_layer_format))
converters.register("int8", Converter(convert_int8, hidden_layers_in("int8")))


def build_model(config, scene, device: torch.device, quantized: bool = True) -> NeRF:
    """The model an ExperimentConfig names on the scene's bounds: NeRF, or BitNeRF (the same topology from
    RMSNormLinear layers), converted to its training-time precision (converters.convert) unless quantized is False,
    as load_ternary wants it, with an occupancy grid over the scene's box if the config asks for one."""
    constructor = bitnerf if config.model == "bitnerf" else NeRF
    occupancy = (
        OccupancyGrid(
            torch.from_numpy(scene_box(scene)),
            config.occupancy_resolution,
            config.seed,
            config.occupancy_decay,
            config.occupancy_threshold,
        )
        if config.occupancy_grid
        else None
    )
    model = constructor(
        near=scene.near,
        far=scene.far,
        white_bkgd=scene.white_bkgd,
        n_coarse=config.n_coarse,
        n_fine=config.n_fine,
        depth=config.depth,
        width=config.width,
        pos_freqs=config.pos_freqs,
        dir_freqs=config.dir_freqs,
        skips=config.skips,
        use_viewdirs=config.use_viewdirs,
        occupancy=occupancy,
    ).to(device)
    return converters.convert(model, config) if quantized else model


def quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers that train ternary weights."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and isinstance(m.weight, BitNetTrainingLinearWeight)
    }


def int8_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers that train int8 weights."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8TrainingLinear)}


def ternarize(weight: BitNetTrainingLinearWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 ternary weight in {-1, 0, 1} and its fp32 absmean scale, exactly as torchao's forward computes them."""
    latent = weight._data.detach()
    scale = get_bitnet_scale(latent)
    return quantize_bitnet_weight(latent, scale), scale


def pack_ternary(values: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in {-1, 0, 1} four to a byte (2 bits each, stored as value + 1), row-major, zero-padded."""
    flat = (values.reshape(-1).to(torch.int16) + 1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_ones((-flat.numel()) % 4)])  # pad with the code of 0
    quads = flat.reshape(-1, 4)
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    codes = torch.stack([(packed >> shift) & 0b11 for shift in (0, 2, 4, 6)], dim=-1).reshape(-1)
    return (codes[: math.prod(shape)].to(torch.int8) - 1).reshape(shape)


class IntegerLinear(nn.Module):
    """An inference Linear over a fixed integer weight with its scale (one, or one per output channel): int8
    input rows times the weight in integers, then the two scales, as torchao's training forward computes it.
    activation_eps: the clip of the input rows' scales that the training forward used."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, activation_eps: float):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.activation_eps = activation_eps
        self.register_buffer("weight_int8", weight.to(torch.int8))
        self.register_buffer("scale", scale.float())
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_dims = x.shape[:-1]
        x_i8, row_scale = quantize_int8_rowwise(x.reshape(-1, self.in_features), eps=self.activation_eps)
        out = int8_mm(
            x_i8.contiguous(),
            self.weight_int8.T.contiguous(),
            row_scale.contiguous(),
            self.scale.to(x.dtype).contiguous(),
        )
        out = out.view(*batch_dims, self.out_features)
        return out + self.bias if self.bias is not None else out


def ternary_linear(ternary: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> IntegerLinear:
    """A ternary layer: weights in {-1, 0, 1} times one absmean scale; torchao's BitNet clips input scales at
    ACTIVATION_EPS."""
    return IntegerLinear(ternary, scale, bias, ACTIVATION_EPS)


def int8_linear(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> IntegerLinear:
    """An int8 layer (Int8Matmul's weights): a scale per output channel; quantize_int8_rowwise's default clip."""
    return IntegerLinear(weight, scale, bias, INT8_ACTIVATION_EPS)


def export_ternary(model: nn.Module, path: str | Path) -> int:
    """Write the deployable BitNeRF, or NeRF trained in int8: packed ternary weights with their scales, int8 weights
    with theirs, the other tensors as they are.

    Returns the file's size in bytes.
    """
    quantized, int8 = quantized_linears(model), int8_linears(model)
    packed = {}
    for name, module in quantized.items():
        ternary, scale = ternarize(module.weight)
        packed[name] = {"packed": pack_ternary(ternary), "shape": tuple(ternary.shape), "scale": scale}
    int8_weights = {}
    for name, module in int8.items():
        weight, scale = quantize_int8_rowwise(module.weight.detach())  # as the forward quantizes it
        int8_weights[name] = {"weight": weight, "scale": scale}
    latent_weights = {f"{name}.weight" for name in (*quantized, *int8)}
    state = {k: v.detach().clone() for k, v in deployable_state(model).items() if k not in latent_weights}
    atomic_write(path, lambda tmp: torch.save({"ternary": packed, "int8": int8_weights, "state": state}, tmp))
    return Path(path).stat().st_size


def load_ternary(path: str | Path, model: nn.Module) -> nn.Module:
    """Fill an unconverted model of the same configuration (build_model's quantized=False) from an export, with its
    ternary and int8 IntegerLinear layers."""
    export = torch.load(path, map_location="cpu", weights_only=True)
    load_deployable_state(model, export["state"], strict=False)  # the quantized weights follow
    for name in (*export["ternary"], *export.get("int8", {})):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        bias = old.bias.detach() if old.bias is not None else None
        if name in export["ternary"]:
            entry = export["ternary"][name]
            layer = ternary_linear(unpack_ternary(entry["packed"], tuple(entry["shape"])), entry["scale"], bias)
        else:
            entry = export["int8"][name]
            layer = int8_linear(entry["weight"], entry["scale"], bias)
        setattr(parent, child, layer.to(old.weight.device))
    return model
