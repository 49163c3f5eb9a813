"""What one training ray costs in memory, the unit of plan.py's estimate: the bytes autograd saves for its backward
pass, counted on the CPU without running a step, or the growth of a training pass's peak per ray, probed on a CUDA
device (whose fused kernels save less than the CPU's decompositions)."""

from __future__ import annotations

import argparse
import dataclasses
import functools

import torch

import bitnerf
import precision
from configs import ExperimentConfig

# The CUDA probe's two micro-batches: the growth of the peak between them, per ray, is what a ray costs.
PROBE_RAYS = (32, 96)


def counted_bytes_per_ray(config: ExperimentConfig, scene, dtype: torch.dtype | None) -> tuple[int, int]:
    """(bytes that autograd saves for the backward pass of one training ray, parameters) of config's model under
    autocast dtype (None: fp32), counted on the CPU: the saved tensors of a forward pass over two rays less
    those over one ray (what does not grow with the rays, such as the weights and their casts, cancels).
    Counted without an occupancy grid, whose skipping only saves. Of the scene only its bounds matter."""
    return _counted_bytes_per_ray(
        dataclasses.replace(config, occupancy_grid=False), scene.near, scene.far, scene.white_bkgd, dtype
    )


@functools.lru_cache(maxsize=64)  # a table plans each experiment on several GPUs
def _counted_bytes_per_ray(
    config: ExperimentConfig, near: float, far: float, white_bkgd: bool, dtype: torch.dtype | None
) -> tuple[int, int]:
    cpu = torch.device("cpu")
    bounds = argparse.Namespace(near=near, far=far, white_bkgd=white_bkgd)
    model = bitnerf.build_model(config, bounds, cpu)

    def saved_bytes(rays: int) -> int:
        storages, kept = {}, []

        def note(tensor: torch.Tensor) -> torch.Tensor:
            base = tensor if tensor._base is None else tensor._base  # a view counts as its base, once
            storages[id(base)] = base.untyped_storage().nbytes()
            kept.append(base)  # alive until counted, so that no id is reused
            return tensor

        origins, dirs = torch.zeros(rays, 3), torch.nn.functional.normalize(torch.ones(rays, 3), dim=-1)
        jitter = torch.full((rays, config.jitter_per_ray), 0.5) if config.jitter_per_ray else None
        with torch.autograd.graph.saved_tensors_hooks(note, lambda tensor: tensor), precision.autocast(cpu, dtype):
            model(origins, dirs, jitter)
        return sum(storages.values())

    return saved_bytes(2) - saved_bytes(1), sum(p.numel() for p in model.parameters())


def probed_bytes_per_ray(config: ExperimentConfig, scene, device: torch.device, dtype: torch.dtype | None) -> float:
    """The growth of a training pass's peak CUDA memory per ray, measured on the device between two small
    micro-batches (PROBE_RAYS): what the device's own kernels keep, with the temporaries of both passes."""
    model = bitnerf.build_model(dataclasses.replace(config, occupancy_grid=False), scene, device)
    peaks = []
    for rays in PROBE_RAYS:
        origins = torch.zeros(rays, 3, device=device)
        dirs = torch.nn.functional.normalize(torch.ones(rays, 3, device=device), dim=-1)
        jitter = torch.full((rays, config.jitter_per_ray), 0.5, device=device) if config.jitter_per_ray else None
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with precision.autocast(device, dtype):
            out = model(origins, dirs, jitter)
        out["rgb"].float().sum().backward()
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
        model.zero_grad(set_to_none=True)
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return (peaks[1] - peaks[0]) / (PROBE_RAYS[1] - PROBE_RAYS[0])
