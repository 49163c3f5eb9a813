"""One command that proves the GPU path: every experiment, a resume, PTQ and hw_eval, run as users run them.

`python gpu_check.py` on a CUDA machine trains exp1-exp6 for a short schedule of the full configuration with
the occupancy grid (fp32; fp16 autocast with a GradScaler; the 4x batch in four micro-batches; BitNeRF through
torchao, compiled; NeRF and BitNeRF under DDP through their own torchrun launch, one process per visible GPU
over nccl, where there are two or more), exp9 (exp5 with bf16-compressed gradients, at most 0.55x exp5's bytes
per step) with DDP, and with --quantized exp7 (int8 training, on the int8 kernel its plan chooses) and exp8 (fp8
training: real on compute capability 8.9 and up, emulated below, as its summary.json must say and its table line
repeats), which would take the plan over its T4 budget. It trains exp1 with TF32 and exp2 in bf16 where the GPU
has them (capability 8.0), resumes exp2's checkpoint on the device for more steps, trains exp1 compiled and exp4
eager against their own runs (what `--compile auto` chooses, measured on the GPU), quantizes exp1 after training
(ptq.py) and, with --hw-eval, costs every run on the accelerator models (hw_eval.py: CPU work, skipped with a
note where its toolchain is missing). Then, in this process, it times dense matmuls at each run's MLP shapes
in the run's compute dtype, for MFU. Before it starts it prints the plan: each check's estimated seconds on a
T4 with 2 vCPUs against the 8-minute budget, or why the device leaves it out.
`--device cpu` runs the same sequence on the quick preset for a few steps, on a smaller built-in scene, with
exp7 and exp8 (fp8 emulated), hw_eval mapping smaller tiles, and without the compile comparison.

Every experiment runs as a subprocess, `python expN.py ... --out <out> --wandb disabled`, exactly the
command a user types. It prints a table (check, result, seconds, samples/s, peak memory allocated and
reserved, MFU, note) and writes `<out>/gpu_check.json`. A check fails on a non-zero exit, with its stderr's
last line recorded, or when its run directory shows another device, precision, world size, step count or
micro-batching than asked for, or no occupancy grid; exp7 another int8 kernel, exp8 fp8 emulated where the GPU
has fp8 matmuls or real where it has none, exp9 more gradient bytes than asked for. The exit code is 0 only if
no check failed (a check skipped for the device or for hw_eval's missing toolchain is not a failure).

This file is the command; gpu_checks/ holds the rest: plan.py (the checks, which ones a device runs, their
command lines and estimates), runners.py (running each check's commands, reading its runs) and table.py
(gpu_check.json and the table).
"""

import sys
from pathlib import Path

import configs
from devices import resolve_device
from gpu_checks import table
from gpu_checks.plan import (
    BY_NAME,
    CPU_TIMEOUT_S,
    DEFAULT_STEPS,
    MIN_TIMEOUT_S,
    QUANTIZED,
    TIMEOUT_FACTOR,
    Check,
    Plan,
    capability_text,
    describe,
    selected,
    small_builtin_scene,
)
from gpu_checks.runners import run_checks
from utils import OneLineParser, UserError, exit_on_user_error


def gpu_properties(device: str) -> dict:
    """The Plan's capability and gpu_count: the first visible GPU's capability and how many are visible."""
    if device == "cpu":
        return {}
    import torch

    return {"capability": torch.cuda.get_device_capability(0), "gpu_count": torch.cuda.device_count()}


def parse(argv: list[str] | None) -> tuple[Plan, list[Check]]:
    """The plan and the checks of a command line; bad input is a UserError."""
    parser = OneLineParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="auto",
        choices=configs.DEVICES,
        help="cuda: the full configuration; cpu: the quick preset (auto: cuda if usable)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/gpu_check"),
        help="runs, logs and gpu_check.json (default: runs/gpu_check)",
    )
    parser.add_argument("--steps", type=int, help=f"training steps per experiment (default: {DEFAULT_STEPS})")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(BY_NAME),
        metavar="CHECK",
        help=f"run these checks and those they need ({', '.join(BY_NAME)})",
    )
    parser.add_argument(
        "--skip", nargs="+", choices=list(BY_NAME), default=[], metavar="CHECK", help="leave these checks out"
    )
    parser.add_argument(
        "--hw-eval",
        action="store_true",
        help="on a GPU machine, also run hw_eval (CPU work, minutes per run, outside the budget;"
        " always on with --device cpu, and with --only hw_eval)",
    )
    parser.add_argument(
        "--quantized",
        action="store_true",
        help=f"on a GPU machine, also run {' and '.join(QUANTIZED)} (int8 and fp8 training, outside"
        f" the budget; always on with --device cpu, and with --only naming one)",
    )
    parser.add_argument("--data", help="a scene .npz or Blender folder (default: the built-in scene)")
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"seconds one command may take (default: on a GPU {TIMEOUT_FACTOR}x its check's"
        f" estimate, at least {MIN_TIMEOUT_S}; on the CPU {CPU_TIMEOUT_S})",
    )
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
    data = str(Path(args.data).resolve()) if args.data else small_builtin_scene(out) if device == "cpu" else None
    hw_eval = device == "cpu" or args.hw_eval or "hw_eval" in (args.only or [])
    quantized = device == "cpu" or args.quantized or bool(set(QUANTIZED) & set(args.only or []))
    plan = Plan(
        device,
        out,
        args.steps or DEFAULT_STEPS[device],
        data,
        args.timeout,
        hw_eval=hw_eval,
        quantized=quantized,
        **gpu_properties(device),
    )
    return plan, checks


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        plan, checks = parse(argv)
    device = plan.device
    capability = capability_text(plan.capability) if plan.capability else None
    print(
        f"gpu_check on {device} ({'full configuration' if device == 'cuda' else 'quick preset'}, {plan.steps} steps"
        f"{f', capability {capability}, {plan.gpu_count} GPU(s)' if capability else ''}) into {plan.out}",
        *describe(plan, checks),
        sep="\n",
        flush=True,
    )
    try:
        results = run_checks(plan, checks)
    except KeyboardInterrupt:
        print("\ninterrupted; the check's processes were stopped", file=sys.stderr)
        sys.exit(130)
    report = table.write_report(plan, checks, results)
    table.print_report(report, results, plan.out)
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
