"""The one training loop behind every experiment.

`python expN.py [options]` calls `main("expN")`: parse the command line into an ExperimentConfig, load
the scene, build the model, train with optional AMP and torch.compile, evaluate on the test views, and
write the run directory (summary.json, layers.json, metrics.csv, checkpoint.pt, renders, depth maps,
video). Read it top to bottom: setup, the loop, then the final evaluation.
"""

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import bitnerf
import bitnerf_ddp
import configs
from configs import ExperimentConfig
from dataset import RaySampler, Scene, get_rays, load_scene
from nerf import NeRF, render_image
from utils import (Stopwatch, UserError, atomic_torch_save, colorize_depth, exit_on_user_error, peak_memory_bytes,
                   pose_spherical, psnr, resolve_device, ssim, to_uint8, write_video)

METRIC_COLUMNS = ("step", "wall_s", "loss", "psnr_train", "grad_norm", "lr", "samples_per_s", "psnr_test")
# Config fields that may change when a run is resumed; any other change would make it a different run.
RESUMABLE_CHANGES = {"steps", "out", "device", "wandb", "log_every", "eval_every", "eval_views",
                     "ckpt_every", "video_frames", "chunk"}


def main(name: str, argv: list[str] | None = None) -> None:
    """Entry point of `expN.py`: bad input is one line on stderr and exit code 2, never a traceback.

    A distributed experiment started with plain python checks its input, then relaunches itself
    under torchrun.
    """
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        config, args = configs.parse_args(name, argv)
        if config.distributed and not bitnerf_ddp.under_torchrun():
            load_scene(config.data, config.downscale)
            check_run_dir(config, args.resume, args.overwrite)
            nproc = args.nproc or bitnerf_ddp.default_nproc(config.device)
            code = bitnerf_ddp.launch(sys.argv[0], argv, nproc, config.device)
            if code not in (0, 130):
                raise SystemExit(f"error: {name} failed in one of its {nproc} processes (torchrun exit code {code});"
                                 f" its message is above")
            sys.exit(code)
        run(config, resume=args.resume, overwrite=args.overwrite)


def amp_dtype(config: ExperimentConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. CPU autocast runs fp16 ~14x slower than fp32, so 'auto' picks bf16 there."""
    if config.precision == "fp32":
        return None
    if config.amp_dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[config.amp_dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to dtype, or a no-op context for fp32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def precision_name(config: ExperimentConfig, device: torch.device) -> str:
    if config.model == "bitnerf":
        return "ternary-int8"
    dtype = amp_dtype(config, device)
    return "fp32" if dtype is None else {torch.float16: "fp16-amp", torch.bfloat16: "bf16-amp"}[dtype]


def build_model(config: ExperimentConfig, scene: Scene, device: torch.device) -> NeRF:
    """NeRF, or for BitNeRF the same topology from RMSNormLinear layers converted by torchao."""
    constructor = bitnerf.bitnerf if config.model == "bitnerf" else NeRF
    model = constructor(
        near=scene.near, far=scene.far, white_bkgd=scene.white_bkgd, n_coarse=config.n_coarse,
        n_fine=config.n_fine, depth=config.depth, width=config.width,
        pos_freqs=config.pos_freqs, dir_freqs=config.dir_freqs, skips=config.skips,
        use_viewdirs=config.use_viewdirs,
    ).to(device)
    return bitnerf.to_bitnet(model, config.quantize_heads) if config.model == "bitnerf" else model


def load_trained(run_dir: Path, data: str | None, device: torch.device) -> tuple[ExperimentConfig, Scene, NeRF]:
    """A finished run's config, scene (its own, or data) and model with the checkpoint's weights, in eval mode."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: give a run directory that an expN.py run wrote")
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    saved = {**checkpoint["config"], "skips": tuple(checkpoint["config"]["skips"])}
    config = ExperimentConfig(**{**saved, "data": data or saved["data"]})
    scene = load_scene(config.data, config.downscale)
    model = build_model(config, scene, device)
    model.load_state_dict(checkpoint["model"])
    return config, scene, model.eval()


def check_run_dir(config: ExperimentConfig, resume: bool, overwrite: bool) -> Path:
    """The run directory, if the flags allow training into it."""
    run_dir = Path(config.out) / config.name
    if resume:
        if not (run_dir / "checkpoint.pt").exists():
            raise UserError(f"--resume: no checkpoint at {run_dir / 'checkpoint.pt'}; drop --resume to start afresh")
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise UserError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace it,"
                        f" or --name for a new one")
    return run_dir


