"""One optimizer step, the same in train.py's loop and in bench.py's measurements: AdamW with its
learning-rate schedule and gradient scaler, and `train_step` on one batch of rays."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from configs import ExperimentConfig
from dataset import RayBatch


@dataclass
class Optimization:
    """What a step updates besides the weights: AdamW, its exponential learning-rate decay from lr to
    lr_final over the run, and the gradient scaler (enabled for fp16 only)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, config: ExperimentConfig, model: nn.Module, device: torch.device,
              dtype: torch.dtype | None) -> Optimization:
        # Fused: one kernel per parameter tensor instead of about a dozen small ops, the same update up
        # to rounding (BENCHMARKS.md, "Optimizer").
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
        decay = config.lr_final / config.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay ** min(step / config.steps, 1.0))
        # Gradient scaling guards fp16's narrow exponent range; bf16 has fp32's range and needs none.
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        return cls(optimizer, scheduler, scaler)

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
    optimization.scaler.step(optimization.optimizer)
    optimization.scaler.update()
    optimization.scheduler.step()
    return {"loss": loss.detach(), "fine_mse": fine_mse.detach(), "grad_norm": grad_norm.detach()}
