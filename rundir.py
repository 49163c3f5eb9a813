"""The run directory `<out>/<name>/`: what a training run writes there and how it is read back.

train.py writes through this module; everything after training (analyze.py, ptq.py, bench.py,
hw_eval.py, report.py) reads through it. torch and the models are imported inside the functions that
need them, so that readers of result files (report.py, hw_eval.py) start without loading them.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from pathlib import Path

import configs
import precision
from files import atomic_write, read_json, write_json
from utils import UserError

SUMMARY, LAYERS, METRICS, CHECKPOINT = "summary.json", "layers.json", "metrics.csv", "checkpoint.pt"
RENDERS, VIDEO_STEM, PTQ = "renders", "video", "ptq.json"
# How the run logs to W&B (runlog.py writes it): its id, mode, project and init settings, so that ptq.py and
# hw_eval.py add their results to the same W&B run without reading the checkpoint (and so without torch).
WANDB_RUN = "wandb_run.json"
# The deployable weights, by format (model_format): a state dict, BitNeRF's packed ternary export, and a NeRF trained
# in int8 in that export's int8 form.
MODEL_FILES = {"nerf": "model.pt", "bitnerf": "model_ternary.pt", "int8": "model_int8.pt"}
# layers.json counts the samples each layer sees per frame of this size, and hw_eval.py costs such a
# frame: 800x800 is the Blender scenes' full resolution, the frame NeRF accelerators report.
FRAME_HEIGHT = FRAME_WIDTH = 800
FRAME_PIXELS = FRAME_HEIGHT * FRAME_WIDTH
# psnr_val where the scene has validation views (the periodic evaluation renders them), else psnr_test.
METRIC_COLUMNS = (
    "step",
    "rays_seen",
    "wall_s",
    "loss",
    "psnr_train",
    "grad_norm",
    "lr",
    "samples_per_s",
    "psnr_test",
    "psnr_val",
)
LAYER_FIELDS = (
    "name",
    "in_features",
    "out_features",
    "weight_bits",
    "input_bits",
    "output_bits",
    "input_sparsity",
    "samples_per_frame",
)
# Config fields that may change when a run is resumed; any other change would make it a different run.
# amp_dtype may change as long as the autocast dtype it resolves to does not (load_checkpoint).
# preset only labels where the settings came from (a quick checkpoint from before it was recorded has none).
RESUMABLE_CHANGES = {
    "steps",
    "out",
    "device",
    "wandb",
    "log_every",
    "eval_every",
    "eval_views",
    "ckpt_every",
    "video_frames",
    "chunk",
    "amp_dtype",
    "preset",
    "micro_batch_rays",
    "int8_kernel",
}
NO_RUNS_HINT = "train first (make suite, or python exp1.py --quick), or pass --runs"
# What every checkpoint holds (train.py writes it); a file without these keys is not one.
CHECKPOINT_KEYS = ("step", "wall_s", "train_s", "config", "model", "optimizer", "scheduler", "scaler")
# A process that holds a run directory's lock for the processes it starts (a distributed launcher for
# its ranks) names itself here, so that its rank 0 trains under that lock.
LOCK_HOLDER_ENV = "NERF_RUN_LOCK_HOLDER"


def path_of(config) -> Path:
    return Path(config.out) / config.name


def check(config, resume: bool, overwrite: bool) -> Path:
    """The run directory, if the flags allow training into it."""
    run_dir = path_of(config)
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            raise UserError(f"--resume: no checkpoint at {run_dir / CHECKPOINT}; drop --resume to start afresh")
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise UserError(
            f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace it,"
            f" or --name for a new one"
        )
    return run_dir


def prepare(config, resume: bool, overwrite: bool, lock: RunLock) -> Path:
    """The run directory, created (and for a new run emptied) once this process holds its lock and the
    flags allow it."""
    lock.acquire()
    run_dir = check(config, resume, overwrite)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class RunLock:
    """One process's claim on a run directory: `<out>/.<name>.lock` holding its process id, beside the
    directory, which --overwrite deletes.

    The claim is an exclusive flock on that file, which the system drops when the process ends, however
    it ends: a lock file left by a process that died is taken over. Works wherever flock does (local
    file systems, NFS on Linux)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self.file = None

    def acquire(self) -> None:
        """Hold the lock, or raise a UserError naming the process that holds it. A lock held by this
        process's launcher (LOCK_HOLDER_ENV) is this job's already."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.file is None:
            file = open(self.path, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip()
                file.close()
                if holder and holder == os.environ.get(LOCK_HOLDER_ENV):
                    return
                who = f"process {holder}" if holder else "a process starting up"
                raise UserError(
                    f"{self.run_dir} is in use by another run ({who}; lock {self.path}): wait for it to"
                    f" end, or train into another --name"
                ) from None
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(os.fstat(file.fileno()), current):
                # The holder released the lock (deleting the file) between our open and flock: lock the new file.
                file.close()
                continue
            file.truncate(0)
            file.write(f"{os.getpid()}\n")
            file.flush()
            self.file = file

    def share_with_children(self) -> None:
        """Let the processes this one starts from now on (a distributed launch's rank 0) train under this lock."""
        os.environ[LOCK_HOLDER_ENV] = str(os.getpid())

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)  # before unlocking, so that a waiting process never locks a stale file
            self.file.close()
            self.file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class MetricsLog:
    """metrics.csv, one row per logged step; a resumed run drops the rows after its checkpoint."""

    def __init__(self, run_dir: Path, start_step: int):
        path = run_dir / METRICS
        rows = (
            [r for r in read_metrics(run_dir) if int(r["step"]) <= start_step] if start_step and path.exists() else []
        )
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


