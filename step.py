"""One optimizer step, the same in train.py's loop and in bench.py's measurements: AdamW with its
learning-rate schedule and gradient scaler, and `train_step` on one batch of rays, in micro-batches where
its rays do not fit the device at once (plan.py decides)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import precision
from configs import ExperimentConfig
from dataset import RayBatch


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
    def build(
        cls, config: ExperimentConfig, model: nn.Module, device: torch.device, dtype: torch.dtype | None
    ) -> Optimization:
        # Fused: one kernel per parameter tensor instead of about a dozen small ops, the same update up
        # to rounding (docs/performance.md, "Fused AdamW").
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
        return cls(optimizer, scheduler, precision.grad_scaler(device, dtype), config.weight_decay, stage2_step(config))

    def schedule_weight_decay(self) -> None:
        """The weight decay of the step about to be taken: none in the second stage (BitNet b1.58's recipe).
        A function of the scheduler's step count, which a checkpoint restores."""
        decay = self.weight_decay if self.scheduler.last_epoch < self.stage2_step else 0.0
        for group in self.optimizer.param_groups:
            group["weight_decay"] = decay

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


def train_step(
    step_model: nn.Module,
    batch: RayBatch,
    optimization: Optimization,
    config: ExperimentConfig,
    autocast: Callable[[], contextlib.AbstractContextManager],
    micro_batch_rays: int = 0,
) -> dict[str, torch.Tensor]:
    """One optimizer step on this rank's share of the batch; step_model is the DDP module when distributed
    (its forward is what makes DDP average the gradients), autocast makes the run's autocast context.

    The loss is the mean over this rank's rays; DDP averages the gradients of equal shares, which is the
    gradient of the mean over the global batch. micro_batch_rays (0: all at once) splits the rays into
    micro-batches whose losses are scaled by their share of the rays, so that their gradients add up to the
    whole batch's; DDP reduces once, in the last micro-batch's backward (no_sync before it). The gradient
    scaler, clipping and the optimizer see the step once.
    """
    rays = batch.rgb.shape[0]
    parts = math.ceil(rays / micro_batch_rays) if micro_batch_rays else 1
    size = math.ceil(rays / parts)  # parts of equal size but the last: the same work in each
    optimization.optimizer.zero_grad(set_to_none=True)
    loss = fine_mse = 0.0
    for first in range(0, rays, size):
        part = slice(first, first + size)
        share = (min(first + size, rays) - first) / rays
        last = first + size >= rays
        with nullcontext() if last or not hasattr(step_model, "no_sync") else step_model.no_sync():
            with autocast():
                out = step_model(
                    batch.origins[part], batch.dirs[part], None if batch.jitter is None else batch.jitter[part]
                )
            part_fine_mse = F.mse_loss(out["rgb"], batch.rgb[part])
            part_loss = (
                part_fine_mse + F.mse_loss(out["rgb_coarse"], batch.rgb[part]) if config.n_fine > 0 else part_fine_mse
            )
            optimization.scaler.scale(part_loss * share).backward()
        loss, fine_mse = loss + part_loss.detach() * share, fine_mse + part_fine_mse.detach() * share
    optimization.scaler.unscale_(optimization.optimizer)
    grad_norm = nn.utils.clip_grad_norm_(step_model.parameters(), config.grad_clip or math.inf)
    optimization.schedule_weight_decay()
    optimization.scaler.step(optimization.optimizer)
    optimization.scaler.update()
    optimization.scheduler.step()
    return {"loss": loss, "fine_mse": fine_mse, "grad_norm": grad_norm.detach()}
