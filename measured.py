"""What a run measures about itself rather than copies from its configuration: what its Linear layers
actually computed (the operand dtypes of their matrix multiplies, the distinct values of the integer
weights they multiplied by, the int8 kernel that ran, and whether an fp8 matmul ran on fp8 tensor cores or
emulated, recorded while the model runs), and whether its fields are compiled.

summary.json's precision and weight bits and layers.json's bits come from this record, not from the
configuration: a run whose autocast was lost, or a BitNeRF that never quantized, says so (and train.py
stops it, `MatmulCensus.check`). It costs one pass with every operator seen from Python, so a run
records one training step and the final census forward, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchao.float8.float8_training_tensor import Float8TrainingTensor

import bitnerf  # noqa: F401  (registers the converters built on its layers, which converters.layer_format looks up)
import converters
import precision
from gpus import INT_MM_MULTIPLE

# A ternary weight takes at most these many distinct values: -1, 0 and +1 (times the layer's scale).
TERNARY_VALUES = 3
# The ops an integer matmul runs as, by the bitnerf.INT8_KERNELS kernel they belong to: torchao's Triton op, and
# torch._int_mm, which int-mm and int-mm-padded both run (told apart by the K it ran with).
TORCHAO_TRITON_OP = "torchao::scaled_int8_mm"
INT_MM_OP = "aten::_int_mm"
# The fp8 matmul on fp8 tensor cores; torchao's emulation runs an fp32 aten::mm over the fp8 values instead.
SCALED_MM_OP = "aten::_scaled_mm"
# What a layer computes in (layers.json's format), by its operands' dtype; integer weights are ternary or int8.
FLOAT_FORMATS = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float8_e4m3fn: "fp8",
    torch.float8_e5m2: "fp8",
}
# The formats of quantized layers, each with the precision summary.json gives a run that has such layers, the
# narrowest first: ternary layers make a BitNeRF whatever else it has (its int8 first layers).
QUANTIZED_PRECISIONS = {"ternary": "ternary-int8", "int8": "int8", "fp8": "fp8"}


@dataclass
class LayerMatmul:
    """One Linear layer's first matrix multiply as it ran: its input, weight and the layer's output dtype, and
    the op with the K it multiplied over (the layer's in_features, or more where the kernel padded it)."""

    input_dtype: torch.dtype
    weight_dtype: torch.dtype
    weight_values: int | None  # distinct values of an integer weight operand; None for a float one
    output_dtype: torch.dtype | None = None
    op: str | None = None  # the schema name, e.g. aten::_int_mm; for fp8 operands the kernel torchao ran them with
    k: int | None = None
    in_features: int | None = None
    n: int | None = None  # the output columns it multiplied: the layer's out_features, or more where padded

    @property
    def ternary(self) -> bool:
        return self.weight_values is not None and self.weight_values <= TERNARY_VALUES

    @property
    def format(self) -> str:
        """What the layer computed in: ternary or int8 for integer weights, else its operands' float format (fp8,
        fp32, fp16, bf16)."""
        if self.ternary:
            return "ternary"
        if not self.weight_dtype.is_floating_point:
            return "int8"
        return FLOAT_FORMATS.get(self.input_dtype, str(self.input_dtype).removeprefix("torch."))

    @property
    def emulated(self) -> bool | None:
        """For an fp8 matmul, whether it was emulated (an fp32 matmul over the fp8 values) rather than run by
        torch._scaled_mm; None for others."""
        return self.op != SCALED_MM_OP if self.format == "fp8" else None

    def int8_kernel(self) -> str | None:
        """The bitnerf.INT8_KERNELS kernel this matmul ran, None for a float one: torchao's Triton op, or
        torch._int_mm over the layer's own K (int-mm) or a zero-padded one (int-mm-padded)."""
        if self.op == TORCHAO_TRITON_OP:
            return "torchao-triton"
        if self.op == INT_MM_OP:
            return "int-mm-padded" if self.k > self.in_features else "int-mm"
        return None

    def bits(self) -> dict[str, int]:
        """layers.json's bits: an integer weight of three values is stored 2-bit packed, others as they ran."""
        weight_bits = precision.TERNARY_WEIGHT_BITS if self.ternary else dtype_bits(self.weight_dtype)
        return {
            "weight_bits": weight_bits,
            "input_bits": dtype_bits(self.input_dtype),
            "output_bits": dtype_bits(self.output_dtype),
        }

    def record(self) -> dict:
        """layers.json's measured fields of the layer: its bits, its format (int8 and fp8 both have 8 bits), and
        the K and N its matmul ran with (more than in_features and out_features where a kernel zero-padded them)."""
        return {**self.bits(), "format": self.format, "matmul_k": self.k, "matmul_n": self.n}


def dtype_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


def is_matmul(func) -> bool:
    """Whether an op is a matrix multiply: aten mm, addmm, _int_mm, _scaled_mm, torchao's int8 kernels (every op
    whose name ends in "mm")."""
    return func.__name__.split(".")[0].endswith("mm")


def operand_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul operand holds its values in: a torchao float8 tensor's fp8 data (the tensor itself
    reports the dtype it was cast from), else the tensor's own."""
    return tensor._data.dtype if isinstance(tensor, Float8TrainingTensor) else tensor.dtype


