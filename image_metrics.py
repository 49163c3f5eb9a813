"""Image quality: PSNR, SSIM and depth error of renders against ground truth."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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
