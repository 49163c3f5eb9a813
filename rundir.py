"""The run directory `<out>/<name>/`: what a training run writes there and how it is read back.

train.py writes through this module; everything after training (analyze.py, ptq.py, bench.py,
hw_eval.py, report.py) reads through it. torch and the models are imported inside the functions that
need them, so that readers of result files (report.py, hw_eval.py) start without loading them.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

from utils import UserError, atomic_write, read_json

SUMMARY, LAYERS, METRICS, CHECKPOINT = "summary.json", "layers.json", "metrics.csv", "checkpoint.pt"
RENDERS, VIDEO_STEM, PTQ = "renders", "video", "ptq.json"
MODEL_FILES = {"nerf": "model.pt", "bitnerf": "model_ternary.pt"}  # the deployable weights, by model kind
# layers.json counts the samples each layer sees per frame of this size, and hw_eval.py costs such a
# frame: 800x800 is the Blender scenes' full resolution, the frame NeRF accelerators report.
FRAME_HEIGHT = FRAME_WIDTH = 800
FRAME_PIXELS = FRAME_HEIGHT * FRAME_WIDTH
METRIC_COLUMNS = ("step", "wall_s", "loss", "psnr_train", "grad_norm", "lr", "samples_per_s", "psnr_test")
LAYER_FIELDS = ("name", "in_features", "out_features", "weight_bits", "input_bits", "output_bits", "input_sparsity",
                "samples_per_frame")
# Config fields that may change when a run is resumed; any other change would make it a different run.
RESUMABLE_CHANGES = {"steps", "out", "device", "wandb", "log_every", "eval_every", "eval_views",
                     "ckpt_every", "video_frames", "chunk"}
NO_RUNS_HINT = "train first (make suite, or python exp1.py --quick), or pass --runs"


def path_of(config) -> Path:
    return Path(config.out) / config.name


def check(config, resume: bool, overwrite: bool) -> Path:
    """The run directory, if the flags allow training into it."""
    run_dir = path_of(config)
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            raise UserError(f"--resume: no checkpoint at {run_dir / CHECKPOINT}; drop --resume to start afresh")
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise UserError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace it,"
                        f" or --name for a new one")
    return run_dir


def prepare(config, resume: bool, overwrite: bool) -> Path:
    """The run directory, created (and for a new run emptied) once the flags allow it."""
    run_dir = check(config, resume, overwrite)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class MetricsLog:
    """metrics.csv, one row per logged step; a resumed run drops the rows after its checkpoint."""

    def __init__(self, run_dir: Path, start_step: int):
        path = run_dir / METRICS
        rows = [r for r in read_metrics(run_dir) if int(r["step"]) <= start_step] if start_step and path.exists() else []
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=METRIC_COLUMNS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS
    if not path.exists():
        raise UserError(f"{run_dir} has no {METRICS}: rerun the experiment")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_checkpoint(run_dir: Path, state: dict) -> None:
    import torch

    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: Path, config) -> dict:
    """The run's training checkpoint (on the CPU), which must come from config's settings."""
    import torch

    checkpoint = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    saved = checkpoint["config"]
    changed = sorted(k for k, v in dataclasses.asdict(config).items()
                     if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        raise UserError(f"--resume: the checkpoint was trained with other {', '.join(changed)};"
                        f" resume with the same settings or start a new run with --name")
    return checkpoint


def write_model_file(run_dir: Path, model, model_kind: str, dtype) -> Path:
    """The deployable weights: BitNeRF's packed ternary export, else the state dict in the compute dtype."""
    import torch

    import bitnerf

    path = run_dir / MODEL_FILES[model_kind]
    if model_kind == "bitnerf":
        bitnerf.export_ternary(model, path)
    else:
        weights = {k: v.to(dtype or torch.float32) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        atomic_write(path, lambda tmp: torch.save(weights, tmp))
    return path


def load_trained(run_dir: Path, data: str | None, device):
    """A finished run's config, scene (its own, or data) and model with the checkpoint's weights, in eval mode."""
    import torch

    import bitnerf
    from configs import ExperimentConfig
    from dataset import load_scene

    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: give a run directory that an expN.py run wrote")
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    saved = {**checkpoint["config"], "skips": tuple(checkpoint["config"]["skips"])}
    config = ExperimentConfig(**{**saved, "data": data or saved["data"]})
    scene = load_scene(config.data, config.downscale)
    model = bitnerf.build_model(config, scene, device)
    model.load_state_dict(checkpoint["model"])
    return config, scene, model.eval()


def find_runs(runs_dir: Path) -> list[tuple[Path, dict]]:
    """(run directory, summary) of every finished run in runs_dir (a subfolder with a summary.json),
    ordered by experiment name."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"no runs folder {runs_dir}: {NO_RUNS_HINT}")
    runs = [(d, read_json(d / SUMMARY)) for d in runs_dir.iterdir() if (d / SUMMARY).is_file()]
    if not runs:
        raise UserError(f"no finished runs in {runs_dir} (no subfolder holds a {SUMMARY}): {NO_RUNS_HINT}")
    return sorted(runs, key=lambda run: (run[1].get("experiment", run[0].name), run[0].name))


def read_layers(run_dir: Path) -> list[dict]:
    """layers.json's layers, each with every field of LAYER_FIELDS."""
    path = run_dir / LAYERS
    if not path.is_file():
        raise UserError(f"{run_dir} has a {SUMMARY} but no {LAYERS}: rerun the experiment")
    layers = read_json(path)
    layers = layers.get("layers") if isinstance(layers, dict) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(layer, dict) for layer in layers):
        raise UserError(f"{path}: expected a non-empty list of layers under 'layers'; rerun the experiment")
    missing = [f for f in LAYER_FIELDS if any(f not in layer for layer in layers)]
    if missing:
        raise UserError(f"{path}: every layer needs {', '.join(LAYER_FIELDS)}; missing: {', '.join(missing)}")
    return layers
