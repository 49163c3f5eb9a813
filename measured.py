"""What a run measures about itself rather than copies from its configuration: what its Linear layers
actually computed (the operand dtypes of their matrix multiplies, the distinct values of the integer
weights they multiplied by and the int8 kernel that ran, recorded while the model runs), and whether its
fields are compiled.

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

import bitnerf
import precision
from gpus import INT_MM_MULTIPLE

# A ternary weight takes at most these many distinct values: -1, 0 and +1 (times the layer's scale).
TERNARY_VALUES = 3
INT8_WEIGHT_BITS = 8
# The ops an integer matmul runs as, by the bitnerf.INT8_KERNELS kernel they belong to: torchao's Triton op, and
# torch._int_mm, which int-mm and int-mm-padded both run (told apart by the K it ran with).
TORCHAO_TRITON_OP = "torchao::scaled_int8_mm"
INT_MM_OP = "aten::_int_mm"


@dataclass
class LayerMatmul:
    """One Linear layer's first matrix multiply as it ran: its input, weight and the layer's output dtype, and
    the op with the K it multiplied over (the layer's in_features, or more where the kernel padded it)."""

    input_dtype: torch.dtype
    weight_dtype: torch.dtype
    weight_values: int | None  # distinct values of an integer weight operand; None for a float one
    output_dtype: torch.dtype | None = None
    op: str | None = None  # the schema name, e.g. aten::_int_mm
    k: int | None = None
    in_features: int | None = None

    @property
    def ternary(self) -> bool:
        return self.weight_values is not None and self.weight_values <= TERNARY_VALUES

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
        return {"weight_bits": weight_bits, "input_bits": dtype_bits(self.input_dtype),
                "output_bits": dtype_bits(self.output_dtype)}


def dtype_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


class MatmulCensus(TorchDispatchMode):
    """While active (`with MatmulCensus(model) as census:`), records each Linear layer's first matrix
    multiply (aten mm, addmm, _int_mm, torchao's int8 kernels: every op whose name ends in "mm") with its op
    and K in `layers`, by module name in the order they ran. Compiled fields run eagerly meanwhile (a compiled
    graph would run past the hooks). `enabled=False` records nothing and costs nothing."""

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
        out = func(*args, **(kwargs or {}))
        if self.current is not None and self.current not in self.layers and func.__name__.split(".")[0].endswith("mm"):
            x, w = [a for a in args if isinstance(a, torch.Tensor) and a.ndim == 2][:2]  # addmm's bias is 1-D
            values = None if w.dtype.is_floating_point else torch.unique(w).numel()
            self.layers[self.current] = LayerMatmul(x.dtype, w.dtype, values, op=func._schema.name, k=x.shape[1],
                                                    in_features=self.model.get_submodule(self.current).in_features)
        return out

    def precision(self) -> str:
        """summary.json's precision: ternary-int8 if any layer multiplied ternary integer weights, else the
        float dtype every layer's matmul ran in (fp32, fp16-amp, bf16-amp); 'mixed (...)' otherwise."""
        if any(layer.ternary for layer in self.layers.values()):
            return "ternary-int8"
        names = {torch.float32: "fp32", torch.float16: "fp16-amp", torch.bfloat16: "bf16-amp"}
        kinds = sorted({names.get(layer.input_dtype, str(layer.input_dtype)) for layer in self.layers.values()})
        return kinds[0] if len(kinds) == 1 else f"mixed ({', '.join(kinds)})"

    def int8_kernel(self) -> str | None:
        """summary.json's int8_kernel: the bitnerf.INT8_KERNELS kernel the integer matmuls ran, None where no layer
        ran one, 'mixed (...)' where layers ran different ones. int-mm-padded leaves a K that is already a multiple
        of gpus.INT_MM_MULTIPLE as it is, so a layer of such a K that ran int-mm does not contradict it."""
        layers = [layer for layer in self.layers.values() if layer.int8_kernel() is not None]
        kernels = {layer.int8_kernel() for layer in layers}
        if "int-mm-padded" in kernels and all(layer.k % INT_MM_MULTIPLE == 0 for layer in layers
                                              if layer.int8_kernel() == "int-mm"):
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
            raise SystemExit(f"error: {what} ran no Linear layer's matrix multiply: nothing to measure its precision by")
        layers = [{"name": name, **layer.bits()} for name, layer in self.layers.items()]
        check_layers({"precision": self.precision(), "layers": layers}, config, dtype, what)


def check_layers(layers: dict, config, dtype: torch.dtype | None, what: str) -> None:
    """Stop the run (one line, exit code 1) when what ran is not what config asks for. layers is a layers.json
    census (Evaluation.layers) or MatmulCensus.check's record in its form: the measured precision name, and
    which of the layers that ran multiplied ternary weights (stored at 2 bits) and which int8 weights (8 bits).
    BitNeRF expects those that bitnerf.is_ternary_layer and bitnerf.is_int8_layer name for config; NeRF none."""
    names = [layer["name"] for layer in layers["layers"]]
    ternary, int8 = ([layer["name"] for layer in layers["layers"] if layer["weight_bits"] == bits]
                     for bits in (precision.TERNARY_WEIGHT_BITS, INT8_WEIGHT_BITS))
    measured, expected = layers["precision"], precision.precision_name(config.model, dtype)
    bitnerf_layers = [name for name in names if config.model == "bitnerf"]
    expected_ternary = [name for name in bitnerf_layers
                        if bitnerf.is_ternary_layer(name, config.quantize_heads, config.first_layer)]
    expected_int8 = [name for name in bitnerf_layers if bitnerf.is_int8_layer(name, config.first_layer)]
    if measured != expected or sorted(ternary) != sorted(expected_ternary) or sorted(int8) != sorted(expected_int8):
        raise SystemExit(f"error: {what} ran {measured} with ternary weights in {len(ternary)} and int8 weights in"
                         f" {len(int8)} of {len(names)} layers, but {config.name} asks for {expected} with"
                         f" {len(expected_ternary)} and {len(expected_int8)}: the run does not compute what it would"
                         f" report (a bug in the training code)")


def compiled(model: nn.Module) -> bool:
    """summary.json's compiled: whether the radiance fields are torch.compile'd modules (nn.Module.compile
    gives a module a compiled call; an eager one has none)."""
    fields = [field for field in (model.coarse, model.fine) if field is not None]
    return all(getattr(field, "_compiled_call_impl", None) is not None for field in fields)


def stored_weight_bits(model: nn.Module) -> int:
    """The narrowest weights a model stores in its Linear layers: a torchao quantized weight's integer data
    (qdata), else the parameter's own dtype."""
    return min(dtype_bits(getattr(module.weight, "qdata", module.weight).dtype)
               for module in model.modules() if isinstance(module, nn.Linear))
