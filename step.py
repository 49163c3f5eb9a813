"""One optimizer step, the same in train.py's loop and in bench.py's measurements: AdamW with its
learning-rate schedule and gradient scaler, `train_step` on one batch of rays, and `check_step_memory`,
which refuses a batch whose step cannot fit the device before training starts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

import bitnerf
from configs import ExperimentConfig
from dataset import RayBatch, Scene
from utils import UserError, available_memory_bytes

# A step's peak memory over what autograd saves for its backward pass, counted in fp32: the gradients of
# the activations, the temporaries of both passes and the allocator's rounding. Chosen above the ratios of
# the growth per ray of train_step's memory, measured on the CPU, to the saved bytes per ray (NeRF,
# BitNeRF, AMP), and no higher, so that batches that fit are not refused; tests/test_faults.py checks it.
MEMORY_MARGIN = 1.5
# Bytes per training pixel that RaySampler keeps on the device: origin, direction and colour, 3 floats each.
SAMPLER_BYTES_PER_PIXEL = 9 * 4
# Bytes per parameter of training: the weight, its gradient and AdamW's two moments, fp32 each.
TRAINING_BYTES_PER_PARAM = 4 * 4


def stage2_step(config: ExperimentConfig) -> int:
    """The first step of the second stage of a two-stage schedule (config.steps: a single stage)."""
    return round(config.stage2_at * config.steps)


def lr_factor(config: ExperimentConfig, step: int) -> float:
    """The learning rate of a step over config.lr: the exponential decay from lr to lr_final over the run,
    times the linear warm-up over its first warmup_steps, times stage2_lr_scale in the second stage."""
    factor = (config.lr_final / config.lr) ** min(step / config.steps, 1.0)
    if config.warmup_steps:
        factor *= min(1.0, (step + 1) / config.warmup_steps)
    return factor * config.stage2_lr_scale if step >= stage2_step(config) else factor


@dataclass
class Optimization:
    """What a step updates besides the weights: AdamW with its learning-rate schedule (lr_factor) and, in
    a second stage, no weight decay, and the gradient scaler (enabled for fp16 only)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    weight_decay: float
    stage2_step: int

    @classmethod
    def build(cls, config: ExperimentConfig, model: nn.Module, device: torch.device,
              dtype: torch.dtype | None) -> Optimization:
        # Fused: one kernel per parameter tensor instead of about a dozen small ops, the same update up
        # to rounding (BENCHMARKS.md, "Optimizer").
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
        # Gradient scaling guards fp16's narrow exponent range; bf16 has fp32's range and needs none.
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        return cls(optimizer, scheduler, scaler, config.weight_decay, stage2_step(config))

    def schedule_weight_decay(self) -> None:
        """The weight decay of the step about to be taken: none in the second stage (BitNet b1.58's recipe).
        A function of the scheduler's step count, which a checkpoint restores."""
        decay = self.weight_decay if self.scheduler.last_epoch < self.stage2_step else 0.0
        for group in self.optimizer.param_groups:
            group["weight_decay"] = decay

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


def train_step(step_model: nn.Module, batch: RayBatch, optimization: Optimization, config: ExperimentConfig,
               autocast: Callable[[], ContextManager]) -> dict[str, torch.Tensor]:
    """One optimizer step on this rank's share of the batch; step_model is the DDP module when distributed
    (its forward is what makes DDP average the gradients), autocast makes the run's autocast context.

    The loss is the mean over this rank's rays; DDP averages the gradients of equal shares, which is the
    gradient of the mean over the global batch.
    """
    with autocast():
        out = step_model(batch.origins, batch.dirs, batch.jitter)
    fine_mse = F.mse_loss(out["rgb"], batch.rgb)
    loss = fine_mse + F.mse_loss(out["rgb_coarse"], batch.rgb) if config.n_fine > 0 else fine_mse
    optimization.optimizer.zero_grad(set_to_none=True)
    optimization.scaler.scale(loss).backward()
    optimization.scaler.unscale_(optimization.optimizer)
    grad_norm = nn.utils.clip_grad_norm_(step_model.parameters(), config.grad_clip or math.inf)
    optimization.schedule_weight_decay()
    optimization.scaler.step(optimization.optimizer)
    optimization.scaler.update()
    optimization.scheduler.step()
    return {"loss": loss.detach(), "fine_mse": fine_mse.detach(), "grad_norm": grad_norm.detach()}


