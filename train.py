"""The one training loop behind every experiment, read top to bottom.

`python expN.py [options]` calls `main("expN")`: parse the command line into an ExperimentConfig, then `run`:
`setup` (plan.py's plan for the device, the run directory, the model, its optimizer, the rays), `train_loop` (a
batch, `step.train_step`, then logging, evaluation and checkpoints) inside `stop_cleanly`, the one guard for the
faults that end a run early (docs/faults.md: SIGINT and SIGTERM stop it between two steps with a checkpoint, running
out of memory saves one and names the option to lower), and `finish` (the final evaluation and summary.json).
Nothing imports this file for helpers: what the loop shares with other commands lives in step.py (the optimizer
step), evaluation.py (rendering and metrics), rundir.py (the files) and runlog.py (metrics.csv and W&B).
"""

import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import bitnerf
import bitnerf_ddp
import command_line
import measured
import plan
import precision
import rundir
from configs import ExperimentConfig
from dataset import RaySampler, load_scene
from devices import Stopwatch, peak_memory_bytes, peak_reserved_bytes, resolve_device
from evaluation import Evaluation, evaluate_trained
from faults import OutOfMemory, StopSignals, sized_by
from files import write_json
from runlog import RunLog
from step import Optimization, train_step
from utils import UserError, exit_on_user_error


def main(name: str, argv: list[str] | None = None) -> None:
    """Entry point of `expN.py`: bad input is one line on stderr and exit code 2, never a traceback.

    `--seeds S,S,...` trains one run per seed in turn (command_line.seed_argvs) and stops at the first that fails;
    `--plan [PROFILE]` prints the run's plan (plan.py) and trains nothing.
    """
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        config, args = command_line.parse_args(name, argv)
        if args.plan is not None:
            plan.print_plan(config, args.plan, args.nproc)
            return
        for run_argv in command_line.seed_argvs(argv, args.seeds, config.name) if args.seeds else [argv]:
            if code := train_command(name, run_argv):
                sys.exit(code)


def train_command(name: str, argv: list[str]) -> int:
    """One run of `expN.py argv`; returns its exit code.

    A distributed experiment started with plain python checks its input and takes the run directory's
    lock, then relaunches itself under torchrun, whose rank 0 trains under that lock.
    """
    config, args = command_line.parse_args(name, argv)
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
        raise SystemExit(
            f"error: {name} failed in one of its {nproc} processes (torchrun exit code {code}); its message is above"
        )
    return code