def write_wandb_run(run_dir: Path, record: dict) -> None:
    write_json(run_dir / WANDB_RUN, record)


def read_wandb_run(run_dir: Path) -> dict | None:
    """What write_wandb_run recorded, or None for a run that never logged to W&B."""
    path = Path(run_dir) / WANDB_RUN
    return read_json(path) if path.is_file() else None


def save_checkpoint(run_dir: Path, state: dict) -> None:
    import torch

    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: Path, map_location, advice: str) -> dict:
    """A checkpoint file's contents; a truncated, corrupt or foreign file is a UserError ending in advice."""
    import torch

    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a damaged file fails in the zip reader, the unpickler or a storage, each its own way
        reason = (str(e).strip() or "no details").splitlines()[0].split(". ")[0]
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: {reason}); {advice}") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint] if isinstance(checkpoint, dict) else CHECKPOINT_KEYS
    if missing:
        raise UserError(f"{path} is not a training checkpoint (no {', '.join(missing)}); {advice}")
    return checkpoint


def load_checkpoint(run_dir: Path, config, dtype) -> dict:
    """The run's training checkpoint (on the CPU), which must come from config's settings and have trained
    in the autocast dtype (None: fp32) that the resume would use."""
    checkpoint = read_checkpoint(
        run_dir / CHECKPOINT, "cpu", "restore it from a copy, or start afresh with --overwrite instead of --resume"
    )
    saved = configs.saved_fields(checkpoint["config"])
    defaults = {f.name: f.default for f in dataclasses.fields(config)}  # for fields added since it was saved
    changed = sorted(
        k
        for k, v in dataclasses.asdict(config).items()
        if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v
    )
    if changed:
        raise UserError(
            f"--resume: the checkpoint was trained with other {', '.join(changed)};"
            f" resume with the same settings or start a new run with --name"
        )
    trained, resumed = trained_autocast_dtype(checkpoint), precision.dtype_name(dtype)
    if trained != resumed:
        # --amp-dtype auto resolves by device (fp16 on CUDA, bf16 on the CPU): a run moved between them would
        # change its arithmetic, and a bf16 run's disabled gradient scaler has no state for fp16's.
        flag = precision.AMP_DTYPE_FLAGS[trained]
        raise UserError(
            f"--resume: the checkpoint was trained with {flag} autocast; this resume would use"
            f" {precision.AMP_DTYPE_FLAGS[resumed]}: add --amp-dtype {flag} to keep it"
        )
    return checkpoint