def prepare_run_dir(config: ExperimentConfig, resume: bool, overwrite: bool) -> Path:
    run_dir = check_run_dir(config, resume, overwrite)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def load_checkpoint(path: Path, config: ExperimentConfig, model, optimizer, scheduler, scaler) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = checkpoint["config"]
    changed = sorted(k for k, v in dataclasses.asdict(config).items()
                     if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        raise UserError(f"--resume: the checkpoint was trained with other {', '.join(changed)};"
                        f" resume with the same settings or start a new run with --name")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    return checkpoint


class MetricsLog:
    """metrics.csv, one row per logged step; a resumed run drops the rows after its checkpoint."""

    def __init__(self, path: Path, start_step: int):
        rows = []
        if start_step > 0 and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
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


def init_wandb(config: ExperimentConfig, run_dir: Path, run_id: str, summary_fields: dict):
    """A W&B run, or None. The key comes from the environment only; without one, runs stay offline."""
    mode = config.wandb
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "nerf-experiments"),
        group=os.environ.get("WANDB_RUN_GROUP", config.out),
        name=config.name, dir=str(run_dir), mode=mode, resume="allow",
        id=run_id,  # new for a new run, kept in the checkpoint so that --resume continues the same W&B run
        config={**dataclasses.asdict(config), **summary_fields},
    )


def test_rays(scene: Scene, view: int, device: torch.device):
    return get_rays(scene.height, scene.width, scene.focal, torch.from_numpy(scene.poses[view]).to(device))


def evaluate(model: NeRF, scene: Scene, views, config, device, autocast_dtype) -> list[dict]:
    """Render test views; returns per view the rendered rgb/depth and its PSNR against the ground truth."""
    model.eval()
    results = []
    with autocast(device, autocast_dtype):
        for view in views:
            rendered = render_image(model, *test_rays(scene, view, device), config.chunk)
            target = torch.from_numpy(scene.images[view]).to(device)
            results.append({"view": int(view), **rendered, "psnr": psnr(rendered["rgb"], target)})
    model.train()
    return results


def build_optimizer(config: ExperimentConfig, model: nn.Module, device: torch.device, autocast_dtype):
    """AdamW, its exponential learning-rate decay from lr to lr_final over the run, and the gradient scaler."""
    # Fused: one kernel per parameter tensor instead of about a dozen small ops, 3.5 -> 0.7 ms a step for
    # the quick model on 2 CPU cores (BENCHMARKS.md); the same update up to rounding.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    decay = config.lr_final / config.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay ** min(step / config.steps, 1.0))
    # Gradient scaling guards fp16's narrow exponent range; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    return optimizer, scheduler, scaler


