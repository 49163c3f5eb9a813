"""Where rank 0 reports a run: metrics.csv (rundir.MetricsLog) and, unless disabled, Weights & Biases."""

import dataclasses
import os

import rundir
from configs import ExperimentConfig
from utils import colorize_depth, to_uint8


class RunLog:
    """Where rank 0 reports a run: metrics.csv and, unless disabled, W&B. W&B's key comes from the
    environment only; without one, runs stay offline."""

    def __init__(self, config: ExperimentConfig, run_dir, run_id: str, start_step: int, fields: dict):
        self.metrics = rundir.MetricsLog(run_dir, start_step)
        mode = config.wandb
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.wandb = None
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "nerf-experiments"),
                group=os.environ.get("WANDB_RUN_GROUP", config.out),
                name=config.name, dir=str(run_dir), mode=mode, resume="allow",
                id=run_id,  # new for a new run, kept in the checkpoint so that --resume continues the same W&B run
                config={**dataclasses.asdict(config), **fields},
            )

    def row(self, row: dict) -> None:
        self.metrics.write(row)
        if self.wandb:
            self.wandb.log({("test/psnr" if k == "psnr_test" else f"train/{k}"): v
                            for k, v in row.items() if k != "step"}, step=row["step"])

    def render(self, result: dict, scene, step: int) -> None:
        if self.wandb:
            import wandb

            self.wandb.log({"test/render": wandb.Image(to_uint8(result["rgb"])),
                            "test/depth": wandb.Image(colorize_depth(result["depth"], scene.near, scene.far))},
                           step=step)

    def video(self, path: str) -> None:
        if self.wandb:
            import wandb

            self.wandb.log({"video": wandb.Video(path, format=path.rsplit(".", 1)[-1])})

    def close(self, summary: dict | None = None, exit_code: int = 0) -> None:
        self.metrics.close()
        if self.wandb:
            if summary:
                self.wandb.summary.update(summary)
            self.wandb.finish(exit_code=exit_code)