def trained_autocast_dtype(checkpoint: dict) -> str | None:
    """The autocast dtype a checkpoint trained in, as precision.dtype_name writes it. Checkpoints from before
    it was recorded: none for fp32, and for AMP fp16 exactly when the gradient scaler has state (step.py
    enables it for fp16 only; a disabled one saves an empty state)."""
    if "autocast_dtype" in checkpoint:
        return checkpoint["autocast_dtype"]
    if checkpoint["config"]["precision"] == "fp32":
        return None
    return "float16" if checkpoint["scaler"] else "bfloat16"


def model_format(model_kind: str, int8_trained: bool) -> str:
    """The MODEL_FILES format of a model of model_kind: a NeRF that trained int8 layers (exp7) exports them as int8."""
    return "int8" if model_kind == "nerf" and int8_trained else model_kind


def write_model_file(run_dir: Path, model, model_kind: str, dtype) -> Path:
    """The deployable weights, in the format of what model trains (model_format): BitNeRF's packed ternary export;
    for a NeRF trained in int8 the same export, its int8 layers' int8 weights with their scales; else the state dict
    in the compute dtype (all without the occupancy grid's training state, nerf.deployable_state).

    A NeRF trained in fp8 stores its fp32 weights: torchao's float8 training casts them to fp8, with scales taken
    from them, at every forward pass, and has no layer that would compute that forward from stored fp8 weights and
    scales bit for bit, so the fp32 weights in its float8 layers (rundir.load_model_file) are what renders exactly
    what the run rendered."""
    import torch

    import bitnerf
    import nerf

    file_format = model_format(model_kind, bool(bitnerf.int8_linears(model)))
    path = run_dir / MODEL_FILES[file_format]
    if file_format != "nerf":
        bitnerf.export_ternary(model, path)
    else:
        weights = {
            k: v.to(dtype or torch.float32) if v.is_floating_point() else v
            for k, v in nerf.deployable_state(model).items()
        }
        atomic_write(path, lambda tmp: torch.save(weights, tmp))
    return path


def load_model_file(run_dir: Path, config, scene, device):
    """A finished run's model from its deployable weights file (write_model_file's), in eval mode: an integer export
    (BitNeRF's, int8 training's) fills an unconverted model with IntegerLinear layers (bitnerf.load_ternary), a state
    dict the model config builds (fp8 training: torchao's float8 layers over the stored fp32 weights)."""
    import torch

    import bitnerf
    import nerf

    file_format = model_format(config.model, config.quantized_training == "int8")
    path = Path(run_dir) / MODEL_FILES[file_format]
    if not path.is_file():
        raise UserError(
            f"no {path.name} in {run_dir}: the run did not finish; use its checkpoint (render.py --weights checkpoint)"
        )
    try:
        if file_format != "nerf":
            model = bitnerf.load_ternary(path, bitnerf.build_model(config, scene, device, quantized=False))
        else:
            model = bitnerf.build_model(config, scene, device)
            nerf.load_deployable_state(model, torch.load(path, map_location=device, weights_only=True))
    except (OSError, RuntimeError, KeyError, EOFError) as e:
        raise UserError(f"{path} is not a readable weights file ({type(e).__name__}); train the run again") from None
    return model.to(device).eval()


def load_trained(run_dir: Path, data: str | None, device):
    """A finished run's config, scene (its own, or data) and model with the checkpoint's weights, in eval mode."""
    import bitnerf
    from dataset import load_scene

    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: give a run directory that an expN.py run wrote")
    checkpoint = read_checkpoint(path, device, "restore it from a copy, or train the run again (expN.py --overwrite)")
    saved = configs.saved_fields(checkpoint["config"])
    config = configs.ExperimentConfig(**{**saved, "data": data or saved["data"]})
    scene = load_scene(config.data, config.downscale, config.val_views)
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


def read_ptq(run_dir: Path) -> list[dict]:
    """ptq.py's rows in the run's ptq.json, one per variant; none where ptq.py has not run on it."""
    path = Path(run_dir) / PTQ
    return read_json(path) if path.is_file() else []


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
