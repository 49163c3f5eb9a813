"""Each training-time precision is a model converter (torchtitan's pattern): a `Converter` registered by name in
`CONVERTERS`, whose `convert(model, config)` swaps, in place, the Linear layers that train in its format. The
configuration chooses one (`converter_name`: BitNeRF's "bitnet", or `quantized_training`'s value) and
bitnerf.build_model applies it, the one place a model is converted. Adding a format is one converter, registered
under one new configs.QUANTIZED_TRAINING value.

Each converter lives beside the layers it is built on: bitnerf.py registers BitNeRF's "bitnet" and the int8
training "int8" (its own int8 matmul), this module torchao's float8 training ("fp8-tensorwise", "fp8-rowwise").
Every converter leaves the output heads in high precision. This module imports no project model module, so that
bitnerf.py can call it.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchao.float8 import Float8LinearConfig, convert_to_float8_training
from torchao.float8.float8_linear import Float8Linear, matmul_with_hp_or_float8_args

from gpus import FP8_MIN_CAPABILITY

# The layers every converter leaves in high precision: the heads that produce density and colour.
HIGH_PRECISION_LAYERS = ("density_head", "rgb_head", "output_head")
# torch._scaled_mm, the fp8 matmul torchao's float8 training runs, takes K and N only in multiples of this.
FP8_MATMUL_MULTIPLE = 16


def is_head(name: str) -> bool:
    """Whether the Linear at this module path is an output head (density, colour)."""
    return any(part in HIGH_PRECISION_LAYERS for part in name.split("."))


@dataclass(frozen=True)
class Converter:
    """A training-time precision as a model converter. convert(model, config) swaps, in place, the Linear layers
    that train in its format and returns the model; layer_format(name, config) names the format the Linear at that
    module path computes in once converted ("ternary", "int8", "fp8"), None for one left in high precision: what
    the census holds a run to (measured.check_layers)."""

    convert: Callable[[nn.Module, object], nn.Module]
    layer_format: Callable[[str, object], str | None]


CONVERTERS: dict[str, Converter] = {}


def register(name: str, converter: Converter) -> None:
    CONVERTERS[name] = converter


def hidden_layers_in(layer_format: str) -> Callable[[str, object], str | None]:
    """The layer_format of a converter that trains every hidden Linear in layer_format and leaves the heads."""
    return lambda name, config: None if is_head(name) else layer_format


def converter_name(config) -> str | None:
    """The converter config chooses: BitNeRF's own, or its quantized_training's (a configuration never asks for
    both, configs.ExperimentConfig refuses it); None for a float NeRF."""
    if config.model == "bitnerf":
        return "bitnet"
    return None if config.quantized_training == "none" else config.quantized_training


def convert(model: nn.Module, config) -> nn.Module:
    """model converted to config's training-time precision (its converter), or as it is for a float NeRF."""
    name = converter_name(config)
    return model if name is None else CONVERTERS[name].convert(model, config)


def layer_format(name: str, config) -> str | None:
    """The format the Linear at this module path trains in under config (Converter.layer_format), None for high
    precision."""
    converter = converter_name(config)
    return None if converter is None else CONVERTERS[converter].layer_format(name, config)


class PaddedFloat8Linear(Float8Linear):
    """torchao's Float8Linear for a layer whose in_features or out_features torch._scaled_mm cannot take (NeRF's
    K of 63, 319 and 283): the input and the weight zero-padded to multiples of FP8_MATMUL_MULTIPLE, the product
    sliced back. Zeros change no absolute maximum (the fp8 scales, per tensor or per row) and add nothing to a dot
    product, so the layer computes the unpadded layer's fp8 product. torchao's own pad_inner_dim cannot do it: it
    pads each matmul's inner dimension, and K is an outer one of the backward's grad_input matmul. The padding
    lives in the forward pass, so the weight keeps its shape in checkpoints and model files."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled():  # Float8Linear.forward's own autocast rule, so that padded layers keep it
            input = input.to(torch.get_autocast_gpu_dtype())
        pad_k, pad_n = -self.in_features % FP8_MATMUL_MULTIPLE, -self.out_features % FP8_MATMUL_MULTIPLE
        weight = F.pad(self.weight, (0, pad_k, 0, pad_n))
        output = matmul_with_hp_or_float8_args.apply(
            F.pad(input, (0, pad_k)), weight.t(), self.linear_mm_config, self.config
        )[..., : self.out_features]
        return output + self.bias.to(output.dtype) if self.bias is not None else output


def fp8_emulated(device: torch.device) -> bool:
    """Whether float8 training emulates its fp8 matmuls on device (fp32 matmuls of the fp8 values, fp8's numerics
    at fp32's speed): everywhere but on a GPU with fp8 tensor cores (capability 8.9 on), the only place where
    torchao's float8 training runs torch._scaled_mm's fp8 kernels."""
    return not (device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY)


def convert_fp8(model: nn.Module, config) -> nn.Module:
    """fp8 training (exp8): torchao's float8 training in the recipe quantized_training names (tensorwise or rowwise
    dynamic scaling) for every hidden Linear, the layers whose K or N torch._scaled_mm cannot take padded
    (PaddedFloat8Linear), emulated where the device has no fp8 matmul (fp8_emulated). The heads (1, 3 or 4 outputs)
    stay fp32, as the other converters leave them. pad_inner_dim pads the one dimension left, the rays of a batch,
    which is the inner dimension of the weight gradient's matmul."""
    recipe = Float8LinearConfig.from_recipe_name(config.quantized_training.removeprefix("fp8-"))
    device = next(model.parameters()).device
    fp8 = dataclasses.replace(recipe, emulate=fp8_emulated(device), pad_inner_dim=True)
    convert_to_float8_training(model, config=fp8, module_filter_fn=lambda module, name: not is_head(name))
    for module in model.modules():
        if type(module) is Float8Linear and (
            module.in_features % FP8_MATMUL_MULTIPLE or module.out_features % FP8_MATMUL_MULTIPLE
        ):
            module.__class__ = PaddedFloat8Linear
    return model


register("fp8-tensorwise", Converter(convert_fp8, hidden_layers_in("fp8")))
register("fp8-rowwise", Converter(convert_fp8, hidden_layers_in("fp8")))
