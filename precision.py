"""Precision, decided in one place: the autocast dtype a run computes in, the name a configuration asks
for, and the bitwidth constants that layers.json and hw_eval.py share. What a run actually computed in
is measured (measured.py) and checked against precision_name.

torch is imported inside the functions that use it, so that hw_eval.py reads bitwidths without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Operands this wide or wider are floating point (fp32, fp16, bf16: this project's float runs);
# narrower ones are integers (BitNeRF's 2-bit packed ternary weights and int8 activations).
FLOAT_MIN_BITS = 16
# A BitNet layer multiplies 2-bit packed ternary weights by int8 input rows.
TERNARY_WEIGHT_BITS, INT8_INPUT_BITS = 2, 8
# The information content of a ternary weight, log2(3): what the BitNet b1.58 paper calls its bits.
TERNARY_INFORMATION_BITS = 1.58


def is_float(bits: int) -> bool:
    return bits >= FLOAT_MIN_BITS


def amp_dtype(config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. CPU autocast runs fp16 far slower than fp32 (no fast fp16
    GEMM there), so 'auto' picks bf16 on the CPU and fp16 with gradient scaling on CUDA."""
    import torch

    if config.precision == "fp32":
        return None
    if config.amp_dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[config.amp_dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to dtype, or a no-op context for fp32 (dtype None)."""
    import torch

    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def precision_name(model_kind: str, dtype: torch.dtype | None) -> str:
    """The precision a run of model_kind under autocast dtype asks for: fp32, fp16-amp, bf16-amp or ternary-int8."""
    import torch

    if model_kind == "bitnerf":
        return "ternary-int8"
    return "fp32" if dtype is None else {torch.float16: "fp16-amp", torch.bfloat16: "bf16-amp"}[dtype]
