"""Post-training quantization of a trained NeRF: evaluation-only variants beside the runs that train quantized.

`python ptq.py runs/exp1` loads the run's checkpoint, quantizes a copy of the model per variant,
renders every test view and writes `runs/exp1/ptq.json`: per variant the ladder width it belongs to, its
weight bits and the input bits of its quantized layers, and per Linear layer (by layers.json's names) the bits
of its stored weight and of its inputs, its format and its weight density, all measured on the variant
(measured.py); the size of its saved weights, and test PSNR and SSIM. A run that logged to W&B gets them in
its W&B run too. Each quantized width has a run that trains at it for the same number of steps (ternary:
exp4, int8: exp7, fp16: exp2), so the two answer one question: quantize after training, or train quantized?

The int8 and int4 variants quantize the layers BitNeRF quantizes (all but the density and colour heads), so
the comparison differs only in when and how finely weights are quantized. The ternary variant is exp4's
conversion (bitnerf.convert_bitnet with exp4's recipe) applied to the trained fp32 weights: BitNet b1.58's
absmean ternary weights and int8 absmax input rows in the hidden layers, the first layers int8, the heads fp32.
The int8 dynamic variant zero-pads the inputs of layers whose width is not a multiple of 8
(ZeroPaddedLinear), which leaves its results unchanged and keeps it on CUDA's int8 matmul; the int4 variant
pads to whole groups of 32.
"""

import copy
import io
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import bitnerf
import configs
import measured
import nerf
import rundir
import runlog
from bitnerf import quantize_
from devices import resolve_device
from evaluation import Evaluation
from files import write_json
from utils import OneLineParser, UserError, exit_on_user_error

# int4 weights in groups of this many input columns, each group with its own scale (torchao's CPU int4 needs a
# layer's width to be a whole number of groups: the others are zero-padded).
INT4_GROUP_SIZE = 32
# torchao's schemes: per-output-channel symmetric int8 weights (the dynamic one also quantizes each input row to
# int8 at run time, as BitNeRF's forward does), and per-group symmetric int4 weights (on any device: torchao's
# Int4WeightOnlyConfig needs CUDA), multiplied in the input's float dtype.
TORCHAO_CONFIGS = {  # each of torchao.quantization, given as ao
    "int8-weight": lambda ao: ao.Int8WeightOnlyConfig(),
    "int8-dynamic": lambda ao: ao.Int8DynamicActivationInt8WeightConfig(),
    "int4-weight": lambda ao: ao.IntxWeightOnlyConfig(
        weight_dtype=torch.int4, granularity=ao.PerGroup(INT4_GROUP_SIZE)
    ),
}
# cuBLAS's int8 matmul takes input widths in multiples of 8; torchao runs any other width as an int32 matmul
# copied to the CPU (the encoded point's 39 or 63 columns, the skip layer's 319, the view layer's 283).
INT8_MATMUL_MULTIPLE = 8
# The variants whose quantized layers take inputs zero-padded to a multiple of these many columns.
PADDED_INPUTS = {"int8-dynamic": INT8_MATMUL_MULTIPLE, "int4-weight": INT4_GROUP_SIZE}
# Each variant's width on the precision ladder: what its quantized layers store their weights in.
WIDTHS = {
    "fp32": "fp32",
    "fp16": "fp16",
    "int8-weight": "int8",
    "int8-dynamic": "int8",
    "int4-weight": "int4",
    "ternary": "ternary",
}
VARIANTS = tuple(WIDTHS)
# The run whose layer formats the ternary variant takes: BitNeRF trained with its own recipe.
BITNERF_TWIN = "exp4"
WANDB_VALUES = ("weight_bits", "model_bytes", "psnr_test", "ssim_test")  # per variant, in the run's W&B summary


class ZeroPaddedLinear(nn.Module):
    """A Linear whose input is zero-padded to a multiple of `multiple` columns, its weight with zero columns there.

    Exact, also under int8 dynamic quantization: the zero columns change neither an input row's nor a
    weight row's absolute maximum (their int8 scales), and add nothing to the integer sums. Under int4 weights in
    groups, they fill the last group without changing its absolute maximum (its scale), and stay zero.
    """

    def __init__(self, linear: nn.Linear, multiple: int = INT8_MATMUL_MULTIPLE):
        super().__init__()
        self.pad = -linear.in_features % multiple
        self.linear = nn.Linear(
            linear.in_features + self.pad,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[:, : linear.in_features] = linear.weight
            if linear.bias is not None:
                self.linear.bias.copy_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.pad(x, (0, self.pad)))


