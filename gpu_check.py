"""One command that proves the GPU path: every experiment, a resume, PTQ and hw_eval, run as users run them.

`python gpu_check.py` on a CUDA machine trains exp1-exp6 for a short schedule of the full configuration with
the occupancy grid (fp32; fp16 autocast with a GradScaler; the 4x batch in four micro-batches; BitNeRF through
torchao, compiled; NeRF and BitNeRF under DDP through their own torchrun launch, one process per visible GPU
over nccl, where there are two or more), exp1 with TF32 and exp2 in bf16 where the GPU has them (compute
capability 8.0), resumes exp2's checkpoint on the device for more steps, trains exp1 compiled and exp4 eager
against their own runs (what `--compile auto` chooses, measured on the GPU), quantizes exp1 after training
(ptq.py) and, with --hw-eval, costs every run on the accelerator models (hw_eval.py: CPU work, skipped with a
note where its toolchain is missing). Then, in this process, it times dense matmuls at each run's MLP shapes
in the run's compute dtype, for MFU. Before it starts it prints the plan: each check's estimated seconds on a
T4 with 2 vCPUs against the 8-minute budget, or why the device leaves it out.
`--device cpu` runs the same sequence on the quick preset for a few steps, on a smaller built-in scene, with
hw_eval mapping smaller tiles and without the compile comparison.

Every experiment runs as a subprocess, `python expN.py ... --out <out> --wandb disabled`, exactly the
command a user types. It prints a table (check, result, seconds, samples/s, peak memory allocated and
reserved, MFU, note) and writes `<out>/gpu_check.json`. A check fails on a non-zero exit, with its stderr's
last line recorded, or when its run directory shows another device, precision, world size, step count or
micro-batching than asked for, or no occupancy grid. The exit code is 0 only if no check failed (a check
skipped for the device or for hw_eval's missing toolchain is not a failure).
"""

import csv
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import configs
import gpus
import rundir
from utils import OneLineParser, UserError, atomic_write, exit_on_user_error, nvidia_driver, resolve_device, write_json

