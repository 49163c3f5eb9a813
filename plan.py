"""What a run will do on its device, decided before its run directory exists: the device rules, the compile
decision, the int8 kernel, the micro-batches and the memory they need.

`python expN.py --plan` prints this plan for the machine's own device without training; `--plan PROFILE`
(gpus.PROFILES: t4, p100, l4, a100-40, a100-80, h100) plans for that GPU on any machine, CPU included. The
training loop runs the same plan (`plan_run`), so a plan that cannot run is the one-line error, exit code 2,
that the run would give. `python plan.py --table` prints docs/gpus.md's table of what each experiment needs
on each GPU of our users.

The memory estimate per process: MEMORY_MARGIN times the bytes autograd saves for a micro-batch's rays,
counted on the CPU in the run's autocast dtype (on CUDA measured instead by a few-ray probe on the device,
whose fused kernels save less than the CPU's decompositions), plus the sampler's rays and the weights,
gradients and AdamW moments and the step's batch of rays. A step whose rays do not fit is split into
micro-batches (step.train_step); only a device on which not even MIN_MICRO_BATCH_RAYS rays fit is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
from dataclasses import dataclass

import torch
from torch import nn

import bitnerf
import configs
import converters
import gpus
import precision
import ray_memory
from configs import ExperimentConfig
from dataset import Scene, load_scene
from devices import available_memory_bytes
from files import read_json
from gpus import GIB, GPU
from utils import OneLineParser, UserError, exit_on_user_error

# A step's peak memory over what autograd saves for its backward pass: the gradients of the activations, the
# temporaries of both passes and the allocator's rounding. Chosen above the ratios of the growth per ray of
# train_step's memory, measured on the CPU, to the saved bytes per ray (NeRF, BitNeRF, AMP; docs/gpus.md, "Memory
# and micro-batches"), and no higher, so that batches that fit are not split.
MEMORY_MARGIN = 1.5
# Bytes per training pixel that RaySampler keeps on the device: origin, direction and colour, 3 floats each.
SAMPLER_BYTES_PER_PIXEL = 9 * 4
# Bytes per ray of a step's batch (RaySampler.batch): origin, direction and colour, and its samples' jitter.
BATCH_FLOATS_PER_RAY = 9
# Bytes per parameter of training: the weight, its gradient and AdamW's two moments, fp32 each.
TRAINING_BYTES_PER_PARAM = 4 * 4
# What a CUDA process holds besides its tensors (the context, cuBLAS's workspace, kernels loaded): a profile's
# memory less this is what the plan gives the run.
CUDA_OVERHEAD_BYTES = GIB
# The smallest micro-batch worth running: fewer rays per pass leave a GPU idle.
MIN_MICRO_BATCH_RAYS = 16


@dataclass(frozen=True)
class Target:
    """The device a plan is for: the CPU, this machine's GPU, or a GPU profile (gpu set, nothing probed)."""

    kind: str  # "cpu" or "cuda"
    gpu: GPU | None = None
    profile: str | None = None  # the --plan PROFILE this target stands for
    available_bytes: int | None = None  # for the CPU and a real GPU: what a process can allocate now

    @property
    def name(self) -> str:
        if self.gpu is None:
            return "cpu"
        where = f"profile {self.profile}" if self.profile else "this machine"
        return f"{self.gpu.name} (capability {self.gpu.capability[0]}.{self.gpu.capability[1]}, {where})"


def local_target(device: torch.device) -> Target:
    """The target of a run on this machine's device."""
    if device.type != "cuda":
        return Target("cpu", available_bytes=available_memory_bytes(device))
    props = torch.cuda.get_device_properties(device)
    gpu = GPU(props.name, (props.major, props.minor), props.total_memory)
    return Target("cuda", gpu, available_bytes=available_memory_bytes(device))


def profile_target(name: str) -> Target:
    return Target("cuda", gpus.profile(name), profile=name)


