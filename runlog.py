"""Where rank 0 reports a run: metrics.csv (rundir.MetricsLog) and, unless disabled, Weights & Biases.

W&B is imported only where a run uses it. Every train/ and test/ metric is logged with the rays seen so
far (RAYS_SEEN) as its x-axis beside the step: exp3 takes a quarter of exp1's steps with a 4x batch,
so its curves line up with exp1's against rays seen, not against steps. ptq.py and hw_eval.py add their
results to the run's own W&B run later (add_to_run), by the id and mode rundir.WANDB_RUN records.
"""

import dataclasses
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

import rundir
from configs import ExperimentConfig
from media import colorize_depth, to_uint8
from utils import UserError

PROJECT = "nerf-experiments"  # WANDB_PROJECT overrides it
RAYS_SEEN = "rays_seen"  # global: step x global batch rays, whatever the world size
LOGGED_AGAINST_RAYS = ("train/*", "val/*", "test/*")
# WANDB_MODE's values as W&B reads them ("dryrun" and "run" are its older names).
WANDB_MODE_VALUES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}
DEFAULT_BASE_URL = (
    "https://api.wandb.ai"  # where `wandb login` stores its key for, unless WANDB_BASE_URL says otherwise
)
LAYER_TABLE_COLUMNS = (
    "name",
    "in_features",
    "out_features",
    "weight_bits",
    "input_bits",
    "output_bits",
    "input_sparsity",
    "weight_density",
    "joint_density",
    "samples_per_frame",
)
MAX_TAG_CHARS = 64  # W&B refuses longer tags


def env_wandb_mode() -> str | None:
    """The mode WANDB_MODE asks for, None where it is unset."""
    value = os.environ.get("WANDB_MODE")
    if not value:
        return None
    if value not in WANDB_MODE_VALUES:
        raise UserError(f"WANDB_MODE={value!r} is not a W&B mode: set it to online, offline or disabled, or unset it")
    return WANDB_MODE_VALUES[value]


def has_credentials() -> bool:
    """Whether W&B finds an API key here without asking: WANDB_API_KEY, or the .netrc entry that `wandb login`
    writes for the server (WANDB_BASE_URL, default api.wandb.ai), in $NETRC or ~/.netrc as W&B reads it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).netloc
    try:
        return netrc.netrc(Path(os.environ.get("NETRC") or "~/.netrc").expanduser()).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str) -> str:
    """The mode for --wandb: online, offline and disabled as given; auto as WANDB_MODE says where it is set,
    else online with credentials here (has_credentials) and offline without."""
    if requested != "auto":
        return requested
    return env_wandb_mode() or ("online" if has_credentials() else "offline")


def run_group(config: ExperimentConfig) -> str:
    """The W&B group: WANDB_RUN_GROUP, else the experiment's (the seeds of one experiment, --seeds, share it),
    so that the dashboard's grouped view averages an experiment over its seeds."""
    return os.environ.get("WANDB_RUN_GROUP", config.group or config.name)


def run_tags(config: ExperimentConfig, fields: dict) -> list[str]:
    """Tags to filter and compare runs by; precision and world size as the run measured them (fields)."""
    tags = {
        "preset": config.preset,
        "precision": fields["precision"],
        "model": config.model,
        "world_size": fields["world_size"],
        "scene": fields["scene"],
    }
    return [f"{key}:{value}"[:MAX_TAG_CHARS] for key, value in tags.items()]


def wandb_key(column: str) -> str:
    """A metrics.csv column as W&B names it: rays_seen as it is, test/psnr, val/psnr, and train/<column> for the
    rest."""
    held_out = {"psnr_test": "test/psnr", "psnr_val": "val/psnr"}
    return column if column == RAYS_SEEN else held_out.get(column, f"train/{column}")


