"""Post-training quantization of a trained NeRF: evaluation-only variants beside BitNeRF's training.

`python ptq.py runs/exp1` loads the run's checkpoint, quantizes a copy of the model per variant,
renders every test view and writes `runs/exp1/ptq.json`: per variant its weight bits and the input
bits of its quantized layers (measured on the variant, measured.py), the size of its saved weights,
and test PSNR and SSIM; a run that logged to W&B gets them in its W&B run too. exp4 trains ternary
weights for the same number of steps, so the two answer one question: quantize after training, or
train quantized?

The int8 variants quantize the layers BitNeRF quantizes (all but the density and colour heads), so
the comparison differs only in when and how finely weights are quantized. The int8 dynamic variant
zero-pads the inputs of layers whose width is not a multiple of 8 (ZeroPaddedLinear), which leaves
its results unchanged and keeps it on CUDA's int8 matmul.
"""

import copy
import io
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import bitnerf
import measured
import nerf
import rundir
import runlog
from bitnerf import quantize_
from devices import resolve_device
from evaluation import Evaluation
from files import write_json
from utils import OneLineParser, UserError, exit_on_user_error

# torchao's int8 schemes: per-output-channel symmetric int8 weights; the dynamic one also quantizes
# each input row to int8 at run time, as BitNeRF's forward does.
TORCHAO_CONFIGS = {
    "int8-weight": "Int8WeightOnlyConfig",
    "int8-dynamic": "Int8DynamicActivationInt8WeightConfig",
}
VARIANTS = ("fp32", "fp16", *TORCHAO_CONFIGS)
# cuBLAS's int8 matmul takes input widths in multiples of 8; torchao runs any other width as an int32
# matmul copied to the CPU (the encoded point's 39 or 63 columns, the skip layer's 319, the view layer's 283).
INT8_MATMUL_MULTIPLE = 8
WANDB_VALUES = ("weight_bits", "model_bytes", "psnr_test", "ssim_test")  # per variant, in the run's W&B summary


class ZeroPaddedLinear(nn.Module):
    """A Linear whose input is zero-padded to a multiple of `multiple` columns, its weight with zero columns there.

    Exact, also under int8 dynamic quantization: the zero columns change neither an input row's nor a
    weight row's absolute maximum (their int8 scales), and add nothing to the integer sums.
    """

    def __init__(self, linear: nn.Linear, multiple: int = INT8_MATMUL_MULTIPLE):
        super().__init__()
        self.pad = -linear.in_features % multiple
        self.linear = nn.Linear(linear.in_features + self.pad, linear.out_features, bias=linear.bias is not None,
                                device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[:, :linear.in_features] = linear.weight
            if linear.bias is not None:
                self.linear.bias.copy_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.pad(x, (0, self.pad)))


def pad_quantized_inputs(model: nn.Module) -> None:
    """Wrap, in place, every layer the int8 variants quantize whose input width is not a multiple of 8 in a
    ZeroPaddedLinear."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_name}.{name}" if parent_name else name
            if (isinstance(child, nn.Linear) and bitnerf.is_ternary_layer(path)
                    and child.in_features % INT8_MATMUL_MULTIPLE):
                setattr(parent, name, ZeroPaddedLinear(child))


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
    import torchao.quantization

    if variant == "int8-dynamic":
        pad_quantized_inputs(model)
    config = getattr(torchao.quantization, TORCHAO_CONFIGS[variant])()
    quantize_(model, config, filter_fn=lambda m, name: isinstance(m, nn.Linear) and bitnerf.is_ternary_layer(name))
    return model, None


def saved_bytes(model: nn.Module) -> int:
    """The size of the model's deployable state dict (nerf.deployable_state) as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(nerf.deployable_state(model), buffer)
    return buffer.getbuffer().nbytes


def evaluate_variants(run_dir: Path, variants, data: str | None, device: torch.device) -> list[dict]:
    config, scene, model = rundir.load_trained(run_dir, data, device)
    if config.model != "nerf":
        raise UserError(f"{run_dir} is a {config.model} run: post-training quantization applies to NeRF runs"
                        f" (exp1, exp2, exp3, exp5)")
    evaluation = Evaluation.of(config, scene, device)
    rows = []
    for variant in tqdm(variants, desc="ptq", disable=None):
        quantized, autocast_dtype = quantized_copy(model, variant)
        start = time.perf_counter()
        with torch.no_grad():
            variant_evaluation = evaluation.with_dtype(autocast_dtype)
            metrics = variant_evaluation.metrics(variant_evaluation.test_views(quantized))
        eval_s = round(time.perf_counter() - start, 2)
        # Measured on the variant itself: the weights it stores, and the inputs its quantized layers multiply.
        census = variant_evaluation.matmul_census(quantized)
        rows.append({
            "variant": variant, "weight_bits": measured.stored_weight_bits(quantized),
            "input_bits": min(layer.bits()["input_bits"] for name, layer in census.layers.items()
                              if bitnerf.is_ternary_layer(name)),
            "model_bytes": saved_bytes(quantized),
            "psnr_test": metrics["psnr_test"], "ssim_test": metrics["ssim_test"],
            "eval_s": eval_s,
        })
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
    print(f"{'variant':<14}{'weight bits':>12}{'model kB':>10}{'PSNR':>8}{'SSIM':>8}")
    for r in rows:
        print(f"{r['variant']:<14}{r['weight_bits']:>12}{r['model_bytes'] / 1e3:>10.0f}{r['psnr_test']:>8.2f}"
              f"{r['ssim_test']:>8.3f}")


if __name__ == "__main__":
    main()