def run(config: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one experiment and write its run directory; returns summary.json's contents (on rank 0)."""
    ranks = bitnerf_ddp.init(config.device, config.distributed)
    try:
        return train(config, ranks, resume, overwrite)
    finally:
        bitnerf_ddp.shutdown()


def train_step(step_model: nn.Module, batch, optimizer, scheduler, scaler, config: ExperimentConfig,
               device: torch.device, autocast_dtype) -> dict[str, torch.Tensor]:
    """One optimizer step on this rank's share of the batch; step_model is the DDP module when distributed.

    The loss is the mean over this rank's rays; DDP averages the gradients of equal shares, which is the
    gradient of the mean over the global batch.
    """
    with autocast(device, autocast_dtype):
        out = step_model(batch.origins, batch.dirs, batch.jitter)
    fine_mse = F.mse_loss(out["rgb"], batch.rgb)
    loss = fine_mse + F.mse_loss(out["rgb_coarse"], batch.rgb) if config.n_fine > 0 else fine_mse
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(step_model.parameters(), config.grad_clip or math.inf)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {"loss": loss.detach(), "fine_mse": fine_mse.detach(), "grad_norm": grad_norm.detach()}


def train(config: ExperimentConfig, ranks: bitnerf_ddp.Ranks, resume: bool, overwrite: bool) -> dict:
    run_start = time.perf_counter()
    device = ranks.device
    compiled = compiles(config, device)
    scene = load_scene(config.data, config.downscale)
    run_dir = prepare_run_dir(config, resume, overwrite) if ranks.is_main else Path(config.out) / config.name
    bitnerf_ddp.barrier()
    autocast_dtype = amp_dtype(config, device)
    precision = precision_name(config, device)

    torch.manual_seed(config.seed)
    model = build_model(config, scene, device)
    optimizer, scheduler, scaler = build_optimizer(config, model, device, autocast_dtype)

    start_step, prior_wall, wandb_id = 0, 0.0, f"{config.name}-{uuid.uuid4().hex[:8]}"
    train_clock = Stopwatch(device)
    if resume:
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt", config, model, optimizer, scheduler, scaler)
        start_step, prior_wall, train_clock.elapsed = checkpoint["step"], checkpoint["wall_s"], checkpoint["train_s"]
        wandb_id = checkpoint.get("wandb_id", wandb_id)
    if compiled:
        for field in (model.coarse, model.fine):
            if field is not None:
                field.compile(fullgraph=True)
    step_model = bitnerf_ddp.wrap(model, ranks)

    sampler = RaySampler(scene, device, config.batch_rays, config.seed,
                         jitter_samples=config.jitter_per_ray,
                         rank=ranks.rank, world_size=ranks.world_size)
    n_params = sum(p.numel() for p in model.parameters())
    wandb_run = metrics = None
    if ranks.is_main:
        wandb_run = init_wandb(config, run_dir, wandb_id,
                               {"precision": precision, "params": n_params, "scene": scene.name,
                                "world_size": ranks.world_size})
        metrics = MetricsLog(run_dir / "metrics.csv", start_step)
    samples_per_step = config.batch_rays * config.samples_per_ray

    def wall_s() -> float:
        return prior_wall + time.perf_counter() - run_start

    def save_checkpoint(next_step: int) -> None:
        atomic_torch_save({
            "step": next_step, "wall_s": wall_s(), "train_s": train_clock.elapsed, "wandb_id": wandb_id,
            "config": dataclasses.asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        }, str(run_dir / "checkpoint.pt"))

    if ranks.is_main:
        print(f"{config.name}: {scene.name} {scene.width}x{scene.height}, {len(scene.i_train)} train / "
              f"{len(scene.i_test)} test views, {n_params / 1e6:.2f}M params, {precision} on {device}"
              f"{f' x {ranks.world_size} processes' if ranks.world_size > 1 else ''}, run dir {run_dir}")
    model.train()
    last_log_train_s, last_log_step = train_clock.elapsed, start_step
    progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc=config.name,
                    dynamic_ncols=True, disable=None if ranks.is_main else True)
    step = start_step
    try:
        for step in progress:
            with train_clock:
                stats = train_step(step_model, sampler.batch(step), optimizer, scheduler, scaler, config, device,
                                   autocast_dtype)

            done = step + 1
            row = {}
            if done % config.log_every == 0 or done == config.steps:
                loss, fine_mse = bitnerf_ddp.mean_across_ranks(torch.stack([stats["loss"], stats["fine_mse"]])).tolist()
                interval = train_clock.elapsed - last_log_train_s
                row = {"step": done, "wall_s": round(wall_s(), 3), "loss": loss,
                       "psnr_train": -10.0 * math.log10(max(fine_mse, 1e-10)),
                       "grad_norm": stats["grad_norm"].item(), "lr": scheduler.get_last_lr()[0],
                       "samples_per_s": samples_per_step * (done - last_log_step) / max(interval, 1e-9)}
                last_log_train_s, last_log_step = train_clock.elapsed, done
                progress.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr_train']:.2f}")
            if not ranks.is_main:
                continue
            if done % config.eval_every == 0 and done < config.steps:
                with bitnerf_ddp.main_rank_alone(ranks):
                    results = evaluate(model, scene, scene.i_test[: config.eval_views], config, device, autocast_dtype)
                row = {**row, "step": done, "wall_s": round(wall_s(), 3),
                       "psnr_test": float(np.mean([r["psnr"] for r in results]))}
                if wandb_run:
                    import wandb

                    wandb_run.log({"test/render": wandb.Image(to_uint8(results[0]["rgb"])),
                                   "test/depth": wandb.Image(colorize_depth(results[0]["depth"], scene.near,
                                                                            scene.far))}, step=done)
            if row:
                metrics.write(row)
                if wandb_run:
                    wandb_run.log({("test/psnr" if k == "psnr_test" else f"train/{k}"): v
                                   for k, v in row.items() if k != "step"}, step=done)
            if done % config.ckpt_every == 0 or done == config.steps:
                save_checkpoint(done)
    except KeyboardInterrupt:
        if not ranks.is_main:
            sys.exit(130)
        save_checkpoint(step)
        metrics.close()
        if wandb_run:
            wandb_run.finish(exit_code=130)
        print(f"\ninterrupted at step {step}; checkpoint saved, continue with --resume", file=sys.stderr)
        sys.exit(130)
    progress.close()
    peak_mem = bitnerf_ddp.sum_across_ranks(peak_memory_bytes(device), device)
    if not ranks.is_main:
        return {}
    metrics.close()

    with bitnerf_ddp.main_rank_alone(ranks):
        summary = finish(config, model, scene, run_dir, device, autocast_dtype, precision, wandb_run)
    summary.update({
        "world_size": ranks.world_size,
        "steps": config.steps, "wall_s": round(wall_s(), 2), "train_s": round(train_clock.elapsed, 2),
        "train_samples_per_s": round(samples_per_step * config.steps / max(train_clock.elapsed, 1e-9)),
        "peak_mem_bytes": peak_mem,
        "params": n_params, "checkpoint_bytes": (run_dir / "checkpoint.pt").stat().st_size,
    })
    write_json(run_dir / "summary.json", summary)
    if wandb_run:
        wandb_run.summary.update(summary)
        wandb_run.finish()
    print(f"{config.name}: test PSNR {summary['psnr_test']:.2f} dB, SSIM {summary['ssim_test']:.3f}, "
          f"{summary['train_samples_per_s']:,} samples/s, wall {summary['wall_s']:.0f} s -> {run_dir}")
    return summary


