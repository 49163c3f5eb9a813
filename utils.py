"""Small shared helpers: errors, the one atomic write, JSON files, cameras, image metrics, media, meters.

torch is imported inside the helpers that use it, so that readers of result files (report.py,
hw_eval.py) start without loading it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    import torch


class UserError(Exception):
    """Bad input from the user: reported as one line with exit code 2, never as a traceback."""


@contextlib.contextmanager
def exit_on_user_error():
    """A command's body: bad input (UserError) ends it with one line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def without_option(argv: list[str], option: str) -> list[str]:
    """argv less every `option VALUE` and `option=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith(option + "="):
            skip = False
        elif arg == option:
            skip = True
        else:
            kept.append(arg)
    return kept


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) rather than the usage block."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)


def atomic_write(path: str | Path, content: str | bytes | Callable[[str], object]) -> None:
    """Write a file all at once: to a temporary file beside it, then rename over it.

    content is text, bytes, or a function that writes a file at the path it is given (torch.save,
    savefig). A crash, a kill or a concurrent writer never leaves a half-written file at path.
    """
    path = Path(path)
    # A folder of its own per write keeps concurrent writers apart, while the file in it keeps a fixed
    # name: torch.save records the file's name inside its archive, so the bytes stay reproducible.
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp = tmp_dir / f"{path.name}.tmp"
    try:
        if callable(content):
            content(str(tmp))
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(path: str | Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path):
    """A JSON file's contents; an unreadable or invalid file is a UserError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON file ({e}); rerun what wrote it") from None


def pose_spherical(theta_deg: float, phi_deg: float, radius: float) -> np.ndarray:
    """Camera-to-world matrix of a camera on a sphere looking at the origin (NeRF/Blender convention).

    theta is the azimuth, phi the elevation (negative looks down from above), the camera looks down -z.
    """
    def translate_z(t):
        return np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, t], [0, 0, 0, 1]], dtype=np.float64)

    def rotate_phi(phi):
        c, s = math.cos(phi), math.sin(phi)
        return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]], dtype=np.float64)

    def rotate_theta(th):
        c, s = math.cos(th), math.sin(th)
        return np.array([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]], dtype=np.float64)

    c2w = translate_z(radius)
    c2w = rotate_phi(math.radians(phi_deg)) @ c2w
    c2w = rotate_theta(math.radians(theta_deg)) @ c2w
    # Swap to the Blender world frame (z up), as the original NeRF code does.
    c2w = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64) @ c2w
    return c2w.astype(np.float32)


def get_rays(height: int, width: int, focal: float, c2w: torch.Tensor):
    """Origins and unnormalised directions of every pixel's ray, each (H, W, 3), on c2w's device.

    Pixel (i, j) looks through ((i - W/2)/f, -(j - H/2)/f, -1) in camera space, the convention of
    the original NeRF code and of tiny_nerf_data.npz; the ray parameter t is camera-space depth.
    """
    import torch

    j, i = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=c2w.device),
        torch.arange(width, dtype=torch.float32, device=c2w.device),
        indexing="ij",
    )
    dirs_cam = torch.stack([(i - width * 0.5) / focal, -(j - height * 0.5) / focal, -torch.ones_like(i)], -1)
    dirs = dirs_cam @ c2w[:3, :3].T
    origins = c2w[:3, 3].expand(dirs.shape)
    return origins, dirs


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
            result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10)
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
    return (f"an NVIDIA GPU is visible ({driver}) but this PyTorch ({torch.__version__}, {build}) cannot use it:"
            f" install a torch build for the driver's CUDA version (nvidia-smi shows it), e.g. {TORCH_CUDA_FIX}")


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


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    import torch

    mse = torch.mean((pred.float() - target.float()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """SSIM of two (H, W, 3) images in [0, 1] (torchmetrics: 11x11 Gaussian window, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    to_nchw = lambda x: x.float().permute(2, 0, 1)[None]  # noqa: E731
    return structural_similarity_index_measure(to_nchw(pred), to_nchw(target), data_range=1.0).item()


def depth_error(pred: torch.Tensor, target: np.ndarray) -> float:
    """Mean absolute difference of a rendered depth map from the scene's ground truth, in scene units."""
    return float(np.abs(pred.detach().float().cpu().numpy() - target).mean())


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        image = image.detach().float().cpu().numpy()
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_depth(depth: torch.Tensor, near: float, far: float) -> np.ndarray:
    """Depth (H, W) as an 8-bit turbo-coloured image, near in red and far in blue, fixed scale [near, far]."""
    from matplotlib import colormaps

    scaled = ((depth.detach().float().cpu().numpy() - near) / (far - near)).clip(0.0, 1.0)
    return to_uint8(colormaps["turbo"](1.0 - scaled)[..., :3])


def write_video(path_stem: str, frames: list[np.ndarray], fps: int = 24) -> list[str]:
    """Write frames as GIF, and as MP4 where imageio-ffmpeg is installed; returns the paths written."""
    import imageio.v2 as imageio

    written = [f"{path_stem}.gif"]
    imageio.mimsave(written[0], frames, duration=1000 / fps, loop=0)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return written
    imageio.mimsave(f"{path_stem}.mp4", frames, fps=fps, macro_block_size=1, quality=8)
    return written + [f"{path_stem}.mp4"]


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

    return (isinstance(error, (torch.OutOfMemoryError, MemoryError))
            or isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error))


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
