"""Small shared helpers: camera poses, image metrics, seeding, media writing, meters."""

import argparse
import contextlib
import math
import os
import resource
import sys
import time

import numpy as np
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


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) rather than the usage block."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = torch.mean((pred.float() - target.float()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """SSIM of two (H, W, 3) images in [0, 1] (torchmetrics: 11x11 Gaussian window, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    to_nchw = lambda x: x.float().permute(2, 0, 1)[None]  # noqa: E731
    return structural_similarity_index_measure(to_nchw(pred), to_nchw(target), data_range=1.0).item()


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
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


def atomic_torch_save(obj, path: str) -> None:
    """Save to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated, or on the CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory(device: torch.device) -> None:
    """Start peak_memory_bytes afresh: CUDA's peak statistics, or on Linux the process's peak resident set."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: resets the peak RSS that getrusage reports to the current RSS


class Stopwatch:
    """Accumulates the wall time spent inside `with stopwatch:` blocks (synchronising CUDA at the edges)."""

    def __init__(self, device: torch.device, elapsed: float = 0.0):
        self.device, self.elapsed = device, elapsed

    def __enter__(self):
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.elapsed += time.perf_counter() - self._start

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