def finish(config, model, scene, run_dir, device, autocast_dtype, precision, wandb_run) -> dict:
    """Final evaluation on every test view, renders, depth maps, layers.json, the video and the model file."""
    results = evaluate(model, scene, scene.i_test, config, device, autocast_dtype)
    (run_dir / "renders").mkdir(exist_ok=True)
    ssims = []
    for r in results:
        target = torch.from_numpy(scene.images[r["view"]]).to(device)
        ssims.append(ssim(r["rgb"], target))
        iio.imwrite(run_dir / "renders" / f"rgb_{r['view']:03d}.png", to_uint8(r["rgb"]))
        iio.imwrite(run_dir / "renders" / f"gt_{r['view']:03d}.png", to_uint8(target))
        iio.imwrite(run_dir / "renders" / f"depth_{r['view']:03d}.png", colorize_depth(r["depth"], scene.near, scene.far))
    video = render_video(model, scene, config, device, autocast_dtype, run_dir / "video")
    write_json(run_dir / "layers.json", describe_layers(model, scene, config, device, autocast_dtype))
    model_path = write_model_file(model, config, run_dir, autocast_dtype)
    if wandb_run:
        import wandb

        wandb_run.log({"video": wandb.Video(video[-1], format=Path(video[-1]).suffix[1:])})
    return {
        "experiment": config.name, "model": config.model, "precision": precision,
        "global_batch_rays": config.batch_rays,
        "psnr_test": round(float(np.mean([r["psnr"] for r in results])), 3),
        "ssim_test": round(float(np.mean(ssims)), 4),
        "psnr_test_per_view": [round(r["psnr"], 3) for r in results],
        "weight_bits": 1.58 if config.model == "bitnerf" else 16 if autocast_dtype else 32,
        "model_bytes": model_path.stat().st_size,
        "scene": scene.name, "device": str(device), "torch_version": torch.__version__,
    }


def render_video(model, scene, config, device, autocast_dtype, path_stem: Path) -> list[str]:
    """A 360-degree orbit at the training cameras' median radius and elevation."""
    centres = scene.poses[scene.i_train, :3, 3]
    radius = float(np.median(np.linalg.norm(centres, axis=-1)))
    elevation = float(np.degrees(np.median(np.arcsin(np.clip(centres[:, 2] / radius, -1, 1)))))
    frames = []
    model.eval()
    with autocast(device, autocast_dtype):
        for theta in tqdm(np.linspace(0.0, 360.0, config.video_frames, endpoint=False), desc="video",
                          leave=False, disable=None):
            c2w = torch.from_numpy(pose_spherical(theta, -elevation, radius)).to(device)
            rendered = render_image(model, *get_rays(scene.height, scene.width, scene.focal, c2w), config.chunk)
            frames.append(np.concatenate([to_uint8(rendered["rgb"]),
                                          colorize_depth(rendered["depth"], scene.near, scene.far)], axis=1))
    model.train()
    return write_video(str(path_stem), frames)