class Float8Kernel(TorchDispatchMode):
    """While active inside a matmul of torchao float8 tensors, records the matmul ops their implementation runs:
    torch._scaled_mm on the fp8 data, or, emulated, an fp32 mm of the values cast up. It hands the float8 op itself
    on to the tensor subclass (NotImplemented), which runs its implementation with this mode still active."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, Float8TrainingTensor) for t in types):
            return NotImplemented
        if is_matmul(func):
            self.ops.append(func._schema.name)
        return func(*args, **(kwargs or {}))


class MatmulCensus(TorchDispatchMode):
    """While active (`with MatmulCensus(model) as census:`), records each Linear layer's first matrix
    multiply (is_matmul) with its op, K and N in `layers`, by module name in the order they ran. A matmul of
    torchao float8 tensors reaches it as one aten mm whose operands report their original dtype: it records their
    fp8 data's dtype and, as the op, the kernel the float8 tensors ran (Float8Kernel), which tells fp8 tensor cores
    from emulation. Compiled fields run eagerly meanwhile (a compiled graph would run past the hooks).
    `enabled=False` records nothing and costs nothing."""

    def __init__(self, model: nn.Module, enabled: bool = True):
        super().__init__()
        self.model, self.enabled = model, enabled
        self.layers: dict[str, LayerMatmul] = {}
        self.current: str | None = None
        self.handles, self.eager = [], None

    def __enter__(self):
        if not self.enabled:
            return self
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_pre_hook(lambda m, args, name=name: self.enter(name)))
                self.handles.append(module.register_forward_hook(lambda m, args, out, name=name: self.leave(name, out)))
        self.eager = torch.compiler.set_stance("force_eager")
        self.eager.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        if not self.enabled:
            return
        super().__exit__(*exc)
        self.eager.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def enter(self, name: str) -> None:
        self.current = name

    def leave(self, name: str, output: torch.Tensor) -> None:
        if name in self.layers and self.layers[name].output_dtype is None:
            self.layers[name].output_dtype = output.dtype
        self.current = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.current is None or self.current in self.layers or not is_matmul(func):
            return func(*args, **(kwargs or {}))
        x, w = [a for a in args if isinstance(a, torch.Tensor) and a.ndim == 2][:2]  # addmm's bias is 1-D
        op = func._schema.name
        if isinstance(x, Float8TrainingTensor):
            with Float8Kernel() as kernel:
                out = func(*args, **(kwargs or {}))
            op = kernel.ops[0]
        else:
            out = func(*args, **(kwargs or {}))
        w_dtype = operand_dtype(w)
        values = None if w_dtype.is_floating_point else torch.unique(w).numel()
        self.layers[self.current] = LayerMatmul(
            operand_dtype(x),
            w_dtype,
            values,
            op=op,
            k=x.shape[1],
            in_features=self.model.get_submodule(self.current).in_features,
            n=w.shape[1],
        )
        return out

    def precision(self) -> str:
        """summary.json's precision: the QUANTIZED_PRECISIONS of the narrowest quantized format any layer computed
        in (ternary-int8, int8, fp8), else the float dtype every layer's matmul ran in (fp32, fp16-amp, bf16-amp);
        'mixed (...)' otherwise."""
        formats = {layer.format for layer in self.layers.values()}
        quantized = [name for layer_format, name in QUANTIZED_PRECISIONS.items() if layer_format in formats]
        if quantized:
            return quantized[0]
        kinds = sorted(
            {f"{layer_format}-amp" if layer_format in ("fp16", "bf16") else layer_format for layer_format in formats}
        )
        return kinds[0] if len(kinds) == 1 else f"mixed ({', '.join(kinds)})"

    def emulated(self) -> bool | None:
        """summary.json's emulated: whether the fp8 matmuls ran emulated (any of them: the run's speed is then not
        fp8's), None where no layer ran one."""
        emulated = [layer.emulated for layer in self.layers.values() if layer.emulated is not None]
        return any(emulated) if emulated else None

    def int8_kernel(self) -> str | None:
        """summary.json's int8_kernel: the bitnerf.INT8_KERNELS kernel the integer matmuls ran, None where no layer
        ran one, 'mixed (...)' where layers ran different ones. int-mm-padded leaves a K that is already a multiple
        of gpus.INT_MM_MULTIPLE as it is, so a layer of such a K that ran int-mm does not contradict it."""
        layers = [layer for layer in self.layers.values() if layer.int8_kernel() is not None]
        kernels = {layer.int8_kernel() for layer in layers}
        if "int-mm-padded" in kernels and all(
            layer.k % INT_MM_MULTIPLE == 0 for layer in layers if layer.int8_kernel() == "int-mm"
        ):
            kernels.discard("int-mm")
        if not kernels:
            return None
        return kernels.pop() if len(kernels) == 1 else f"mixed ({', '.join(sorted(kernels))})"

    def weight_bits(self) -> float:
        """summary.json's weight_bits: log2(3) where layers multiplied ternary weights, else the narrowest
        weight operand's width."""
        if any(layer.ternary for layer in self.layers.values()):
            return precision.TERNARY_INFORMATION_BITS
        return min(dtype_bits(layer.weight_dtype) for layer in self.layers.values())

    def check(self, config, dtype: torch.dtype | None, what: str) -> None:
        """check_layers() of this record."""
        if not self.layers:
            raise SystemExit(
                f"error: {what} ran no Linear layer's matrix multiply: nothing to measure its precision by"
            )
        layers = [{"name": name, **layer.record()} for name, layer in self.layers.items()]
        check_layers({"precision": self.precision(), "layers": layers}, config, dtype, what)