class RunLog:
    """Where rank 0 reports a run: metrics.csv and, unless disabled, W&B (wandb_mode)."""

    def __init__(self, config: ExperimentConfig, run_dir, run_id: str, start_step: int, fields: dict):
        self.metrics = rundir.MetricsLog(run_dir, start_step)
        self.run_dir, self.batch_rays = Path(run_dir), config.batch_rays
        mode = wandb_mode(config.wandb)
        self.wandb = None
        if mode != "disabled":
            import wandb

            init = {
                "project": os.environ.get("WANDB_PROJECT", PROJECT),
                "group": run_group(config),
                "name": config.name,
                "tags": run_tags(config, fields),
                "config": {**dataclasses.asdict(config), **fields},
                "id": run_id,  # new for a new run, kept in the checkpoint so that --resume continues the same W&B run
            }
            self.wandb = wandb.init(**init, dir=str(run_dir), mode=mode, resume="allow")
            self.wandb.define_metric(RAYS_SEEN)
            for pattern in LOGGED_AGAINST_RAYS:
                self.wandb.define_metric(pattern, step_metric=RAYS_SEEN)
            rundir.write_wandb_run(self.run_dir, {**init, "mode": mode})

    def rays_seen(self, step: int) -> int:
        return step * self.batch_rays

    def row(self, row: dict) -> None:
        row = {**row, RAYS_SEEN: self.rays_seen(row["step"])}
        self.metrics.write(row)
        if self.wandb:
            self.wandb.log({wandb_key(k): v for k, v in row.items() if k != "step"}, step=row["step"])

    def render(self, result: dict, scene, step: int) -> None:
        """A test view as rendered, beside its ground truth, and its depth."""
        if self.wandb:
            import wandb

            view = result["view"]
            truth_and_render = np.concatenate([to_uint8(scene.images[view]), to_uint8(result["rgb"])], axis=1)
            self.wandb.log(
                {
                    RAYS_SEEN: self.rays_seen(step),
                    "test/render": wandb.Image(truth_and_render, caption=f"view {view}: ground truth | render"),
                    "test/depth": wandb.Image(colorize_depth(result["depth"], scene.near, scene.far)),
                },
                step=step,
            )

    def video(self, path: str) -> None:
        if self.wandb:
            import wandb

            self.wandb.log({"video": wandb.Video(path, format=path.rsplit(".", 1)[-1])})

    def close(self, summary: dict | None = None, exit_code: int = 0) -> None:
        """Finish the log; a completed run (summary) also gets its summary and the table of its layers."""
        self.metrics.close()
        if self.wandb:
            if summary:
                self.wandb.summary.update(summary)
                self.wandb.log({"layers": table(rundir.read_layers(self.run_dir), LAYER_TABLE_COLUMNS)})
            self.wandb.finish(exit_code=exit_code)


def table(rows: list[dict], columns):
    """A W&B Table of rows, one column per name in columns (None where a row lacks it)."""
    import wandb

    return wandb.Table(columns=list(columns), data=[[row.get(c) for c in columns] for row in rows])


def add_to_run(
    run_dir: Path, tool: str, rows: list[dict], keys: tuple[str, ...], values: tuple[str, ...]
) -> str | None:
    """Add a later tool's results on a trained run to that run's W&B run, in the mode it trained in
    (WANDB_MODE overrides it; disabled adds nothing): each row's values as summary entries
    `<tool>/<row's keys>/<value>`, to compare across runs, and the rows as the table `<tool>/results`.

    Returns the W&B run id written to, or None where the run had no W&B."""
    record = rundir.read_wandb_run(run_dir)
    mode = env_wandb_mode() or (record or {}).get("mode", "disabled")
    if record is None or mode == "disabled":
        return None
    import wandb

    init = {k: record[k] for k in ("project", "group", "name", "tags", "config", "id")}
    run = wandb.init(**init, dir=str(run_dir), mode=mode, resume="allow")
    run.summary.update({"/".join([tool, *(str(row[k]) for k in keys), v]): row[v] for row in rows for v in values})
    run.summary[f"{tool}/results"] = table(rows, keys + values)
    run.finish()
    return record["id"]