REPO = Path(__file__).resolve().parent
EXPERIMENTS = tuple(configs.AXES)
# On a GPU: two dozen steps. Enough for exp1's occupancy grid to update twice (steps 0 and 16,
# nerf.GRID_UPDATE_EVERY), the second time from a trained field, for the resume (to step 36) to cross the
# update at step 32 from a restored grid, and for the last logged quarter (6 steps) to be past the first
# steps' warm-up (CUDA context, cuBLAS handles, compilation); few enough that training is under a quarter of the
# budget below, where starting processes, compiling and the final evaluations are the rest. A multiple of 4,
# which exp3 (a quarter of the steps) needs.
# On the CPU: enough for every logged, evaluated and checkpointed step of the schedule, and for a resume.
DEFAULT_STEPS = {"cuda": 24, "cpu": 20}
VIDEO_FRAMES = {"cuda": 8, "cpu": 2}
# On the CPU, rendering (the final evaluation of every test view, ptq.py's per variant, the video) outweighs a
# short run's training: the CPU sequence trains on the built-in scene at half its resolution (every other
# pixel, each with its own ray) with only its first test views.
CPU_SCENE_STRIDE, CPU_TEST_VIEWS = 2, 2
# On the CPU, hw_eval.py maps tiles of this many samples (the size its tests map) instead of its default: the
# mapper's search shrinks with the tile, and what the check proves, every run costed on every architecture,
# does not depend on it.
CPU_HW_TILE = 256
RESUMED = "resumed"  # <out>/resumed/exp2: a copy of exp2's run that the resume check continues
FLIPPED = "compile"  # <out>/compile/expN: the compile check's runs, with the other --compile choice
# The compile check's runs: exp1 (eager under --compile auto) compiled, and exp4 (compiled) eager.
FLIPPED_COMPILE = {"exp1": "on", "exp4": "off"}
# Experiments whose rays per process the check splits into this many micro-batches: exp3's quarter is exp1's
# batch, which fits wherever exp1 fits, and forcing it makes micro-batching run even on a GPU that holds the
# whole 4x batch.
MICRO_BATCHES = {"exp3": 4}
# The matmul benchmark's rows per layer: enough to saturate a GPU, few enough that the operands of the 4x
# batch's layers fit in a 16 GB one.
MATMUL_MAX_ROWS = 1 << 18
MATMUL_ROUNDS, MATMUL_PASSES = 3, 4
# The default plan's target on the smallest GPU our users have: a T4 with 2 vCPUs (Colab's).
BUDGET_S = 480
# What each check costs on a T4 (about 8 TFLOP/s fp32, tensor cores for fp16 only) with 2 vCPUs, as (seconds,
# seconds per step of --steps). Worked out, not measured: no GPU has run gpu_check.py yet, and
# gpu_check.json keeps each check's estimate beside its seconds so that the first T4 run can correct them.
# - Seconds: about 15 to start a process (torch, torchao, the CUDA context, cuBLAS) and 15 for the final
#   evaluation in fp32 (10 test views and 8 video frames of 100x100 rays at 192 samples, 1.2 MFLOP each
#   forward: 4e13 FLOP at about 4 TFLOP/s, plus the census and the files), half that under AMP;
#   torch.compile on 2 vCPUs about 60 for BitNeRF and 40 for NeRF.
# - Per step: exp1's 4096 rays x 192 samples x 3.6 MFLOP = 2.8e12 FLOP at about 4 TFLOP/s (0.7 s; the
#   occupancy grid's savings not counted); fp16 on tensor cores about 3x faster, bounded by the non-matmul
#   work; BitNeRF's int8 without int8 tensor cores in Triton below capability 8.0 about 1 s; under DDP each
#   rank takes half the rays. Checks a T4 skips (TF32, bf16, DDP) are costed at a T4's speed: an upper bound.
# - hw_eval maps on the CPU: about 3 minutes per distinct model and core, six of them on 2 cores.
T4_ESTIMATES = {
    "exp1": (30, 0.7), "exp2": (25, 0.25), "exp3": (25, 0.3), "exp4": (90, 1.0), "exp5": (40, 0.4),
    "exp6": (100, 0.6), "tf32": (30, 0.7), "bf16": (25, 0.25),
    "resume": (25, 0.125),  # exp2 for half the steps again
    "compile": (100, 1.7),  # exp1 compiled (40 s of compilation) and exp4 eager
    "ptq": (30, 0.0), "hw_eval": (540, 0.0), "mfu": (15, 0.0),
}
# Seconds one command may take unless --timeout says: on a GPU this many times its check's estimate, which is
# not measured, and at least MIN_TIMEOUT_S; so a hung command ends within minutes rather than the whole
# budget. On the CPU, whose speed here varies with other load, CPU_TIMEOUT_S.
TIMEOUT_FACTOR, MIN_TIMEOUT_S, CPU_TIMEOUT_S = 4, 180, 900
TOOLCHAIN_PROBE = """import sys
try:
    import hw_eval
except ImportError as e:
    sys.exit(f"{e}")
from utils import exit_on_user_error
with exit_on_user_error():
    hw_eval.check_toolchain()
"""


@dataclass(frozen=True)
class Check:
    """One check; `--only` adds what it needs, and it is skipped when that did not pass (with needs_any:
    when none of it passed)."""

    name: str
    what: str
    needs: tuple[str, ...] = ()
    needs_any: bool = False


@dataclass(frozen=True)
class Variant:
    """A check that trains an experiment with more flags, into <out>/<check>/<experiment>, where the GPU has the
    feature: its summary.json must show `expect`."""

    experiment: str
    flags: tuple[str, ...]
    min_capability: tuple[int, int]
    feature: str
    cpu_reason: str
    expect: dict


VARIANTS = {
    "tf32": Variant("exp1", ("--tf32",), gpus.TF32_MIN_CAPABILITY, "TF32 tensor cores",
                    "TF32 is a GPU matmul mode", {"float32_matmul_precision": "high"}),
    "bf16": Variant("exp2", ("--amp-dtype", "bf16"), gpus.BF16_MIN_CAPABILITY, "native bf16",
                    "exp2 on the CPU runs bf16 already", {"precision": "bf16-amp"}),
}
RUNS = (*EXPERIMENTS, *VARIANTS)  # the checks that train a run