def check_layers(layers: dict, config, dtype: torch.dtype | None, what: str) -> None:
    """Stop the run (one line, exit code 1) when what ran is not what config asks for. layers is a layers.json
    census (Evaluation.layers) or MatmulCensus.check's record in its form: the measured precision name, and the
    format each layer that ran computed in. The layers in a quantized format (ternary, int8, fp8) must be those
    that config's converter trains in it (converters.layer_format); a float NeRF has none."""
    names = [layer["name"] for layer in layers["layers"]]
    measured, expected = layers["precision"], precision.precision_name(config, dtype)
    ran = {
        layer_format: sorted(layer["name"] for layer in layers["layers"] if layer["format"] == layer_format)
        for layer_format in QUANTIZED_PRECISIONS
    }
    asked = {
        layer_format: sorted(name for name in names if converters.layer_format(name, config) == layer_format)
        for layer_format in QUANTIZED_PRECISIONS
    }
    if measured != expected or ran != asked:
        # fp8 layers are named only where a run has or wants them, so that other runs' message stays as it was.
        fp8_ran, fp8_asked = (
            f", fp8 in {len(layers_in['fp8'])}" if ran["fp8"] or asked["fp8"] else "" for layers_in in (ran, asked)
        )
        raise SystemExit(
            f"error: {what} ran {measured} with ternary weights in {len(ran['ternary'])} and int8 weights"
            f" in {len(ran['int8'])} of {len(names)} layers{fp8_ran}, but {config.name} asks for"
            f" {expected} with {len(asked['ternary'])} and {len(asked['int8'])}{fp8_asked}: the run does"
            f" not compute what it would report (a bug in the training code)"
        )