@dataclass(frozen=True)
class Plan:
    """What a run does on its target; `describe()` prints it."""

    config: ExperimentConfig
    target: Target
    world_size: int
    sharing: int  # processes that share the device's memory (CPU ranks of one machine)
    autocast_dtype: torch.dtype | None
    compiled: bool
    compile_reason: str
    int8_kernel: str | None  # BitNeRF's int8 matmul kernel; None for NeRF
    rays_per_process: int
    micro_batch_rays: int
    bytes_per_ray: float  # with MEMORY_MARGIN
    fixed_bytes: int
    available_bytes: int | None
    warnings: tuple[str, ...] = ()

    @property
    def micro_batches(self) -> int:
        return math.ceil(self.rays_per_process / self.micro_batch_rays)

    @property
    def peak_bytes(self) -> int:
        """The estimated peak per process: the fixed part and one micro-batch."""
        return int(self.fixed_bytes + self.micro_batch_rays * self.bytes_per_ray)

    @property
    def precision(self) -> str:
        return precision.precision_name(self.config, self.autocast_dtype)

    def describe(self, seconds: float | None = None, rate_source: str = "") -> str:
        config, gib = self.config, lambda b: f"{b / GIB:.1f} GiB"
        dtype = precision.dtype_name(self.autocast_dtype) or "none (fp32)"
        available = "unknown" if self.available_bytes is None else gib(self.available_bytes)
        split = (
            f"{self.micro_batches} micro-batches of {self.micro_batch_rays} rays"
            if self.micro_batches > 1
            else "one pass (no micro-batches)"
        )
        lines = [
            f"{config.name} plan on {self.target.name}",
            f"  precision      {self.precision}, autocast {dtype}",
            f"  compile        {'yes' if self.compiled else 'no'} ({self.compile_reason})",
            f"  int8 kernel    {self.int8_kernel or 'none (no int8 matmuls)'}",
            f"  batch          {config.batch_rays} rays per step"
            + (f" over {self.world_size} processes: {self.rays_per_process} each" if self.world_size > 1 else ""),
            f"  micro-batches  {split}",
            f"  memory         about {gib(self.peak_bytes)} per process at peak, {available} available"
            + (f" to {self.sharing} processes" if self.sharing > 1 else ""),
            f"  steps          {config.steps}"
            f" ({config.steps * config.batch_rays * config.samples_per_ray:.3g} samples)",
            "  time           "
            + (
                f"about {seconds / 60:.0f} min at {rate_source}"
                if seconds is not None
                else "unknown: no measured rate for this device yet"
            ),
        ]
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


