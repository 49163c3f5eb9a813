"""The device a run computes on: which one (and why an NVIDIA GPU is unusable), its memory, and time
measured on it.

torch is imported inside the functions, so that readers of result files start without it."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from utils import UserError

if TYPE_CHECKING:
    import torch


# PyTorch's wheels for the CUDA 12.6 runtime, which every driver from 525 on runs (CUDA 12's minor-version
# compatibility): the usual fix when the installed torch was built for a newer CUDA than the driver, or for none.
TORCH_CUDA_FIX = "pip install torch --index-url https://download.pytorch.org/whl/cu126"


# Where the NVIDIA kernel driver shows itself, with or without a PyTorch that can use it.
NVIDIA_DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"


NVIDIA_DEVICE_FILE = "/dev/nvidia0"


def nvidia_driver() -> str | None:
    """What shows an NVIDIA GPU here: "driver <version>" when the version is readable, else the file or
    tool that shows one; None without a sign of one."""
    try:
        text = Path(NVIDIA_DRIVER_VERSION_FILE).read_text()
    except OSError:
        text = None
    if text is not None:
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ..." or, for the open
        # driver, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.90.07  Release Build ..."
        match = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
        return f"driver {match[1]}" if match else NVIDIA_DRIVER_VERSION_FILE
    if os.path.exists(NVIDIA_DEVICE_FILE):
        return NVIDIA_DEVICE_FILE
    if shutil.which("nvidia-smi"):
        try:
            result = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            return "nvidia-smi"
        versions = result.stdout.split()
        return f"driver {versions[0]}" if result.returncode == 0 and versions else "nvidia-smi"
    return None


def unusable_gpu() -> str | None:
    """Why this PyTorch cannot use the NVIDIA GPU that the machine shows, and the fix; None when it shows none."""
    import torch

    driver = nvidia_driver()
    if driver is None:
        return None
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"an NVIDIA GPU is visible ({driver}) but this PyTorch ({torch.__version__}, {build}) cannot use it:"
        f" install a torch build for the driver's CUDA version (nvidia-smi shows it), e.g. {TORCH_CUDA_FIX}"
    )


def resolve_device(name: str) -> torch.device:
    """The device for --device auto|cpu|cuda. auto falls back to the CPU, with a warning on stderr when an
    NVIDIA GPU is visible that this PyTorch cannot use; cuda without a usable GPU is a UserError."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if reason := unusable_gpu():
            print(f"warning: running on the CPU: {reason}, or pass --device cpu to silence this", file=sys.stderr)
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        if reason := unusable_gpu():
            raise UserError(f"--device cuda asked for, but {reason}; or use --device cpu")
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated, or on the CPU the process's peak resident set size."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_reserved_bytes(device: torch.device) -> int | None:
    """Peak CUDA memory PyTorch's caching allocator reserved (what nvidia-smi sees of the process's tensors), or
    None off CUDA, where no allocator reserves beyond what it allocates."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_reserved(device)


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory that new tensors on device can still get: CUDA's free memory plus what PyTorch's allocator holds
    unused, or on Linux the system's MemAvailable (RAM that can be had without swapping); None where unknown."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024  # reported in kB
    except (OSError, KeyError, ValueError):
        return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether error is an allocation that failed: CUDA's OutOfMemoryError, Python's MemoryError, or the
    RuntimeError of PyTorch's CPU allocator."""
    import torch

    return (
        isinstance(error, (torch.OutOfMemoryError, MemoryError))
        or isinstance(error, RuntimeError)
        and "DefaultCPUAllocator: can't allocate memory" in str(error)
    )


def reset_peak_memory(device: torch.device) -> None:
    """Start peak_memory_bytes afresh: CUDA's peak statistics, or on Linux the process's peak resident set."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: resets the peak RSS that getrusage reports to the current RSS


class Stopwatch:
    """Accumulates the time spent inside `with stopwatch:` blocks: `elapsed` seconds, `carried_s` (what it
    started from, such as a resumed run's training time) included.

    On CUDA a pair of CUDA events on the current stream times each block without waiting for anything:
    from the GPU reaching the first to its finishing the work queued before the second, which is the
    block's wall time once the GPU has caught up. Reading `elapsed` waits for the blocks' work, so a loop
    that reads it only at its logging steps synchronises only there. On the CPU: each block's wall time.
    """

    def __init__(self, device: torch.device, carried_s: float = 0.0):
        self.device, self.carried_s = device, carried_s
        self.blocks, self.blocks_s, self.first_block_s = 0, 0.0, 0.0  # this stopwatch's own blocks, once read
        self._pending = []  # CUDA: the (start, end) events of blocks not read yet

    def __enter__(self):
        if self.device.type == "cuda":
            import torch

            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
        else:
            self._add(time.perf_counter() - self._start)

    def _add(self, seconds: float) -> None:
        if self.blocks == 0:
            self.first_block_s = seconds
        self.blocks += 1
        self.blocks_s += seconds

    def _read_pending(self) -> None:
        if self._pending:
            self._pending[-1][1].synchronize()
            for start, end in self._pending:
                self._add(start.elapsed_time(end) / 1000)  # milliseconds
            self._pending.clear()

    @property
    def elapsed(self) -> float:
        self._read_pending()
        return self.carried_s + self.blocks_s

    def first_block_excess(self) -> float:
        """How much longer the first block took than the mean of the others (0 with fewer than two): a
        first call's one-off cost, such as torch.compile compiling on it."""
        self._read_pending()
        if self.blocks < 2:
            return 0.0
        return max(0.0, self.first_block_s - (self.blocks_s - self.first_block_s) / (self.blocks - 1))


def device_identity(device: torch.device) -> dict:
    """summary.json's device_name and capability: which GPU model trained (plan.py's time estimate matches
    runs by it), or the CPU's, with no capability."""
    import torch

    if device.type != "cuda":
        return {"device_name": "cpu", "capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"device_name": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}