CHECKS = (
    Check("exp1", "NeRF, fp32"),
    Check("exp2", "AMP: fp16 autocast with a GradScaler (bf16 on the CPU)"),
    Check("exp3", "AMP with the 4x ray batch, in four micro-batches"),
    Check("exp4", "BitNeRF: torchao ternary weights and int8 activations, torch.compile"),
    Check("exp5", "NeRF under DDP, self-launched by torchrun (nccl over the GPUs; gloo on the CPU)"),
    Check("exp6", "BitNeRF under DDP, compiled"),
    Check("tf32", "exp1 with TF32 matmuls"),
    Check("bf16", "exp2 with bf16 autocast"),
    Check("resume", "exp2's checkpoint resumed on the device for more steps", ("exp2",)),
    Check("compile", "exp1 compiled and exp4 eager: --compile auto's rule measured on the GPU", ("exp1", "exp4")),
    Check("ptq", "post-training fp16 and torchao int8 variants of exp1", ("exp1",)),
    Check("hw_eval", "accelerator energy and latency of every run (AccelForge)", EXPERIMENTS, needs_any=True),
    Check("mfu", "dense matmuls at each run's MLP shapes and dtype: MFU", EXPERIMENTS, needs_any=True),
)
BY_NAME = {check.name: check for check in CHECKS}


@dataclass
class Result:
    name: str
    what: str
    status: str = "pass"  # pass, fail or skip
    seconds: float = 0.0
    note: str = ""
    commands: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    estimated_s: float | None = None  # on a GPU: T4_ESTIMATES at this schedule
    timeout_s: float | None = None  # of each of its commands


class CheckFailed(Exception):
    """A check's command failed or its output is not what was asked for: the message is one line."""


