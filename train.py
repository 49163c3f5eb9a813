"""The one training loop behind every experiment.

`python expN.py [options]` calls `main("expN")`: parse the command line into an ExperimentConfig, load
the scene, build the model, train with optional AMP and torch.compile, evaluate on the test views, and
write the run directory (rundir.py: summary.json, layers.json, metrics.csv, checkpoint.pt, renders,
depth maps, video). Read it top to bottom: the entry point, setup, the loop, then the final evaluation.
Faults end a run with one line and what to do (README, "Faults and recovery"): SIGINT and SIGTERM stop it
between two steps with a checkpoint, running out of memory saves one and names the option to lower
(faults.py). Nothing imports this file for helpers: what the loop shares with other commands lives in
step.py (the optimizer step), evaluation.py (rendering and metrics), rundir.py (the files) and runlog.py
(metrics.csv and W&B).
"""

import dataclasses
import math
import os
import signal
import sys
import time
import uuid

import numpy as np
import torch
from tqdm import tqdm

import bitnerf
import bitnerf_ddp
import configs
import measured
import plan
import precision
import rundir
from configs import ExperimentConfig
from dataset import RaySampler, load_scene
from evaluation import Evaluation
from faults import OutOfMemory, StopSignals, sized_by
from runlog import RunLog
from step import Optimization, train_step
from utils import (Stopwatch, UserError, exit_on_user_error, peak_memory_bytes, peak_reserved_bytes, resolve_device,
                   write_json)

def main(name: str, argv: list[str] | None = None) -> None:
    """Entry point of `expN.py`: bad input is one line on stderr and exit code 2, never a traceback.

    `--seeds S,S,...` trains one run per seed in turn (configs.seed_argvs) and stops at the first that fails;
    `--plan [PROFILE]` prints the run's plan (plan.py) and trains nothing.
    """
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        config, args = configs.parse_args(name, argv)
        if args.plan is not None:
            plan.print_plan(config, args.plan, args.nproc)
            return
        for run_argv in configs.seed_argvs(argv, args.seeds, config.name) if args.seeds else [argv]:
            if code := train_command(name, run_argv):
                sys.exit(code)


def train_command(name: str, argv: list[str]) -> int:
    """One run of `expN.py argv`; returns its exit code.

    A distributed experiment started with plain python checks its input and takes the run directory's
    lock, then relaunches itself under torchrun, whose rank 0 trains under that lock.
    """
    config, args = configs.parse_args(name, argv)
    if not config.distributed or bitnerf_ddp.under_torchrun():
        run(config, resume=args.resume, overwrite=args.overwrite)
        return 0
    device = resolve_device(config.device)
    nproc = bitnerf_ddp.launch_nproc(args.nproc, device)
    scene = load_scene(config.data, config.downscale, config.val_views)
    if device.type == "cpu":
        # CPU ranks share this machine's memory: plan here once, refusing what cannot run in one line rather
        # than one per rank. (A GPU rank plans on its own GPU; probing here would hold a CUDA context through
        # the whole run.)
        plan.plan_run(config, scene, plan.local_target(device), nproc, nproc)
    with rundir.RunLock(rundir.path_of(config)) as lock:
        run_dir = rundir.check(config, args.resume, args.overwrite)
        if args.resume:
            # A bad checkpoint: one line here, not one per rank.
            rundir.load_checkpoint(run_dir, config, precision.amp_dtype(config, device))
        lock.share_with_children()
        code = bitnerf_ddp.launch(sys.argv[0], argv, nproc, config.device, args.max_restarts)
    if code not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise SystemExit(f"error: {name} failed in one of its {nproc} processes (torchrun exit code {code});"
                         f" its message is above")
    return code