def saved_bytes_per_ray(config: ExperimentConfig, scene: Scene) -> tuple[int, int]:
    """(bytes that autograd saves for the backward pass of one training ray in fp32, parameters) of config's model.

    Counted without computing anything, on a copy of the model on the meta device: the saved tensors of a
    forward pass over two rays less those over one ray (what does not grow with the rays, such as the
    weights, cancels). Under AMP the saved activations are 16-bit, but part of the backward pass still
    computes in fp32: counting them in fp32 keeps the estimate on the safe side. Counted without an
    occupancy grid, whose skipping only saves (and whose gathering of samples a meta tensor cannot do).
    """
    meta = torch.device("meta")
    model = bitnerf.build_model(dataclasses.replace(config, occupancy_grid=False), scene, meta)

    def saved_bytes(rays: int) -> int:
        storages, kept = {}, []

        def note(tensor: torch.Tensor) -> torch.Tensor:
            base = tensor if tensor._base is None else tensor._base  # a view counts as its base, once
            storages[id(base)] = base.untyped_storage().nbytes()
            kept.append(base)  # alive until counted, so that no id is reused
            return tensor

        origins, dirs = torch.zeros(rays, 3, device=meta), torch.zeros(rays, 3, device=meta)
        jitter = torch.zeros(rays, config.jitter_per_ray, device=meta) if config.jitter_per_ray else None
        with torch.autograd.graph.saved_tensors_hooks(note, lambda tensor: tensor):
            model(origins, dirs, jitter)
        return sum(storages.values())

    return saved_bytes(2) - saved_bytes(1), sum(p.numel() for p in model.parameters())


def check_step_memory(config: ExperimentConfig, scene: Scene, device: torch.device, world_size: int = 1,
                      sharing: int = 1) -> None:
    """Refuse, as a UserError naming the largest batch that fits, a batch_rays whose training step cannot
    fit the memory available on device (CUDA: free memory; CPU: MemAvailable). world_size processes
    split the batch, and `sharing` of them share this device's memory (CPU ranks of one machine).

    The estimate per process: MEMORY_MARGIN times the bytes autograd saves for its rays, plus the
    sampler's rays and the weights, gradients and AdamW moments. Skipped where the available memory is unknown.
    """
    available = available_memory_bytes(device)
    if available is None:
        return
    per_ray, params = saved_bytes_per_ray(config, scene)
    per_ray *= MEMORY_MARGIN
    pixels = len(scene.i_train) * scene.height * scene.width
    fixed = SAMPLER_BYTES_PER_PIXEL * pixels + TRAINING_BYTES_PER_PARAM * params
    budget = available / sharing - fixed  # what one process may use for its share of the batch
    rays = config.batch_rays // world_size
    if rays * per_ray <= budget:
        return
    need_gib, available_gib = sharing * (fixed + rays * per_ray) / 2**30, available / 2**30
    where = f"{device}" + (f" ({sharing} processes)" if sharing > 1 else "")
    largest = int(max(budget, 0.0) // per_ray) * world_size
    fix = (f"use --batch-rays {largest} or less" if largest >= world_size else "not even one ray per process"
           " fits: free memory, or shrink the model (--width, --depth, --n-coarse, --n-fine)")
    raise UserError(f"--batch-rays {config.batch_rays} needs about {need_gib:.1f} GiB for a training step on {where},"
                    f" but {available_gib:.1f} GiB is available: {fix}")
