"""What the GPUs our users have can do, as data: the profiles `--plan PROFILE` plans for, and the compute
capabilities each feature needs. No torch here: plan.py applies these rules to a real device or to a
profile alike, so that every device rule runs in a test on the CPU.

The capability thresholds are the libraries' own (PyTorch, Triton, torchao), read from their sources and
documentation; docs/gpus.md says where each comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils import UserError

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    """A GPU as the rules see it: its name, compute capability and memory (what a process can allocate)."""

    name: str
    capability: tuple[int, int]
    memory_bytes: int

    @property
    def arch(self) -> str:
        """The architecture name in torch.cuda.get_arch_list()'s spelling, e.g. sm_75."""
        return f"sm_{self.capability[0]}{self.capability[1]}"


# The GPUs of Colab, Kaggle and clusters. Memory is what CUDA reports as total (nvidia-smi's figure less
# the driver's reservation), rounded down: a T4's 16 GB shows as about 15 GiB.
PROFILES = {
    "t4": GPU("Tesla T4", (7, 5), 15 * GIB),
    "p100": GPU("Tesla P100-PCIE-16GB", (6, 0), 15 * GIB + GIB // 2),
    "l4": GPU("NVIDIA L4", (8, 9), 22 * GIB),
    "a100-40": GPU("NVIDIA A100-SXM4-40GB", (8, 0), 39 * GIB),
    "a100-80": GPU("NVIDIA A100-SXM4-80GB", (8, 0), 79 * GIB),
    "h100": GPU("NVIDIA H100 80GB HBM3", (9, 0), 79 * GIB),
}

# Inductor (torch.compile's GPU backend) generates Triton, which needs capability 7.0 (GPUTooOldForTriton).
TRITON_MIN_CAPABILITY = (7, 0)
# Below 8.0 Triton 3.3+ lowers int8 tl.dot without tensor cores (an FMA loop): torchao's int8 kernel is slow there.
TRITON_INT8_TENSOR_CORES_MIN_CAPABILITY = (8, 0)
# Native bf16 arithmetic (Ampere on); below it autocast accepts bf16 and emulates it, slowly.
BF16_MIN_CAPABILITY = (8, 0)
# TF32 tensor cores for fp32 matmuls.
TF32_MIN_CAPABILITY = (8, 0)
# fp8 matmuls (Ada, Hopper).
FP8_MIN_CAPABILITY = (8, 9)
# cuBLAS int8 GEMM (torch._int_mm on CUDA) takes K and N in multiples of this.
INT_MM_MULTIPLE = 8
# The wheels that carry kernels for architectures older than the CUDA 13 wheels' oldest (sm_75): PyTorch's
# CUDA 12.6 builds include sm_50, sm_60 and sm_70, and 2.14 is the last release that publishes them.
OLD_GPU_TORCH = "pip install 'torch==2.14.*' --index-url https://download.pytorch.org/whl/cu126"


def profile(name: str) -> GPU:
    if name not in PROFILES:
        raise UserError(
            f"--plan {name}: unknown GPU profile; choose one of {', '.join(PROFILES)}"
            f" (or give no profile to plan for this machine's device)"
        )
    return PROFILES[name]