def pad_quantized_inputs(model: nn.Module, multiple: int = INT8_MATMUL_MULTIPLE) -> None:
    """Wrap, in place, every layer the int8 and int4 variants quantize whose input width is not a multiple of
    `multiple` in a ZeroPaddedLinear."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Linear) and bitnerf.is_ternary_layer(path) and child.in_features % multiple:
                setattr(parent, name, ZeroPaddedLinear(child, multiple))


def quantized_copy(model: nn.Module, variant: str) -> tuple[nn.Module, torch.dtype | None]:
    """A copy of model with the variant's weights, and the autocast dtype to evaluate it under."""
    model = copy.deepcopy(model)
    if variant == "fp32":
        return model, None
    if variant == "fp16":
        # fp16 weights computed in fp16, as an fp16 accelerator would (and as exp2 deploys); the
        # positional encoding's frequencies stay fp32, since sin(2^k x) needs fp32's mantissa.
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.half()
        return model, torch.float16
    if variant == "ternary":
        # exp4's own conversion of the trained weights: its forward ternarizes them (absmean) at every call.
        return bitnerf.convert_bitnet(model, configs.experiment(BITNERF_TWIN)), None
    import torchao.quantization  # here, after bitnerf has quieted what torchao logs at import

    if variant in PADDED_INPUTS:
        pad_quantized_inputs(model, PADDED_INPUTS[variant])
    quantize_(
        model,
        TORCHAO_CONFIGS[variant](torchao.quantization),
        filter_fn=lambda m, name: isinstance(m, nn.Linear) and bitnerf.is_ternary_layer(name),
    )
    return model, None


def saved_bytes(model: nn.Module) -> int:
    """The size of the model's deployable weights as the run's model file would hold them: ternary layers packed 2
    bits a weight (bitnerf.export_ternary, BitNeRF's model file), else its deployable state dict
    (nerf.deployable_state) as torch.save writes it."""
    if bitnerf.quantized_linears(model):
        with tempfile.TemporaryDirectory() as folder:
            return bitnerf.export_ternary(model, Path(folder) / "model.pt")
    buffer = io.BytesIO()
    torch.save(nerf.deployable_state(model), buffer)
    return buffer.getbuffer().nbytes


def measured_layers(model: nn.Module, census: measured.MatmulCensus) -> dict[str, dict]:
    """Per Linear layer in the order they ran, by the run's own layer names (layers.json's: a ZeroPaddedLinear's
    Linear by the layer it pads): the bits, format and density of the weight it stores over its own columns
    (measured.stored_weight_record) and the bits of the inputs it multiplied (the census)."""
    padded = {f"{name}.linear": (name, m.pad) for name, m in model.named_modules() if isinstance(m, ZeroPaddedLinear)}
    layers = {}
    for name, matmul in census.layers.items():
        layer_name, pad = padded.get(name, (name, 0))
        values = measured.stored_weight(model.get_submodule(name))
        record = measured.stored_weight_record(values[:, : values.shape[1] - pad])
        layers[layer_name] = {
            "weight_bits": record["weight_bits"],
            "input_bits": matmul.bits()["input_bits"],
            "format": record["format"],
            "weight_density": record["weight_density"],
        }
    return layers


def evaluate_variants(run_dir: Path, variants, data: str | None, device: torch.device) -> list[dict]:
    config, scene, model = rundir.load_trained(run_dir, data, device)
    if config.model != "nerf":
        raise UserError(
            f"{run_dir} is a {config.model} run: post-training quantization applies to NeRF runs"
            f" (exp1, exp2, exp3, exp5)"
        )
    if config.quantized_training != "none":
        raise UserError(
            f"{run_dir} trained with --quantized-training {config.quantized_training}, quantized already:"
            f" post-training quantization applies to NeRF runs trained in float (exp1, exp2, exp3, exp5)"
        )
    evaluation = Evaluation.of(config, scene, device)
    rows = []
    for variant in tqdm(variants, desc="ptq", disable=None):
        quantized, autocast_dtype = quantized_copy(model, variant)
        start = time.perf_counter()
        with torch.no_grad():
            variant_evaluation = evaluation.with_dtype(autocast_dtype)
            metrics = variant_evaluation.metrics(variant_evaluation.test_views(quantized))
        eval_s = round(time.perf_counter() - start, 2)
        # Measured on the variant itself: the weights it stores, and the inputs its layers multiply.
        layers = measured_layers(quantized, variant_evaluation.matmul_census(quantized))
        rows.append(
            {
                "variant": variant,
                "width": WIDTHS[variant],
                "weight_bits": measured.stored_weights_bits(layers.values()),
                "input_bits": min(
                    layer["input_bits"] for name, layer in layers.items() if bitnerf.is_ternary_layer(name)
                ),
                "model_bytes": saved_bytes(quantized),
                "psnr_test": metrics["psnr_test"],
                "ssim_test": metrics["ssim_test"],
                "eval_s": eval_s,
                "layers": layers,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="ptq.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished NeRF run, e.g. runs/exp1")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--data", help="the scene, if not where the run found it")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    with exit_on_user_error():
        args = parser.parse_args(argv)
        rows = evaluate_variants(args.run_dir, args.variants, args.data, resolve_device(args.device))
        write_json(args.run_dir / rundir.PTQ, rows)
        runlog.add_to_run(args.run_dir, "ptq", rows, ("variant",), WANDB_VALUES)
    print(f"{'variant':<14}{'width':>8}{'weight bits':>12}{'input bits':>11}{'model kB':>10}{'PSNR':>8}{'SSIM':>8}")
    for r in rows:
        print(
            f"{r['variant']:<14}{r['width']:>8}{r['weight_bits']:>12g}{r['input_bits']:>11}"
            f"{r['model_bytes'] / 1e3:>10.0f}{r['psnr_test']:>8.2f}{r['ssim_test']:>8.3f}"
        )


if __name__ == "__main__":
    main()