def run(config: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one experiment and write its run directory; returns summary.json's contents (on rank 0).

    Rank 0 holds the run directory's lock until this returns or exits; SIGINT and SIGTERM stop the run
    between two steps with a checkpoint (StopSignals, stop_cleanly)."""
    ranks = bitnerf_ddp.init(config.device, config.distributed)
    lock = rundir.RunLock(rundir.path_of(config))
    try:
        with StopSignals() as stop:
            state = setup(config, ranks, resume, overwrite, lock)
            with stop_cleanly(state, stop):
                train_loop(state, stop)
            return finish(state, stop)
    finally:
        lock.release()
        bitnerf_ddp.shutdown()


@dataclass
class Training:
    """A run in progress: what setup() builds and the loop and finish() use."""

    config: ExperimentConfig
    ranks: bitnerf_ddp.Ranks
    run_plan: plan.Plan
    run_dir: Path
    evaluation: Evaluation
    model: torch.nn.Module
    step_model: torch.nn.Module  # the DDP module when distributed: its forward averages the gradients
    optimization: Optimization
    sampler: RaySampler
    autocast: Callable[[], contextlib.AbstractContextManager]
    log: RunLog | None  # rank 0's
    clock: Stopwatch  # the training steps' time, carried over a resume
    run_id: str
    applied: int  # the optimizer steps taken, which a checkpoint saved now records
    prior_wall_s: float = 0.0
    prior_compile_s: float = 0.0
    run_start: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def census_step(self) -> int:
        """The step whose matmuls the census records (eagerly): the run's first, or a compiled run's second,
        since its first compiles; the same step however the run is resumed."""
        return 1 if self.run_plan.compiled and self.config.steps > 1 else 0

    def wall_s(self) -> float:
        return self.prior_wall_s + time.perf_counter() - self.run_start

    def compile_s(self) -> float:
        """The compilation inside the clock: each process's first step, which compiles, over its mean step."""
        return self.prior_compile_s + (self.clock.first_block_excess() if self.run_plan.compiled else 0.0)

    def save_checkpoint(self) -> None:
        rundir.save_checkpoint(
            self.run_dir,
            {
                "step": self.applied,
                "wall_s": self.wall_s(),
                "train_s": self.clock.elapsed,
                "compile_s": self.compile_s(),
                "wandb_id": self.run_id,
                "autocast_dtype": precision.dtype_name(self.evaluation.dtype),
                "config": dataclasses.asdict(self.config),
                "model": self.model.state_dict(),
                **self.optimization.state_dict(),
            },
        )


def setup(
    config: ExperimentConfig, ranks: bitnerf_ddp.Ranks, resume: bool, overwrite: bool, lock: rundir.RunLock
) -> Training:
    """The plan, the run directory, the model (restored on --resume), its optimizer, the rays and the log."""
    run_start, device = time.perf_counter(), ranks.device
    precision.set_float32_matmul(config.tf32)
    scene = load_scene(config.data, config.downscale, config.val_views)
    if restarts := bitnerf_ddp.restart_count():
        # torchrun restarted the job after a process died (--max-restarts): the run directory is this job's
        # own, so continue from its last checkpoint, or start again where it has none yet.
        resume = (rundir.path_of(config) / rundir.CHECKPOINT).exists()
        overwrite = not resume
        if ranks.is_main:
            print(
                f"{config.name}: restart {restarts} after a process died;"
                f" {'resuming from the last checkpoint' if resume else 'no checkpoint yet, starting again'}",
                file=sys.stderr,
            )
    # The device rules, the compile decision, the int8 kernel and the micro-batches, before the run directory is
    # touched; CPU ranks of one machine share its memory, GPU ranks have one each.
    ranks_sharing_memory = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    run_plan = plan.plan_run(config, scene, plan.local_target(device), ranks.world_size, ranks_sharing_memory, device)
    if run_plan.int8_kernel:
        bitnerf.use_int8_kernel(run_plan.int8_kernel, device)  # process-wide: torchao keeps it in a module global
    for warning in run_plan.warnings if ranks.is_main else ():
        print(f"warning: {warning}", file=sys.stderr)
    run_dir = rundir.prepare(config, resume, overwrite, lock) if ranks.is_main else rundir.path_of(config)
    bitnerf_ddp.barrier()
    evaluation = Evaluation.of(config, scene, device, run_dir)

    torch.manual_seed(config.seed)
    model = bitnerf.build_model(config, scene, device)
    optimization = Optimization.build(config, model, device, run_plan.autocast_dtype)
    rays = RaySampler(
        scene,
        device,
        config.batch_rays,
        config.seed,
        jitter_samples=config.jitter_per_ray,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    autocast = functools.partial(precision.autocast, device, run_plan.autocast_dtype)
    run_id = f"{config.name}-{uuid.uuid4().hex[:8]}"
    state = Training(
        config,
        ranks,
        run_plan,
        run_dir,
        evaluation,
        model,
        model,
        optimization,
        rays,
        autocast,
        None,
        Stopwatch(device),
        run_id,
        0,
        run_start=run_start,
    )
    if resume:
        restore(state, rundir.load_checkpoint(run_dir, config, run_plan.autocast_dtype))
    if run_plan.compiled:
        for field in (model.coarse, model.fine):
            if field is not None:
                field.compile(fullgraph=True)
    state.step_model = bitnerf_ddp.wrap(model, ranks, config.grad_compression)
    if ranks.is_main:
        facts = run_facts(state, scene)
        state.log = RunLog(config, run_dir, state.run_id, state.applied, facts)
        print(
            f"{config.name}: {scene.name} {scene.width}x{scene.height}, {len(scene.i_train)} train /"
            f" {len(scene.i_test)} test views, {facts['params'] / 1e6:.2f}M params,"
            f" {run_plan.precision} on {device}{run_shape(state)}, run dir {run_dir}"
        )
    return state


def restore(state: Training, checkpoint: dict) -> None:
    """--resume: the model, the optimizer and the clocks where the checkpoint left them."""
    state.model.load_state_dict(checkpoint["model"])
    state.optimization.load_state_dict(checkpoint)
    state.applied, state.prior_wall_s = checkpoint["step"], checkpoint["wall_s"]
    state.clock.carried_s, state.prior_compile_s = checkpoint["train_s"], checkpoint.get("compile_s", 0.0)
    state.run_id = checkpoint.get("wandb_id", state.run_id)


def run_facts(state: Training, scene) -> dict:
    """What the run log's config records beside the configuration: measured, not configured."""
    return {
        "precision": state.run_plan.precision,
        "params": n_params(state.model),
        "scene": scene.name,
        "world_size": state.ranks.world_size,
    }


def run_shape(state: Training) -> str:
    """The start line's processes and micro-batches, where there is more than one."""
    processes = f" x {state.ranks.world_size} processes" if state.ranks.world_size > 1 else ""
    plan_ = state.run_plan
    micro = f", {plan_.micro_batches} micro-batches of {plan_.micro_batch_rays} rays" if plan_.micro_batches > 1 else ""
    return processes + micro


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_loop(state: Training, stop: StopSignals) -> None:
    """The steps from state.applied to config.steps: a batch, a step, then logging, evaluation and checkpoints."""
    config, ranks, model = state.config, state.ranks, state.model
    model.train()
    last_log = (state.clock.elapsed, state.applied)  # train time and step of the last logged row
    progress = tqdm(
        range(state.applied, config.steps),
        initial=state.applied,
        total=config.steps,
        desc=config.name,
        dynamic_ncols=True,
        disable=None if ranks.is_main else True,
    )
    for step in progress:
        # Every rank asks between the same two steps whether any got a stop signal, so that all stop there.
        if bitnerf_ddp.max_across_ranks(stop.signum):
            return
        stats = train_one_step(state, step)
        state.applied = done = step + 1
        row = {}
        if done % config.log_every == 0 or done == config.steps:
            row, last_log = training_row(state, stats, last_log), (state.clock.elapsed, done)
            progress.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr_train']:.2f}")
        if done % config.eval_every == 0 and done < config.steps:
            row = {**row, **periodic_evaluation(state)}
        if ranks.is_main and row:
            state.log.row(row)
        if ranks.is_main and (done % config.ckpt_every == 0 or done == config.steps):
            state.save_checkpoint()
    progress.close()


def train_one_step(state: Training, step: int) -> dict[str, torch.Tensor]:
    """One optimizer step (step.train_step, in the plan's micro-batches), the occupancy grid's update before it,
    and at state.census_step the precision census: what the step's matmuls computed in must be what the run
    reports (measured.py)."""
    census = measured.MatmulCensus(state.model, enabled=step == state.census_step)
    micro_batch_rays = state.run_plan.micro_batch_rays
    with state.clock, sized_by("--micro-batch-rays", micro_batch_rays):
        state.model.update_occupancy(step)  # outside the census: the grid's queries are not the step's matmuls
        with census:
            stats = train_step(
                state.step_model,
                state.sampler.batch(step),
                state.optimization,
                state.config,
                state.autocast,
                micro_batch_rays if state.run_plan.micro_batches > 1 else 0,
            )
    if census.enabled:
        census.check(state.config, state.run_plan.autocast_dtype, "the training step")
    return stats


def training_row(state: Training, stats: dict[str, torch.Tensor], last_log: tuple[float, int]) -> dict:
    """metrics.csv's row of this step: the loss and training PSNR averaged over the ranks, and samples/s since
    the last logged row."""
    loss, fine_mse = bitnerf_ddp.mean_across_ranks(torch.stack([stats["loss"], stats["fine_mse"]])).tolist()
    (last_train_s, last_step), done = last_log, state.applied
    samples = state.config.batch_rays * state.config.samples_per_ray * (done - last_step)
    return {
        "step": done,
        "wall_s": round(state.wall_s(), 3),
        "loss": loss,
        "psnr_train": -10.0 * math.log10(max(fine_mse, 1e-10)),
        "grad_norm": stats["grad_norm"].item(),
        "lr": state.optimization.lr(),
        "samples_per_s": samples / max(state.clock.elapsed - last_train_s, 1e-9),
    }


def periodic_evaluation(state: Training) -> dict:
    """The first eval_views monitored views (validation views where the scene has them), rendered by every rank
    for its share; rank 0 logs their mean PSNR and a render, the others return {}."""
    config, scene = state.config, state.evaluation.scene
    split, views = scene.monitored_views()
    with sized_by("--chunk", config.chunk):
        results = state.evaluation.test_views(state.model, views[: config.eval_views])
    if not state.ranks.is_main:
        return {}
    state.log.render(results[0], scene, step=state.applied)
    return {
        "step": state.applied,
        "wall_s": round(state.wall_s(), 3),
        f"psnr_{split}": float(np.mean([r["psnr"] for r in results])),
    }


@contextlib.contextmanager
def stop_cleanly(state: Training, stop: StopSignals):
    """The faults that end the loop early end the run cleanly: a stop signal (noted by StopSignals, acted on
    between two steps by every rank) or Ctrl-C raised by code saves a checkpoint of the steps applied and exits
    with 128 + the signal; running out of memory saves one and says which option to lower (faults.py)."""
    is_main = state.ranks.is_main
    try:
        yield
        signum = bitnerf_ddp.max_across_ranks(stop.signum)
    except KeyboardInterrupt:  # raised by code: the signal itself only sets stop.signum
        signum = signal.SIGINT
    except OutOfMemory as e:
        if not is_main:
            raise UserError(e.message(f"rank {state.ranks.rank}, the last checkpoint is kept")) from None
        state.save_checkpoint()
        state.log.close(exit_code=1)
        raise UserError(e.message(f"checkpoint saved at step {state.applied}")) from None
    if signum:
        if is_main:
            state.save_checkpoint()
            state.log.close(exit_code=128 + signum)
            print(
                f"\ninterrupted ({signal.Signals(signum).name}) at step {state.applied}; checkpoint saved, continue"
                f" with --resume",
                file=sys.stderr,
            )
        sys.exit(128 + signum)


def finish(state: Training, stop: StopSignals) -> dict:
    """The final evaluation (every rank renders its share) and summary.json (rank 0, which returns it)."""
    config, ranks, device = state.config, state.ranks, state.ranks.device
    peak_mem = bitnerf_ddp.sum_across_ranks(peak_memory_bytes(device))
    peak_reserved = peak_reserved_bytes(device)
    peak_reserved = None if peak_reserved is None else bitnerf_ddp.sum_across_ranks(peak_reserved)
    stop.at_once = True
    try:
        with sized_by("--chunk", config.chunk):
            summary = evaluate_trained(state.evaluation, state.model, state.log)
    except KeyboardInterrupt:
        signum = stop.signum or signal.SIGINT
        if ranks.is_main:
            state.log.close(exit_code=128 + signum)
            print(
                f"\ninterrupted ({signal.Signals(signum).name}) in the final evaluation; the checkpoint holds"
                f" all {config.steps} steps, --resume evaluates it again",
                file=sys.stderr,
            )
        sys.exit(128 + signum)
    except OutOfMemory as e:
        if ranks.is_main:
            state.log.close(exit_code=1)
        raise UserError(e.message(f"the checkpoint holds all {config.steps} steps")) from None
    stop.at_once = False  # all but summary.json is written: a signal now is only noted, and the run completes
    if not ranks.is_main:
        bitnerf_ddp.barrier()  # wait for rank 0's summary.json: every rank leaves the run together
        return {}
    train_s, compile_s = state.clock.elapsed, state.compile_s()
    summary.update(
        {
            "run_id": state.run_id,
            "world_size": ranks.world_size,
            "steps": config.steps,
            "wall_s": round(state.wall_s(), 2),
            "train_s": round(train_s, 2),
            "compile_s": round(compile_s, 2),
            "train_samples_per_s": round(
                config.batch_rays * config.samples_per_ray * config.steps / max(train_s - compile_s, 1e-9)
            ),
            "peak_mem_bytes": peak_mem,
            "peak_reserved_bytes": peak_reserved,
            "estimated_peak_bytes": state.run_plan.peak_bytes * ranks.world_size,
            "micro_batch_rays": state.run_plan.micro_batch_rays,
            "micro_batches": state.run_plan.micro_batches,
            "sent_bytes_per_step": bitnerf_ddp.sent_bytes_per_step(state.step_model),
            "params": n_params(state.model),
            "checkpoint_bytes": (state.run_dir / rundir.CHECKPOINT).stat().st_size,
        }
    )
    write_json(state.run_dir / rundir.SUMMARY, summary)
    state.log.close(summary)
    print(
        f"{config.name}: test PSNR {summary['psnr_test']:.2f} dB, SSIM {summary['ssim_test']:.3f}, "
        f"{summary['train_samples_per_s']:,} samples/s, wall {summary['wall_s']:.0f} s -> {state.run_dir}"
    )
    bitnerf_ddp.barrier()
    return summary