def run(config: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one experiment and write its run directory; returns summary.json's contents (on rank 0).

    Rank 0 holds the run directory's lock until this returns or exits; SIGINT and SIGTERM stop the run
    (StopSignals)."""
    ranks = bitnerf_ddp.init(config.device, config.distributed)
    lock = rundir.RunLock(rundir.path_of(config))
    try:
        with StopSignals() as stop:
            return train(config, ranks, resume, overwrite, lock, stop)
    finally:
        lock.release()
        bitnerf_ddp.shutdown()


def train(config: ExperimentConfig, ranks: bitnerf_ddp.Ranks, resume: bool, overwrite: bool, lock: rundir.RunLock,
          stop: StopSignals) -> dict:
    # --- Setup: the run directory, the model, its optimizer, the rays -------------------------------
    run_start = time.perf_counter()
    device = ranks.device
    precision.set_float32_matmul(config.tf32)
    scene = load_scene(config.data, config.downscale, config.val_views)
    if restarts := bitnerf_ddp.restart_count():
        # torchrun restarted the job after a process died (--max-restarts): the run directory is this job's
        # own, so continue from its last checkpoint, or start again where it has none yet.
        resume = (rundir.path_of(config) / rundir.CHECKPOINT).exists()
        overwrite = not resume
        if ranks.is_main:
            print(f"{config.name}: restart {restarts} after a process died;"
                  f" {'resuming from the last checkpoint' if resume else 'no checkpoint yet, starting again'}",
                  file=sys.stderr)
    # The device rules, the compile decision, the int8 kernel and the micro-batches, before the run directory is
    # touched; CPU ranks of one machine share its memory, GPU ranks have one each.
    run_plan = plan.plan_run(config, scene, plan.local_target(device), ranks.world_size,
                             int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1, device)
    compiled, micro_batch_rays = run_plan.compiled, run_plan.micro_batch_rays
    if run_plan.int8_kernel:
        bitnerf.use_int8_kernel(run_plan.int8_kernel, device)  # process-wide: torchao keeps it in a module global
    for warning in run_plan.warnings if ranks.is_main else ():
        print(f"warning: {warning}", file=sys.stderr)
    run_dir = rundir.prepare(config, resume, overwrite, lock) if ranks.is_main else rundir.path_of(config)
    bitnerf_ddp.barrier()
    evaluation = Evaluation.of(config, scene, device, run_dir)

    torch.manual_seed(config.seed)
    model = bitnerf.build_model(config, scene, device)
    optimization = Optimization.build(config, model, device, evaluation.dtype)

    start_step, prior_wall, prior_compile_s, wandb_id = 0, 0.0, 0.0, f"{config.name}-{uuid.uuid4().hex[:8]}"
    train_clock = Stopwatch(device)
    if resume:
        checkpoint = rundir.load_checkpoint(run_dir, config, evaluation.dtype)
        model.load_state_dict(checkpoint["model"])
        optimization.load_state_dict(checkpoint)
        start_step, prior_wall, train_clock.carried_s = checkpoint["step"], checkpoint["wall_s"], checkpoint["train_s"]
        prior_compile_s, wandb_id = checkpoint.get("compile_s", 0.0), checkpoint.get("wandb_id", wandb_id)
    if compiled:
        for field in (model.coarse, model.fine):
            if field is not None:
                field.compile(fullgraph=True)
    step_model = bitnerf_ddp.wrap(model, ranks)

    sampler = RaySampler(scene, device, config.batch_rays, config.seed, jitter_samples=config.jitter_per_ray,
                         rank=ranks.rank, world_size=ranks.world_size)
    n_params = sum(p.numel() for p in model.parameters())
    precision_name = precision.precision_name(config.model, evaluation.dtype)
    log = None
    if ranks.is_main:
        log = RunLog(config, run_dir, wandb_id, start_step, {"precision": precision_name, "params": n_params,
                                                             "scene": scene.name, "world_size": ranks.world_size})
        print(f"{config.name}: {scene.name} {scene.width}x{scene.height}, {len(scene.i_train)} train / "
              f"{len(scene.i_test)} test views, {n_params / 1e6:.2f}M params, {precision_name} on {device}"
              f"{f' x {ranks.world_size} processes' if ranks.world_size > 1 else ''}"
              + (f", {run_plan.micro_batches} micro-batches of {micro_batch_rays} rays" if run_plan.micro_batches > 1
                 else "") +
              f", run dir {run_dir}")
    samples_per_step = config.batch_rays * config.samples_per_ray

    def wall_s() -> float:
        return prior_wall + time.perf_counter() - run_start

    def compile_s() -> float:
        """The compilation inside train_clock: each process's first step, which compiles, over its mean step."""
        return prior_compile_s + (train_clock.first_block_excess() if compiled else 0.0)

    def save_checkpoint(next_step: int) -> None:
        rundir.save_checkpoint(run_dir, {
            "step": next_step, "wall_s": wall_s(), "train_s": train_clock.elapsed, "compile_s": compile_s(),
            "wandb_id": wandb_id, "autocast_dtype": precision.dtype_name(evaluation.dtype),
            "config": dataclasses.asdict(config), "model": model.state_dict(), **optimization.state_dict(),
        })

    # The census sees one training step's matmuls from Python (eagerly): the run's first step, or a compiled
    # run's second, since its first compiles (compile_s); the same step however the run is resumed.
    census_step = 1 if compiled and config.steps > 1 else 0

    # --- The loop ---------------------------------------------------------------------------------
    model.train()
    last_log_train_s, last_log_step = train_clock.elapsed, start_step
    progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc=config.name,
                    dynamic_ncols=True, disable=None if ranks.is_main else True)
    applied, signum = start_step, 0  # applied: the optimizer steps taken, which a checkpoint saved now records
    try:
        for step in progress:
            # Every rank asks between the same two steps whether any got a stop signal, so that all stop there.
            if signum := bitnerf_ddp.max_across_ranks(stop.signum):
                break
            census = measured.MatmulCensus(model, enabled=step == census_step)
            with train_clock, sized_by("--micro-batch-rays", micro_batch_rays):
                model.update_occupancy(step)  # outside the census: the grid's queries are not the step's matmuls
                with census:
                    stats = train_step(step_model, sampler.batch(step), optimization, config, evaluation.autocast,
                                       micro_batch_rays if run_plan.micro_batches > 1 else 0)
            if census.enabled:
                census.check(config, evaluation.dtype, "the training step")

            applied = done = step + 1
            row = {}
            if done % config.log_every == 0 or done == config.steps:
                loss, fine_mse = bitnerf_ddp.mean_across_ranks(torch.stack([stats["loss"], stats["fine_mse"]])).tolist()
                interval = train_clock.elapsed - last_log_train_s
                row = {"step": done, "wall_s": round(wall_s(), 3), "loss": loss,
                       "psnr_train": -10.0 * math.log10(max(fine_mse, 1e-10)),
                       "grad_norm": stats["grad_norm"].item(), "lr": optimization.lr(),
                       "samples_per_s": samples_per_step * (done - last_log_step) / max(interval, 1e-9)}
                last_log_train_s, last_log_step = train_clock.elapsed, done
                progress.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr_train']:.2f}")
            if done % config.eval_every == 0 and done < config.steps:
                split, views = scene.monitored_views()  # validation views where the scene has them
                with sized_by("--chunk", config.chunk):  # every rank renders its share; rank 0 gets the results
                    results = evaluation.test_views(model, views[: config.eval_views])
                if ranks.is_main:
                    row = {**row, "step": done, "wall_s": round(wall_s(), 3),
                           f"psnr_{split}": float(np.mean([r["psnr"] for r in results]))}
                    log.render(results[0], scene, step=done)
            if not ranks.is_main:
                continue
            if row:
                log.row(row)
            if done % config.ckpt_every == 0 or done == config.steps:
                save_checkpoint(done)
        else:
            signum = bitnerf_ddp.max_across_ranks(stop.signum)
    except KeyboardInterrupt:  # raised by code: the signal itself only sets stop.signum
        signum = signal.SIGINT
    except OutOfMemory as e:
        if not ranks.is_main:
            raise UserError(e.message(f"rank {ranks.rank}, the last checkpoint is kept")) from None
        save_checkpoint(applied)
        log.close(exit_code=1)
        raise UserError(e.message(f"checkpoint saved at step {applied}")) from None
    if signum:
        if ranks.is_main:
            save_checkpoint(applied)
            log.close(exit_code=128 + signum)
            print(f"\ninterrupted ({signal.Signals(signum).name}) at step {applied}; checkpoint saved, continue"
                  f" with --resume", file=sys.stderr)
        sys.exit(128 + signum)
    progress.close()
    peak_mem = bitnerf_ddp.sum_across_ranks(peak_memory_bytes(device))
    peak_reserved = peak_reserved_bytes(device)
    peak_reserved = None if peak_reserved is None else bitnerf_ddp.sum_across_ranks(peak_reserved)

    # --- The final evaluation (every rank renders its share) and summary.json (rank 0) -------------
    stop.at_once = True
    try:
        with sized_by("--chunk", config.chunk):
            summary = finish(evaluation, model, log)
    except KeyboardInterrupt:
        signum = stop.signum or signal.SIGINT
        if ranks.is_main:
            log.close(exit_code=128 + signum)
            print(f"\ninterrupted ({signal.Signals(signum).name}) in the final evaluation; the checkpoint holds"
                  f" all {config.steps} steps, --resume evaluates it again", file=sys.stderr)
        sys.exit(128 + signum)
    except OutOfMemory as e:
        if ranks.is_main:
            log.close(exit_code=1)
        raise UserError(e.message(f"the checkpoint holds all {config.steps} steps")) from None
    stop.at_once = False  # all but summary.json is written: a signal now is only noted, and the run completes
    if not ranks.is_main:
        bitnerf_ddp.barrier()  # wait for rank 0's summary.json: every rank leaves the run together
        return {}
    summary.update({
        "world_size": ranks.world_size,
        "steps": config.steps, "wall_s": round(wall_s(), 2), "train_s": round(train_clock.elapsed, 2),
        "compile_s": round(compile_s(), 2),
        "train_samples_per_s": round(samples_per_step * config.steps / max(train_clock.elapsed - compile_s(), 1e-9)),
        "peak_mem_bytes": peak_mem, "peak_reserved_bytes": peak_reserved,
        "estimated_peak_bytes": run_plan.peak_bytes * ranks.world_size,
        "micro_batch_rays": micro_batch_rays, "micro_batches": run_plan.micro_batches,
        "params": n_params, "checkpoint_bytes": (run_dir / rundir.CHECKPOINT).stat().st_size,
    })
    write_json(run_dir / rundir.SUMMARY, summary)
    log.close(summary)
    print(f"{config.name}: test PSNR {summary['psnr_test']:.2f} dB, SSIM {summary['ssim_test']:.3f}, "
          f"{summary['train_samples_per_s']:,} samples/s, wall {summary['wall_s']:.0f} s -> {run_dir}")
    bitnerf_ddp.barrier()
    return summary


