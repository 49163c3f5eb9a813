"""Media: images in 8 bits, depth maps in colour, videos (GIF, and MP4 where ffmpeg is installed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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
