"""gpu_check's plan: the checks, what each needs, which ones a device runs, their command lines, the estimates
of their seconds on a T4 against the budget, and the smaller scene the CPU sequence trains on.

A plan is a function of the device's description alone (device, compute capability, GPU count), so that any
GPU's plan can be built and tested on the CPU.
"""

from dataclasses import dataclass
from pathlib import Path

import configs
import gpus
from files import atomic_write

# The experiments the check runs: exp1-exp9.
EXPERIMENTS = ("exp1", "exp2", "exp3", "exp4", "exp5", "exp6", "exp7", "exp8", "exp9")
# exp7 and exp8 (int8 and fp8 training) would take the default plan over its T4 budget at the estimates below
# (docs/gpus.md, "What gpu_check.py runs on each GPU"): on a GPU machine they run with --quantized (or --only), as
# hw_eval runs with --hw-eval; on the CPU always.
QUANTIZED = ("exp7", "exp8")
# A check whose run compresses its gradients, with the run it compresses and the most of that run's gradient
# bytes per step (summary.json's sent_bytes_per_step, measured) it may send where that run passed: exp9's bf16
# hook sends half of exp5's fp32 all-reduce, the same buckets at 2 bytes an element instead of 4.
COMPRESSED = {"exp9": ("exp5", 0.55)}
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
# Experiments whose rays per process the check splits into this many micro-batches: exp3's quarter is exp1's
# batch, which fits wherever exp1 fits, and forcing it makes micro-batching run even on a GPU that holds the
# whole 4x batch.
MICRO_BATCHES = {"exp3": 4}
# The default plan's target on the smallest GPU our users have: a T4 with 2 vCPUs (Colab's).
BUDGET_S = 480
# What each check costs on a T4 with 2 vCPUs, as (seconds, seconds per step of --steps): the budget's inputs,
# worked out from FLOP counts and per-process costs, not measured (the working: docs/gpus.md, "The T4 estimates").
# gpu_check.json keeps each check's estimate beside its seconds so that the first T4 run can correct them.
T4_ESTIMATES = {
    "exp1": (30, 0.7),
    "exp2": (25, 0.25),
    "exp3": (25, 0.3),
    "exp4": (90, 1.0),
    "exp5": (40, 0.4),
    "exp6": (100, 0.6),
    "exp7": (30, 0.7),
    "exp8": (80, 1.0),
    "exp9": (40, 0.4),
    "tf32": (30, 0.7),
    "bf16": (25, 0.25),
    "resume": (25, 0.125),  # exp2 for half the steps again
    "compile": (100, 1.7),  # exp1 compiled (its compilation included) and exp4 eager
    "ptq": (30, 0.0),
    "hw_eval": (900, 0.0),
    "mfu": (15, 0.0),
}
# Seconds one command may take unless --timeout says: on a GPU this many times its check's estimate, which is
# not measured, and at least MIN_TIMEOUT_S; so a hung command ends within minutes rather than the whole
# budget. On the CPU, whose speed here varies with other load, CPU_TIMEOUT_S.
TIMEOUT_FACTOR, MIN_TIMEOUT_S, CPU_TIMEOUT_S = 4, 180, 900


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
    "tf32": Variant(
        "exp1",
        ("--tf32",),
        gpus.TF32_MIN_CAPABILITY,
        "TF32 tensor cores",
        "TF32 is a GPU matmul mode",
        {"float32_matmul_precision": "high"},
    ),
    "bf16": Variant(
        "exp2",
        ("--amp-dtype", "bf16"),
        gpus.BF16_MIN_CAPABILITY,
        "native bf16",
        "exp2 on the CPU runs bf16 already",
        {"precision": "bf16-amp"},
    ),
}
RUNS = (*EXPERIMENTS, *VARIANTS)  # the checks that train a run

