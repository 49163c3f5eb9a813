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


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """How a checkpoint records an autocast dtype: 'float16', 'bfloat16', or None for fp32."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


# A recorded autocast dtype -> the --amp-dtype value that picks it on any device.
AMP_DTYPE_FLAGS = {"float16": "fp16", "bfloat16": "bf16"}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to dtype, or a no-op context for fp32 (dtype None)."""
    import torch

    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """The gradient scaler of a run that autocasts to dtype: enabled for fp16 only, whose narrow exponent range
    it guards; bf16 has fp32's range and needs none."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def set_float32_matmul(tf32: bool) -> None:
    """--tf32: let fp32 matmuls and cuDNN round their inputs to TF32 where the hardware has it (the fast
    fp32 baseline); off, they stay IEEE fp32. Off is PyTorch's default for matmuls but not for cuDNN,
    which allows TF32 unless told otherwise, so both are set either way."""
    import torch

    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32


def float32_matmul_settings(device: torch.device) -> dict:
    """summary.json's record of how fp32 matmuls computed, read from PyTorch as the run left it."""
    import torch

    settings = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device.type == "cuda":
        settings["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return settings


def precision_name(config, dtype: torch.dtype | None) -> str:
    """The precision a run of config under autocast dtype asks for: ternary-int8 (BitNeRF), int8 or fp8 (its
    quantized_training), else fp32, fp16-amp or bf16-amp."""
    import torch

    if config.model == "bitnerf":
        return "ternary-int8"
    if config.quantized_training != "none":
        return config.quantized_training.split("-")[0]
    return "fp32" if dtype is None else {torch.float16: "fp16-amp", torch.bfloat16: "bf16-amp"}[dtype]