def write_model_file(model: NeRF, config: ExperimentConfig, run_dir: Path, autocast_dtype) -> Path:
    """The deployable weights: BitNeRF's packed ternary export, else the state dict in the compute dtype."""
    if config.model == "bitnerf":
        path = run_dir / "model_ternary.pt"
        bitnerf.export_ternary(model, path)
        return path
    path = run_dir / "model.pt"
    deploy_dtype = autocast_dtype or torch.float32
    atomic_torch_save({k: v.to(deploy_dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()},
                      str(path))
    return path


def layer_bits(module: nn.Linear, autocast_dtype) -> dict[str, int]:
    """Bits of a Linear layer's weight, input and output as the run computes them.

    A BitNet layer multiplies 2-bit packed ternary weights by int8 inputs and accumulates in int32,
    then rescales to the float output.
    """
    bits = 16 if autocast_dtype else 32
    if isinstance(module.weight, bitnerf.BitNetTrainingLinearWeight):
        return {"weight_bits": 2, "input_bits": 8, "output_bits": bits}
    return {"weight_bits": bits, "input_bits": bits, "output_bits": bits}


def compiles(config: ExperimentConfig, device: torch.device) -> bool:
    """Whether to torch.compile the radiance fields: --compile on/off, and auto compiles BitNeRF's.

    BitNet's quantization is many small elementwise ops that inductor fuses: on 2 CPU cores it trains
    at 1.8x the samples/s and evaluates 2.6x faster after about 30 s of compilation (BENCHMARKS.md).
    NeRF's step is matmul-bound and ran 1.3-2x slower compiled on the CPU. On the CPU inductor
    builds C++, so auto needs a compiler there and on refuses to start without one.
    """
    compiler = os.environ.get("CXX", "g++")  # what inductor builds its CPU kernels with
    has_compiler = device.type != "cpu" or shutil.which(compiler) is not None
    if config.compile == "on" and not has_compiler:
        raise UserError(f"--compile on needs a C++ compiler on the CPU ({compiler} is not on "
                        f"the PATH): install one (apt-get install g++) or use --compile off")
    return config.compile == "on" or (config.compile == "auto" and config.model == "bitnerf" and has_compiler)


@torch.no_grad()
def describe_layers(model: NeRF, scene: Scene, config, device, autocast_dtype) -> dict:
    """Every Linear layer in execution order with its shape, bitwidths and measured input sparsity.

    Sparsity is the fraction of exactly-zero inputs over one chunk of rays of the first test view.
    """
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    zeros: dict[str, list[float]] = {}

    def hook(module, inputs, output):
        x = inputs[0]
        zeros.setdefault(names[module], [0.0, 0.0])
        zeros[names[module]][0] += (x == 0).sum().item()
        zeros[names[module]][1] += x.numel()

    handles = [m.register_forward_hook(hook) for m in names]
    origins, dirs = test_rays(scene, scene.i_test[0], device)
    model.eval()
    # Eager: a compiled field runs its Linear layers inside one graph, past their hooks.
    with autocast(device, autocast_dtype), torch.compiler.set_stance("force_eager"):
        model(origins.reshape(-1, 3)[: config.chunk], dirs.reshape(-1, 3)[: config.chunk])
    model.train()
    for h in handles:
        h.remove()
    frame_rays = 800 * 800
    per_ray = model.samples_per_ray()
    layers = []
    for name in zeros:  # dicts keep insertion order: the order the hooks fired
        module = model.get_submodule(name)
        layers.append({
            "name": name, "in_features": module.in_features, "out_features": module.out_features,
            **layer_bits(module, autocast_dtype),
            "input_sparsity": round(zeros[name][0] / zeros[name][1], 4),
            "samples_per_frame": frame_rays * per_ray[name.split(".")[0]],
        })
    return {"samples_per_frame": frame_rays * sum(per_ray.values()), "layers": layers}


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