def finish(evaluation: Evaluation, model, log: RunLog | None) -> dict:
    """Every test view (metrics and renders) and validation view (metrics), the video, layers.json and the
    model file; returns the summary's fields that describe the trained model, its precision and weight bits
    as layers.json measured them. Under DDP every rank renders its share of the views and frames; rank 0 alone writes the files
    (the census renders one chunk), and the others return {}."""
    config, scene, run_dir = evaluation.config, evaluation.scene, evaluation.run_dir
    results = evaluation.test_views(model)
    validation = evaluation.test_views(model, scene.i_val) if scene.i_val.size else None
    video = evaluation.video(model)
    if results is None:
        return {}
    evaluation.write_test_views(results)
    layers = evaluation.layers(model, results)
    measured.check_layers(layers, config, evaluation.dtype, "the final evaluation")
    write_json(run_dir / rundir.LAYERS, layers)
    model_path = rundir.write_model_file(run_dir, model, config.model, evaluation.dtype)
    log.video(video[-1])
    return {
        "experiment": config.group or config.name, "seed": config.seed, "model": config.model,
        "precision": layers["precision"],
        "global_batch_rays": config.batch_rays, **evaluation.metrics(results),
        **({**evaluation.metrics(validation, "val"), "val_views": [r["view"] for r in validation]} if validation else {}),
        **evaluation.skipped_samples(model, results),
        "weight_bits": layers["weight_bits"], "int8_kernel": layers["int8_kernel"],
        "compiled": measured.compiled(model),
        "model_bytes": model_path.stat().st_size,
        "scene": scene.name, "device": str(evaluation.device), **device_identity(evaluation.device),
        "torch_version": torch.__version__,
        **precision.float32_matmul_settings(evaluation.device),
    }


def device_identity(device: torch.device) -> dict:
    """summary.json's device_name and capability: which GPU model trained (plan.py's time estimate matches
    runs by it), or the CPU's, with no capability."""
    if device.type != "cuda":
        return {"device_name": "cpu", "capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"device_name": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}
