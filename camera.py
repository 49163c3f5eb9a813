"""Camera geometry: poses on a sphere and the rays of a pinhole camera (NeRF/Blender convention)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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