def capability_text(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


@dataclass
class Plan:
    """What the checks run: the device (with a GPU's compute capability and count), the preset, the schedule,
    and where everything goes. A function of these alone, so that any GPU's plan can be built on the CPU."""

    device: str  # cuda or cpu
    out: Path
    steps: int
    data: str | None
    timeout_s: float | None  # None: per check (command_timeout)
    capability: tuple[int, int] | None = None  # on CUDA: the GPU's, e.g. (7, 5) for a T4
    gpu_count: int = 0
    hw_eval: bool = True

    def skip_reason(self, name: str) -> str | None:
        """Why this device leaves a check out (None: the check runs)."""
        if name == "compile" and self.device == "cpu":
            return "on a GPU only: the CPU's measurement is BENCHMARKS.md's"
        if name == "hw_eval" and not self.hw_eval:
            return "CPU work, off on a GPU machine: --hw-eval runs it"
        if self.device == "cpu":
            return f"on a GPU only: {VARIANTS[name].cpu_reason}" if name in VARIANTS else None
        if name in VARIANTS and self.capability < VARIANTS[name].min_capability:
            variant = VARIANTS[name]
            return (f"needs compute capability {capability_text(variant.min_capability)} ({variant.feature});"
                    f" this GPU is {capability_text(self.capability)}")
        if name in EXPERIMENTS and configs.experiment(name).distributed and self.gpu_count < 2:
            return f"DDP needs 2 or more GPUs; this machine has {self.gpu_count}"
        return None

    def estimate_s(self, name: str) -> float | None:
        """A check's estimated seconds on a T4 with 2 vCPUs at this schedule; None on the CPU."""
        if self.device == "cpu":
            return None
        seconds, per_step = T4_ESTIMATES[name]
        return round(seconds + per_step * self.steps, 1)

    def command_timeout(self, name: str) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        if self.device == "cpu":
            return CPU_TIMEOUT_S
        return max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * self.estimate_s(name))

    @staticmethod
    def experiment(name: str) -> str:
        """The experiment a check trains (a variant's own), or the check's name for the other checks."""
        return VARIANTS[name].experiment if name in VARIANTS else name

    def run_out(self, name: str) -> Path:
        """The --out of a training check's run: out, or out/<check> for a variant."""
        return self.out / name if name in VARIANTS else self.out

    def experiment_steps(self, name: str) -> int:
        """The steps of an experiment's check: exp3 takes a quarter, its 4x batch taking the same rays."""
        return max(1, self.steps // 4) if name == "exp3" else self.steps

    def base_config(self, experiment: str) -> configs.ExperimentConfig:
        return configs.experiment(experiment, configs.EXP1 if self.device == "cuda" else configs.QUICK)

    def micro_batch_rays(self, experiment: str) -> int | None:
        """The --micro-batch-rays an experiment's check forces (MICRO_BATCHES), None where it leaves auto."""
        if experiment not in MICRO_BATCHES:
            return None
        per_process = self.base_config(experiment).batch_rays // self.expected_world_size(experiment)
        return per_process // MICRO_BATCHES[experiment]

    def experiment_argv(self, name: str, out: Path | None = None, steps: int | None = None) -> list[str]:
        """The expN.py command line of a training check (an experiment or a variant): the full configuration
        on CUDA, the quick preset on the CPU, with the occupancy grid, this schedule."""
        experiment = self.experiment(name)
        config = configs.experiment(experiment)
        # exp3 counts its step options in exp1's steps (configs.STEP_COUNTS) and trains a quarter of them.
        steps = (steps or self.experiment_steps(experiment)) * (config.batch_rays // configs.EXP1.batch_rays)
        argv = [] if self.device == "cuda" else ["--quick"]
        argv += ["--device", self.device, "--out", str(out or self.run_out(name)), "--wandb", "disabled",
                 "--steps", str(steps), "--log-every", str(max(1, steps // 4)), "--eval-every", str(max(1, steps // 2)),
                 "--ckpt-every", str(max(1, steps // 2)), "--eval-views", "1",
                 "--video-frames", str(VIDEO_FRAMES[self.device]), "--occupancy-grid"]
        if config.model == "bitnerf":
            argv += ["--compile", "on"]
        if micro := self.micro_batch_rays(experiment):
            argv += ["--micro-batch-rays", str(micro)]
        if self.data:
            argv += ["--data", self.data]
        return argv + list(VARIANTS[name].flags if name in VARIANTS else ())

    def hw_eval_argv(self) -> list[str]:
        """The hw_eval.py command line of the hw_eval check: every run in out, its default tile on a GPU machine."""
        argv = ["hw_eval.py", "--runs", str(self.out), "--out", str(self.out / "hw_eval")]
        return argv + (["--tile", str(CPU_HW_TILE)] if self.device == "cpu" else [])

    def expected_world_size(self, experiment: str) -> int:
        if not configs.experiment(experiment).distributed:
            return 1
        return self.gpu_count if self.device == "cuda" else 2  # bitnerf_ddp's default on the CPU

    def expected_precision(self, experiment: str) -> str:
        config = configs.experiment(experiment)
        if config.model == "bitnerf":
            return "ternary-int8"
        if config.precision == "fp32":
            return "fp32"
        return "fp16-amp" if self.device == "cuda" else "bf16-amp"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run_command(argv: list[str], result: Result, log: Path, timeout_s: float) -> None:
    """Run one command of a check (its output into log); a non-zero exit or a timeout is CheckFailed.

    The command runs in its own process group, so that a timeout or Ctrl-C also ends the processes it
    started (torchrun's ranks).
    """
    command = [sys.executable, *argv]
    result.commands.append(shlex.join(["python", *argv]))
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        if isinstance(e, KeyboardInterrupt):
            raise
        stderr += f"\ntimed out after {timeout_s:.0f} s"
    finally:
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(command)}\n{stdout}{stderr}\n")
    if process.returncode != 0:
        raise CheckFailed(last_line(stderr))


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    if not (run_dir / rundir.SUMMARY).is_file():
        raise CheckFailed(f"{run_dir} has no {rundir.SUMMARY}")
    return json.loads((run_dir / rundir.SUMMARY).read_text()), rundir.read_metrics(run_dir)


def check_experiment(plan: Plan, name: str, result: Result, log: Path) -> None:
    """Train the experiment (or variant), then hold its run directory to what was asked for. Fields that
    summary.json gained later (micro-batching, kernels, reserved memory) are recorded as None where a run lacks
    them, and only checked where present."""
    experiment = plan.experiment(name)
    run_command([f"{experiment}.py", *plan.experiment_argv(name), "--overwrite"], result, log,
                plan.command_timeout(name))
    summary_path = plan.run_out(name) / experiment / rundir.SUMMARY
    summary, metrics = read_run(summary_path.parent)
    expected = {"device": plan.device, "precision": plan.expected_precision(experiment),
                "world_size": plan.expected_world_size(experiment), "steps": plan.experiment_steps(experiment),
                **(VARIANTS[name].expect if name in VARIANTS else {})}
    found = {**summary, "device": summary.get("device", "").split(":")[0]}
    wrong = [f"{key} {found.get(key)!r} (expected {value!r})" for key, value in expected.items()
             if found.get(key) != value]
    micro_batch_rays = plan.micro_batch_rays(experiment)
    if micro_batch_rays and summary.get("micro_batch_rays") not in (None, micro_batch_rays):
        wrong.append(f"micro_batch_rays {summary['micro_batch_rays']!r} (expected {micro_batch_rays})")
    if micro_batch_rays and summary.get("micro_batches") is not None and summary["micro_batches"] < 2:
        wrong.append(f"micro_batches {summary['micro_batches']!r} (expected more than 1)")
    # summary.json counts the samples the occupancy grid skipped only where a run had one.
    skipped = {key: value for key, value in summary.items() if key.startswith("skipped_")}
    if not skipped:
        wrong.append("no samples skipped by an occupancy grid (expected --occupancy-grid)")
    if wrong:
        raise CheckFailed(f"{summary_path} says " + ", ".join(wrong))
    if not math.isfinite(summary["psnr_test"]):
        raise CheckFailed(f"test PSNR is {summary['psnr_test']}")
    if micro_batch_rays and summary.get("micro_batches") is None:
        result.note = f"micro-batching unknown: {rundir.SUMMARY} has no micro_batches"
    result.metrics = {
        "precision": summary["precision"], "world_size": summary["world_size"], "steps": summary["steps"],
        "train_samples_per_s": summary["train_samples_per_s"], "compile_s": summary.get("compile_s"),
        # The last logged interval, past the first steps' warm-up (and BitNeRF's compilation).
        "steady_samples_per_s": round(float(metrics[-1]["samples_per_s"])),
        "peak_mem_bytes": summary["peak_mem_bytes"], "peak_reserved_bytes": summary.get("peak_reserved_bytes"),
        "psnr_test": summary["psnr_test"], "wall_s": summary["wall_s"],
        # What ran: the kernels and the number formats, as the run measured them.
        "compiled": summary.get("compiled"), "int8_kernel": summary.get("int8_kernel"),
        "float32_matmul_precision": summary.get("float32_matmul_precision"),
        "micro_batch_rays": summary.get("micro_batch_rays"), "micro_batches": summary.get("micro_batches"),
        **skipped,
    }


def check_resume(plan: Plan, result: Result, log: Path) -> None:
    """Continue a copy of exp2's run (checkpoint, optimizer, GradScaler) on the device for half as many steps again."""
    resumed_out = plan.out / RESUMED
    shutil.rmtree(resumed_out, ignore_errors=True)
    shutil.copytree(plan.out / "exp2", resumed_out / "exp2")
    start = json.loads((resumed_out / "exp2" / rundir.SUMMARY).read_text())["steps"]
    steps = start + max(1, start // 2)
    run_command(["exp2.py", *plan.experiment_argv("exp2", out=resumed_out, steps=steps), "--resume"], result, log,
                plan.command_timeout("resume"))
    summary, metrics = read_run(resumed_out / "exp2")
    if summary["steps"] != steps or int(metrics[-1]["step"]) != steps or summary["device"].split(":")[0] != plan.device:
        raise CheckFailed(f"the resumed run ended at step {summary['steps']} on {summary['device']}, expected step "
                          f"{steps} on {plan.device}")
    result.metrics = {"from_step": start, "to_step": steps, "psnr_test": summary["psnr_test"]}


def check_compile(plan: Plan, results: dict[str, Result], result: Result, log: Path) -> None:
    """Steady samples/s compiled over eager for NeRF (exp1) and BitNeRF (exp4), each against its own check's run:
    what --compile auto chose (BitNeRF's only), measured on the CPU, measured here."""
    for name, choice in FLIPPED_COMPILE.items():
        run_command([f"{name}.py", *plan.experiment_argv(name, out=plan.out / FLIPPED), "--compile", choice,
                     "--overwrite"], result, log, plan.command_timeout("compile"))
        _, metrics = read_run(plan.out / FLIPPED / name)
        flipped, own = float(metrics[-1]["samples_per_s"]), results[name].metrics["steady_samples_per_s"]
        result.metrics[f"{name}_compiled_over_eager"] = round(flipped / own if choice == "on" else own / flipped, 2)


def check_ptq(plan: Plan, result: Result, log: Path) -> None:
    import ptq

    run_dir = plan.out / "exp1"
    argv = ["ptq.py", str(run_dir), "--device", plan.device] + (["--data", plan.data] if plan.data else [])
    run_command(argv, result, log, plan.command_timeout("ptq"))
    rows = json.loads((run_dir / rundir.PTQ).read_text())
    if [r["variant"] for r in rows] != list(ptq.VARIANTS) or not all(math.isfinite(r["psnr_test"]) for r in rows):
        raise CheckFailed(f"{run_dir / rundir.PTQ} lacks a variant or a finite PSNR")
    result.metrics = {r["variant"]: {"psnr_test": r["psnr_test"], "eval_s": r["eval_s"]} for r in rows}


def check_hw_eval(plan: Plan, result: Result, log: Path) -> None:
    """Skipped, with hw_eval's own one-line reason, where its toolchain (AccelForge, CACTI, dot) is missing."""
    probe = subprocess.run([sys.executable, "-c", TOOLCHAIN_PROBE], cwd=REPO, capture_output=True, text=True)
    if probe.returncode != 0:
        result.status, result.note = "skip", last_line(probe.stderr).removeprefix("error: ")
        return
    hw_out = plan.out / "hw_eval"
    run_command(plan.hw_eval_argv(), result, log, plan.command_timeout("hw_eval"))
    with open(hw_out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    runs = {run_dir.name for run_dir, _ in rundir.find_runs(plan.out)}
    archs = {row["arch"] for row in rows}
    costed = {(row["run"], row["arch"]) for row in rows}
    missing = sorted(f"{run} on {arch}" for run in runs for arch in archs if (run, arch) not in costed)
    if not rows or missing:
        raise CheckFailed(f"{hw_out / 'results.csv'} lacks {', '.join(missing) or 'every run'}")
    result.metrics = {"rows": len(rows), "architectures": sorted(archs)}


def check_mfu(plan: Plan, results: dict[str, Result], result: Result) -> None:
    """Each passed experiment's MFU: its steady training FLOP/s over this device's dense matmul rate at the
    run's layer shapes (a micro-batch's rays) and compute dtype (BitNeRF against fp32, as bench.py does), times
    the GPUs it used."""
    import torch

    import bench
    import bitnerf
    from dataset import load_scene

    dtypes = {"fp32": torch.float32, "ternary-int8": torch.float32, "fp16-amp": torch.float16,
              "bf16-amp": torch.bfloat16}
    device = torch.device(plan.device)
    scene = load_scene(plan.data)
    rates: dict = {}
    for name in EXPERIMENTS:
        run = results.get(name)
        if run is None or run.status != "pass":
            continue
        config, _ = configs.parse_args(name, plan.experiment_argv(name))
        world_size, dtype = run.metrics["world_size"], dtypes[run.metrics["precision"]]
        model = bitnerf.build_model(config, scene, device)
        # A micro-batched run's matmuls take a micro-batch's rays (where its summary says how many).
        rows_per_rank = run.metrics.get("micro_batch_rays") or config.batch_rays // world_size
        shapes = [(min(rows, MATMUL_MAX_ROWS), n_in, n_out)
                  for rows, n_in, n_out in bench.linear_shapes(model, rows_per_rank)]
        key = (tuple(shapes), dtype)
        if key not in rates:
            seconds = min(bench.matmul_seconds(shapes, dtype, device, MATMUL_PASSES) for _ in range(MATMUL_ROUNDS))
            rates[key] = bench.FORWARD_BACKWARD * bench.forward_flops(shapes) * MATMUL_PASSES / seconds
        devices = world_size if plan.device == "cuda" else 1  # CPU ranks share this machine's cores
        model_flops = run.metrics["steady_samples_per_s"] * bench.flops_per_sample(model)
        run.metrics.update({"matmul_dtype": str(dtype).removeprefix("torch."), "matmul_flops_per_s": round(rates[key]),
                            "flops_per_sample": bench.flops_per_sample(model),
                            "mfu": round(model_flops / (devices * rates[key]), 3)})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result.metrics = {"matmul_flops_per_s": {f"{str(dtype).removeprefix('torch.')} {shapes[0][0]} rows": round(rate)
                                             for (shapes, dtype), rate in rates.items()}}


def small_builtin_scene(out: Path) -> str:
    """The built-in scene (written on first use) at 1/CPU_SCENE_STRIDE of its resolution with its first
    CPU_TEST_VIEWS test views, saved into out."""
    import numpy as np

    import data_setup
    from dataset import load_scene

    load_scene(None)
    with np.load(data_setup.BUILTIN_SCENE) as scene:
        arrays = dict(scene)
    # Pixel (i, j) looks through ((i - W/2)/f, ...): every other pixel of every other row at half the focal
    # length is the same ray.
    for key in ("images", "depths"):
        arrays[key] = arrays[key][:, ::CPU_SCENE_STRIDE, ::CPU_SCENE_STRIDE]
    arrays["focal"] = arrays["focal"] / CPU_SCENE_STRIDE
    arrays["i_test"] = arrays["i_test"][:CPU_TEST_VIEWS]
    height, width = arrays["images"].shape[1:3]
    path = out / f"builtin_{width}x{height}_{CPU_TEST_VIEWS}_test_views.npz"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return str(path)


def selected(only: list[str] | None, skip: list[str]) -> list[Check]:
    """The checks to run, in order: the named ones (default all) and what they need, less the skipped ones."""
    wanted = set(only or BY_NAME)
    pending = list(wanted)
    while pending:
        for need in BY_NAME[pending.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                pending.append(need)
    return [check for check in CHECKS if check.name in wanted - set(skip)]


def describe(plan: Plan, checks: list[Check]) -> list[str]:
    """The plan as printed before the checks run: each check's estimated seconds on a T4 (on a GPU) and command
    timeout, or why the device leaves it out; on a GPU, the estimated total against BUDGET_S."""
    lines = []
    for check in checks:
        if reason := plan.skip_reason(check.name):
            lines.append(f"  {check.name:<9}skip      {reason}")
            continue
        estimate = plan.estimate_s(check.name)
        lines.append(f"  {check.name:<9}{f'~{estimate:.0f} s' if estimate is not None else 'run':<10}"
                     f"{check.what} (timeout {plan.command_timeout(check.name):.0f} s)")
    if plan.device == "cuda":
        total = estimated_total(plan, checks)
        lines.append(f"estimated {total:.0f} s at a T4's speed with 2 vCPUs (worked out, not measured): "
                     f"{'within' if total <= BUDGET_S else 'over'} the {BUDGET_S} s budget of the default plan on a T4")
    return lines


def estimated_total(plan: Plan, checks: list[Check]) -> float:
    return round(sum(plan.estimate_s(c.name) for c in checks if not plan.skip_reason(c.name)), 1)


def run_checks(plan: Plan, checks: list[Check]) -> dict[str, Result]:
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    for check in checks:
        result = results[check.name] = Result(check.name, check.what)
        if reason := plan.skip_reason(check.name):
            result.status, result.note = "skip", reason
            continue
        result.estimated_s, result.timeout_s = plan.estimate_s(check.name), plan.command_timeout(check.name)
        log = plan.out / "logs" / f"{check.name}.log"
        log.unlink(missing_ok=True)
        print(f"{check.name}: {check.what} ...", flush=True)
        passed = [need in results and results[need].status == "pass" for need in check.needs]
        if check.needs and not (any(passed) if check.needs_any else all(passed)):
            needed = " or ".join(check.needs) if check.needs_any else ", ".join(check.needs)
            result.status, result.note = "skip", f"needs {needed}, which did not pass"
            continue
        start = time.perf_counter()
        try:
            if check.name in RUNS:
                check_experiment(plan, check.name, result, log)
            elif check.name == "resume":
                check_resume(plan, result, log)
            elif check.name == "compile":
                check_compile(plan, results, result, log)
            elif check.name == "ptq":
                check_ptq(plan, result, log)
            elif check.name == "hw_eval":
                check_hw_eval(plan, result, log)
            else:
                check_mfu(plan, results, result)
        except CheckFailed as e:
            result.status, result.note = "fail", str(e)
        except Exception as e:  # the in-process checks: record it and go on to the next check
            result.status, result.note = "fail", f"{type(e).__name__}: {last_line(str(e))}"
        result.seconds = round(time.perf_counter() - start, 1)
    return results


def environment(plan: Plan) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cpus": len(os.sched_getaffinity(0)), "nvidia": nvidia_driver()}
    if plan.device == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def speedups(results: dict[str, Result]) -> dict:
    """Steady samples/s of exp2 (AMP), exp3 (AMP, 4x batch), tf32 and bf16 over exp1's (fp32)."""
    faster = ("exp2", "exp3", "tf32", "bf16")
    rate = {name: results[name].metrics.get("steady_samples_per_s") for name in ("exp1", *faster)
            if name in results and results[name].status == "pass"}
    return {f"{name}_over_exp1": round(rate[name] / rate["exp1"], 2)
            for name in faster if name in rate and "exp1" in rate}


def print_table(results: dict[str, Result]) -> None:
    print(f"\n{'check':<9}{'result':<8}{'seconds':>8}{'samples/s':>12}{'peak MiB':>10}{'reserved':>10}{'MFU':>7}  note")
    for r in results.values():
        samples = r.metrics.get("steady_samples_per_s")
        peak, reserved = r.metrics.get("peak_mem_bytes"), r.metrics.get("peak_reserved_bytes")
        mfu = r.metrics.get("mfu")
        print(f"{r.name:<9}{r.status:<8}{r.seconds:>8.1f}{f'{samples:,}' if samples else '':>12}"
              f"{f'{peak / 2**20:,.0f}' if peak else '':>10}{f'{reserved / 2**20:,.0f}' if reserved else '':>10}"
              f"{f'{mfu:.3f}' if mfu is not None else '':>7}  {r.note}")


def gpu_properties(device: str) -> dict:
    """The Plan's capability and gpu_count: the first visible GPU's capability and how many are visible."""
    if device == "cpu":
        return {}
    import torch

    return {"capability": torch.cuda.get_device_capability(0), "gpu_count": torch.cuda.device_count()}


def parse(argv: list[str] | None) -> tuple[Plan, list[Check]]:
    """The plan and the checks of a command line; bad input is a UserError."""
    parser = OneLineParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=configs.DEVICES,
                        help="cuda: the full configuration; cpu: the quick preset (auto: cuda if usable)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"),
                        help="runs, logs and gpu_check.json (default: runs/gpu_check)")
    parser.add_argument("--steps", type=int, help=f"training steps per experiment (default: {DEFAULT_STEPS})")
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), metavar="CHECK",
                        help=f"run these checks and those they need ({', '.join(BY_NAME)})")
    parser.add_argument("--skip", nargs="+", choices=list(BY_NAME), default=[], metavar="CHECK",
                        help="leave these checks out")
    parser.add_argument("--hw-eval", action="store_true",
                        help="on a GPU machine, also run hw_eval (CPU work, minutes per run, outside the budget;"
                             " always on with --device cpu, and with --only hw_eval)")
    parser.add_argument("--data", help="a scene .npz or Blender folder (default: the built-in scene)")
    parser.add_argument("--timeout", type=float,
                        help=f"seconds one command may take (default: on a GPU {TIMEOUT_FACTOR}x its check's"
                             f" estimate, at least {MIN_TIMEOUT_S}; on the CPU {CPU_TIMEOUT_S})")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        raise UserError(f"--steps must be at least 2 (a resume continues from a finished run), got {args.steps}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}")
    checks = selected(args.only, args.skip)
    if not checks:
        raise UserError("--skip leaves no check to run")
    device = resolve_device(args.device).type
    out = args.out.resolve()  # the commands run in the project's folder
    data = (str(Path(args.data).resolve()) if args.data
            else small_builtin_scene(out) if device == "cpu" else None)
    hw_eval = device == "cpu" or args.hw_eval or "hw_eval" in (args.only or [])
    plan = Plan(device, out, args.steps or DEFAULT_STEPS[device], data, args.timeout, hw_eval=hw_eval,
                **gpu_properties(device))
    return plan, checks


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        plan, checks = parse(argv)
    device = plan.device
    capability = capability_text(plan.capability) if plan.capability else None
    print(f"gpu_check on {device} ({'full configuration' if device == 'cuda' else 'quick preset'}, {plan.steps} steps"
          f"{f', capability {capability}, {plan.gpu_count} GPU(s)' if capability else ''}) into {plan.out}",
          *describe(plan, checks), sep="\n", flush=True)
    try:
        results = run_checks(plan, checks)
    except KeyboardInterrupt:
        print("\ninterrupted; the check's processes were stopped", file=sys.stderr)
        sys.exit(130)
    failed = [r.name for r in results.values() if r.status == "fail"]
    seconds = round(sum(r.seconds for r in results.values()), 1)
    report = {"device": device, "preset": "full" if device == "cuda" else "quick", "steps": plan.steps,
              "data": plan.data, "capability": capability, "gpu_count": plan.gpu_count, "passed": not failed,
              "budget_s": BUDGET_S if device == "cuda" else None,
              "estimated_s": estimated_total(plan, checks) if device == "cuda" else None, "seconds": seconds,
              "environment": environment(plan), "speedup": speedups(results),
              "checks": [vars(r) for r in results.values()]}
    write_json(plan.out / "gpu_check.json", report)
    print_table(results)
    for key, value in report["speedup"].items():
        print(f"{key.replace('_over_', ' over ')} (steady samples/s): {value:.2f}x")
    estimate = f" (estimated {report['estimated_s']:.0f} s)" if device == "cuda" else ""
    print(f"{len(results) - len(failed)} of {len(results)} checks did not fail{f'; failed: {failed}' if failed else ''}"
          f" in {seconds:.0f} s{estimate} -> {plan.out / 'gpu_check.json'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