def compiled(model: nn.Module) -> bool:
    """summary.json's compiled: whether the radiance fields are torch.compile'd modules (nn.Module.compile
    gives a module a compiled call; an eager one has none)."""
    fields = [field for field in (model.coarse, model.fine) if field is not None]
    return all(getattr(field, "_compiled_call_impl", None) is not None for field in fields)


# The integer formats a stored weight can take beyond ternary, narrowest first, with the signed bits their values
# fit in: torchao keeps int4 values unpacked in int8 tensors, so the values, not the dtype, tell the two apart.
INTEGER_FORMATS = {"int4": 4, "int8": 8}


def stored_weight(module: nn.Linear) -> torch.Tensor:
    """The weight values a Linear layer multiplies by, as a deployment of it stores them: BitNeRF's ternary weight
    (bitnerf.ternarize), an int8 training layer's int8 weight (as bitnerf.export_ternary stores it), a torchao
    quantized weight's integer data (qdata), else the float weight itself."""
    weight = module.weight
    if isinstance(weight, bitnerf.BitNetTrainingLinearWeight):
        return bitnerf.ternarize(weight)[0]
    if isinstance(module, bitnerf.Int8TrainingLinear):
        return bitnerf.quantize_int8_rowwise(weight.detach())[0]
    return getattr(weight, "qdata", weight).detach()


def signed_bits(values: torch.Tensor) -> int:
    """The bits of the narrowest two's-complement integer that holds every one of values."""
    low, high = int(values.min()), int(values.max())
    return max(high.bit_length(), (-low - 1).bit_length()) + 1


def stored_weight_record(values: torch.Tensor) -> dict:
    """A stored weight's (stored_weight's) format, measured from its values: ternary (at most TERNARY_VALUES
    distinct integers), else the narrowest INTEGER_FORMATS its integers fit, else its float dtype's (FLOAT_FORMATS);
    the bits each value is stored in (ternary 2-bit packed, as LayerMatmul.bits gives it); and its density, the
    fraction of its values that are nonzero (layers.json's weight_density)."""
    if values.is_floating_point():
        weight_format, bits = FLOAT_FORMATS.get(values.dtype, str(values.dtype)), dtype_bits(values.dtype)
    elif torch.unique(values).numel() <= TERNARY_VALUES:
        weight_format, bits = "ternary", precision.TERNARY_WEIGHT_BITS
    else:
        needed = signed_bits(values)
        weight_format, bits = next(
            ((name, width) for name, width in INTEGER_FORMATS.items() if needed <= width),
            (str(values.dtype).removeprefix("torch."), dtype_bits(values.dtype)),
        )
    density = (values != 0).sum().item() / values.numel()
    return {"format": weight_format, "weight_bits": bits, "weight_density": round(density, 4)}


def stored_weights_bits(records) -> float:
    """A model's weight bits from its layers' stored_weight_records: log2(3) where a layer stores ternary weights,
    as MatmulCensus.weight_bits gives a BitNeRF, else the narrowest layer's."""
    records = list(records)
    if any(record["format"] == "ternary" for record in records):
        return precision.TERNARY_INFORMATION_BITS
    return min(record["weight_bits"] for record in records)