def supports_arch(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch built for arch_list runs kernels on a GPU of capability: a binary for sm_XY runs on
    sm_XZ with Z >= Y (the same major), and PTX (compute_XY) compiles for any capability >= XY."""
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        arch_major, arch_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= capability:
            return True
    return False


def check_device(config: ExperimentConfig, target: Target) -> list[str]:
    """The device rules that refuse a run (UserError, one line with the fix) or warn (returned lines)."""
    gpu = target.gpu
    warnings = []
    if config.quantized_training.startswith("fp8") and (gpu is None or gpu.capability < gpus.FP8_MIN_CAPABILITY):
        where = "the CPU" if gpu is None else f"the {gpu.name} ({gpu.arch}, below capability 8.9)"
        warnings.append(
            f"{config.quantized_training} training runs emulated on {where}, which has no fp8 matmul:"
            f" its quality is fp8's, its speed is not"
        )
    if gpu is None:
        return warnings
    arch_list = torch.cuda.get_arch_list()
    if arch_list and not supports_arch(gpu.capability, arch_list):
        raise UserError(
            f"the {gpu.name} ({gpu.arch}) has no kernels in this PyTorch ({torch.__version__}, built"
            f" for {' '.join(arch_list)}): install a build that has them, {gpus.OLD_GPU_TORCH}"
        )
    if config.amp_dtype == "bf16" and config.precision == "amp" and gpu.capability < gpus.BF16_MIN_CAPABILITY:
        raise UserError(
            f"--amp-dtype bf16: the {gpu.name} ({gpu.arch}) has no native bf16 (autocast would"
            f" emulate it, slowly): use --amp-dtype fp16, which trains with gradient scaling"
        )
    if config.tf32 and gpu.capability < gpus.TF32_MIN_CAPABILITY:
        warnings.append(f"--tf32: the {gpu.name} has no TF32 tensor cores; fp32 matmuls stay IEEE fp32")
    return warnings


def compile_decision(config: ExperimentConfig, target: Target) -> tuple[bool, str]:
    """Whether to torch.compile the radiance fields, and why: --compile on/off, and auto compiles BitNeRF's and
    fp8 training's, whose many small quantization ops (scales, casts) inductor fuses, as torchao's float8 training
    expects, while NeRF's matmul-bound step ran slower compiled on the CPU (docs/performance.md, "torch.compile on
    the CPU"). Inductor needs a C++ compiler on the CPU and Triton
    (capability 7.0) on a GPU: where it has neither, auto stays eager and on is refused."""
    if target.gpu is not None and target.gpu.capability < gpus.TRITON_MIN_CAPABILITY:
        missing = f"the {target.gpu.name} ({target.gpu.arch}) is below Triton's minimum capability 7.0"
        fix = "use --compile off (or auto, which stays eager there)"
    else:
        compiler = os.environ.get("CXX", "g++")  # what inductor builds its CPU kernels with
        missing = None if target.kind != "cpu" or shutil.which(compiler) else f"{compiler} is not on the PATH"
        fix = "install one (apt-get install g++) or use --compile off"
    if config.compile == "on":
        if missing:
            raise UserError(f"--compile on cannot compile here: {missing}; {fix}")
        return True, "--compile on"
    if config.compile == "off":
        return False, "--compile off"
    if missing:
        return False, f"auto, but {missing}"
    if config.model == "bitnerf":
        return True, "auto: BitNeRF compiles"
    if config.quantized_training.startswith("fp8"):
        return True, "auto: fp8 training compiles (its scaling and casts are what inductor fuses)"
    return False, "auto: NeRF runs eager"


def int8_matmul_widths(config: ExperimentConfig) -> list[int]:
    """The K (input features) of the layers whose matmuls run in int8, in the order they run."""
    meta = torch.device("meta")
    fake_scene = argparse.Namespace(near=2.0, far=6.0, white_bkgd=False)
    model = bitnerf.build_model(dataclasses.replace(config, occupancy_grid=False), fake_scene, meta, quantized=False)
    return [
        m.in_features
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and converters.layer_format(name, config) in ("ternary", "int8")
    ]


def int8_kernel_decision(config: ExperimentConfig, target: Target) -> str | None:
    """The int8 matmul kernel of a model with int8 or ternary layers (bitnerf.INT8_KERNELS): on the CPU torch._int_mm;
    on a GPU of capability 8.0 or more torchao's Triton kernel, which uses int8 tensor cores there; below it (Triton's
    int8 dot has no tensor cores, or there is no Triton) cuBLAS's torch._int_mm, whose K must be a multiple of 8:
    padded."""
    if not int8_matmul_widths(config):
        return None
    gpu = target.gpu
    if config.int8_kernel == "auto":
        if gpu is None:
            return "int-mm"
        return "torchao-triton" if gpu.capability >= gpus.TRITON_INT8_TENSOR_CORES_MIN_CAPABILITY else "int-mm-padded"
    if config.int8_kernel == "torchao-triton" and (gpu is None or gpu.capability < gpus.TRITON_MIN_CAPABILITY):
        where = "the CPU" if gpu is None else f"the {gpu.name} ({gpu.arch}, below Triton's 7.0)"
        raise UserError(
            f"--int8-kernel torchao-triton: torchao's Triton kernel does not run on {where}: use --int8-kernel auto"
        )
    if config.int8_kernel == "int-mm" and gpu is not None:
        odd = sorted({k for k in int8_matmul_widths(config) if k % gpus.INT_MM_MULTIPLE})
        if odd:
            raise UserError(
                f"--int8-kernel int-mm: cuBLAS's int8 matmul needs K in multiples of"
                f" {gpus.INT_MM_MULTIPLE}, and {config.name}'s layers have K = {', '.join(map(str, odd))}:"
                f" use --int8-kernel int-mm-padded (or auto)"
            )
    return config.int8_kernel


def plan_run(
    config: ExperimentConfig,
    scene: Scene,
    target: Target,
    world_size: int = 1,
    sharing: int = 1,
    device: torch.device | None = None,
) -> Plan:
    """The plan of config on target with world_size processes, `sharing` of which share its memory (CPU ranks
    of one machine). device: the real CUDA device to probe, where the plan is for this machine's GPU."""
    dtype = precision.amp_dtype(config, torch.device(target.kind))
    warnings = check_device(config, target)
    compiled, compile_reason = compile_decision(config, target)
    kernel = int8_kernel_decision(config, target)
    if device is not None and device.type == "cuda":
        if kernel:
            bitnerf.use_int8_kernel(kernel, device)  # the probe runs the matmuls the run will
        per_ray = ray_memory.probed_bytes_per_ray(config, scene, device, dtype)
        params = sum(p.numel() for p in bitnerf.build_model(config, scene, torch.device("meta")).parameters())
    else:
        counted, params = ray_memory.counted_bytes_per_ray(config, scene, dtype)
        per_ray = counted * MEMORY_MARGIN
    pixels = len(scene.i_train) * scene.height * scene.width
    rays = config.batch_rays // world_size
    batch = 4 * (BATCH_FLOATS_PER_RAY + config.jitter_per_ray) * rays
    fixed = SAMPLER_BYTES_PER_PIXEL * pixels + TRAINING_BYTES_PER_PARAM * params + batch
    available = target.available_bytes
    if available is None and target.gpu is not None:
        available = target.gpu.memory_bytes - CUDA_OVERHEAD_BYTES
    micro = config.micro_batch_rays and min(config.micro_batch_rays, rays)
    fits = None if available is None else int(max(available / sharing - fixed, 0) // per_ray)
    if fits is not None:
        where = f"{target.name}" + (f" ({sharing} processes)" if sharing > 1 else "")
        if micro and micro > fits:
            raise UserError(
                f"--micro-batch-rays {micro} needs about {(fixed + micro * per_ray) / GIB:.1f} GiB per"
                f" process on {where}, which has {available / GIB:.1f} GiB:"
                + (
                    f" use --micro-batch-rays {fits} or auto"
                    if fits >= MIN_MICRO_BATCH_RAYS
                    else " free memory, or shrink the model (--width, --depth, --n-coarse, --n-fine)"
                )
            )
        if fits < MIN_MICRO_BATCH_RAYS and not micro:
            raise UserError(
                f"not even {MIN_MICRO_BATCH_RAYS} rays per micro-batch fit on {where}: a micro-batch"
                f" of them needs about {(fixed + MIN_MICRO_BATCH_RAYS * per_ray) / GIB:.1f} GiB of the"
                f" {available / GIB:.1f} GiB available: free memory, or shrink the model"
                f" (--width, --depth, --n-coarse, --n-fine)"
            )
    if not micro:
        parts = 1 if fits is None or rays <= fits else math.ceil(rays / fits)
        micro = math.ceil(rays / parts)
    return Plan(
        config,
        target,
        world_size,
        sharing,
        dtype,
        compiled,
        compile_reason,
        kernel,
        rays,
        micro,
        per_ray,
        fixed,
        available,
        tuple(warnings),
    )


def known_rate(config: ExperimentConfig, target: Target) -> tuple[float, str] | None:
    """(training samples per second, where it comes from): a finished run of this experiment in its run
    directory that trained on the same device (the same GPU model), with the same compile setting."""
    from rundir import SUMMARY, path_of

    summary_path = path_of(config) / SUMMARY
    if not summary_path.exists():
        return None
    try:
        summary = read_json(summary_path)
    except UserError:
        return None
    same_device = summary.get("device", "").split(":")[0] == target.kind and summary.get("device_name") == (
        target.gpu.name if target.gpu else summary.get("device_name")
    )
    rate = summary.get("train_samples_per_s")
    if not same_device or not rate:
        return None
    return rate, f"{rate:,.0f} samples/s, measured by {summary_path.parent}"


def print_plan(config: ExperimentConfig, profile: str, nproc: int | None) -> None:
    """`expN.py --plan [PROFILE]`: the plan for this machine's device, or for a GPU profile, on stdout."""
    from bitnerf_ddp import launch_nproc
    from devices import resolve_device

    if profile:
        target = profile_target(profile)
        # A profile is one GPU model; a distributed experiment plans for two of them (Kaggle's 2xT4) unless told.
        world_size = (nproc or 2) if config.distributed else 1
        sharing, device = 1, None
    else:
        device = resolve_device(config.device)
        target = local_target(device)
        world_size = launch_nproc(nproc, device) if config.distributed else 1
        sharing = world_size if device.type == "cpu" else 1
    scene = load_scene(config.data, config.downscale, config.val_views)
    plan = plan_run(config, scene, target, world_size, sharing, device)
    rate = known_rate(config, target)
    seconds = None if rate is None else config.steps * config.batch_rays * config.samples_per_ray / rate[0]
    print(plan.describe(seconds, rate[1] if rate else ""))


TABLE_PROFILES = ("t4", "l4", "a100-40", "a100-80", "h100")


def requirements_table(scene: Scene) -> str:
    """docs/gpus.md's table: for each experiment of the full configuration on each GPU profile (two GPUs of it
    for the distributed ones), the estimated peak memory per process, the micro-batches and the int8 kernel."""
    header = ["experiment", *TABLE_PROFILES]
    rows = []
    for name in configs.AXES:
        config = configs.experiment(name)
        cells = []
        for profile in TABLE_PROFILES:
            plan = plan_run(config, scene, profile_target(profile), 2 if config.distributed else 1)
            split = f"{plan.micro_batches}×{plan.micro_batch_rays}" if plan.micro_batches > 1 else "1 pass"
            kernel = f", {plan.int8_kernel}" if plan.int8_kernel else ""
            cells.append(f"{plan.peak_bytes / GIB:.1f} GiB, {split}{kernel}")
        rows.append([name + (" (2 GPUs)" if config.distributed else ""), *cells])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        prog="plan.py",
        description="Print docs/gpus.md's table of what each experiment of the"
        " full configuration needs on each GPU profile (memory per process, micro-batches,"
        " int8 kernel).",
    )
    parser.add_argument("--table", action="store_true", help="print the Markdown table (the default action)")
    parser.add_argument("--data", default=None, help="the scene the table plans for (default: the built-in scene)")
    with exit_on_user_error():
        args = parser.parse_args(argv)
        print(requirements_table(load_scene(args.data)))


if __name__ == "__main__":
    main(sys.argv[1:])