CHECKS = (
    Check("exp1", "NeRF, fp32"),
    Check("exp2", "AMP: fp16 autocast with a GradScaler (bf16 on the CPU)"),
    Check("exp3", "AMP with the 4x ray batch, in four micro-batches"),
    Check("exp4", "BitNeRF: torchao ternary weights and int8 activations, torch.compile"),
    Check("exp5", "NeRF under DDP, self-launched by torchrun (nccl over the GPUs; gloo on the CPU)"),
    Check("exp6", "BitNeRF under DDP, compiled"),
    Check("exp7", "NeRF trained in int8: int8 weights and activations in the hidden layers' forward passes"),
    Check("exp8", "NeRF trained in fp8: torchao's float8 training, tensorwise"),
    Check("exp9", "exp5 with its gradients compressed to bf16 (DDP's bf16 hook)"),
    Check("tf32", "exp1 with TF32 matmuls"),
    Check("bf16", "exp2 with bf16 autocast"),
    Check("resume", "exp2's checkpoint resumed on the device for more steps", ("exp2",)),
    Check("compile", "exp1 compiled and exp4 eager: --compile auto's rule measured on the GPU", ("exp1", "exp4")),
    Check("ptq", "post-training fp16 and torchao int8 variants of exp1", ("exp1",)),
    Check("hw_eval", "accelerator energy and latency of every run (AccelForge)", EXPERIMENTS, needs_any=True),
    Check("mfu", "dense matmuls at each run's MLP shapes and dtype: MFU", EXPERIMENTS, needs_any=True),
)
BY_NAME = {check.name: check for check in CHECKS}


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
    quantized: bool = True  # exp7 and exp8 (QUANTIZED)

    def skip_reason(self, name: str) -> str | None:
        """Why this device leaves a check out (None: the check runs)."""
        if name == "compile" and self.device == "cpu":
            return "on a GPU only: the CPU's measurement is in docs/performance.md"
        if name == "hw_eval" and not self.hw_eval:
            return "CPU work, off on a GPU machine: --hw-eval runs it"
        if name in QUANTIZED and not self.quantized:
            return "outside the T4 budget, off on a GPU machine: --quantized runs it"
        if self.device == "cpu":
            return f"on a GPU only: {VARIANTS[name].cpu_reason}" if name in VARIANTS else None
        if name in VARIANTS and self.capability < VARIANTS[name].min_capability:
            variant = VARIANTS[name]
            return (
                f"needs compute capability {capability_text(variant.min_capability)} ({variant.feature});"
                f" this GPU is {capability_text(self.capability)}"
            )
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
        argv += [
            "--device",
            self.device,
            "--out",
            str(out or self.run_out(name)),
            "--wandb",
            "disabled",
            "--steps",
            str(steps),
            "--log-every",
            str(max(1, steps // 4)),
            "--eval-every",
            str(max(1, steps // 2)),
            "--ckpt-every",
            str(max(1, steps // 2)),
            "--eval-views",
            "1",
            "--video-frames",
            str(VIDEO_FRAMES[self.device]),
            "--occupancy-grid",
        ]
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
        """summary.json's precision (precision.precision_name) of an experiment's run on this device."""
        config = configs.experiment(experiment)
        if config.model == "bitnerf":
            return "ternary-int8"
        if config.quantized_training != "none":
            return config.quantized_training.split("-")[0]
        if config.precision == "fp32":
            return "fp32"
        return "fp16-amp" if self.device == "cuda" else "bf16-amp"

    def expected_emulated(self, experiment: str) -> bool | None:
        """summary.json's emulated for an fp8 run: True where the device has no fp8 matmul (the CPU, a GPU below
        gpus.FP8_MIN_CAPABILITY; converters.fp8_emulated), False on a GPU with one; None for other runs."""
        if not configs.experiment(experiment).quantized_training.startswith("fp8"):
            return None
        return self.device == "cpu" or self.capability < gpus.FP8_MIN_CAPABILITY

    def fp8_note(self, emulated: bool) -> str:
        """Which fp8 ran, for the table: real on this GPU, or emulated and why."""
        where = "the CPU" if self.device == "cpu" else f"capability {capability_text(self.capability)}"
        return f"fp8 emulated: {where} has no fp8 matmul" if emulated else f"fp8 real ({where})"

    def expected_int8_kernel(self, experiment: str) -> str | None:
        """summary.json's int8_kernel (measured) for an int8 training run: the kernel the run's own plan chooses
        for this device (plan.int8_kernel_decision under --int8-kernel auto); None for other runs (BitNeRF's
        exp4 and exp6 record theirs, not held to it)."""
        config = self.base_config(experiment)
        if config.quantized_training != "int8":
            return None
        import plan as run_plan  # the runs' own plan (plan.py), not this module

        target = (
            run_plan.Target("cpu")
            if self.device == "cpu"
            else run_plan.Target("cuda", gpus.GPU(f"capability {capability_text(self.capability)}", self.capability, 0))
        )
        return run_plan.int8_kernel_decision(config, target)

    def expectation(self, name: str) -> str:
        """What a training check's run is held to beyond precision, world size and steps, as describe prints it."""
        experiment = self.experiment(name)
        if (emulated := self.expected_emulated(experiment)) is not None:
            return self.fp8_note(emulated)
        if kernel := self.expected_int8_kernel(experiment):
            return f"int8 kernel {kernel}"
        if name in COMPRESSED:
            reference, ratio = COMPRESSED[name]
            return f"at most {ratio}x {reference}'s gradient bytes per step"
        return ""


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
        expect = plan.expectation(check.name) if check.name in RUNS else ""
        lines.append(
            f"  {check.name:<9}{f'~{estimate:.0f} s' if estimate is not None else 'run':<10}"
            f"{check.what}{f'; expects {expect}' if expect else ''}"
            f" (timeout {plan.command_timeout(check.name):.0f} s)"
        )
    if plan.device == "cuda":
        total = estimated_total(plan, checks)
        lines.append(
            f"estimated {total:.0f} s at a T4's speed with 2 vCPUs (worked out, not measured): "
            f"{'within' if total <= BUDGET_S else 'over'} the {BUDGET_S} s budget of the default plan on a T4"
        )
    return lines


def estimated_total(plan: Plan, checks: list[Check]) -> float:
    return round(sum(plan.estimate_s(c.name) for c in checks if not plan.skip_reason(c.name)), 1)


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
