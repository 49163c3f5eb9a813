"""One command that proves the GPU path: every experiment, a resume, PTQ and hw_eval, run as users run them.

`python gpu_check.py` on a CUDA machine trains exp1-exp6 for a short schedule of the full configuration
(fp32; fp16 autocast with a GradScaler; the 4x batch; BitNeRF through torchao, compiled; NeRF and
BitNeRF under DDP through their own torchrun launch, one process per visible GPU over nccl), resumes
exp2's checkpoint on the device for more steps, trains exp1 compiled and exp4 eager against their own
runs (what `--compile auto` chooses, measured on the GPU), quantizes exp1 after training (ptq.py) and costs every
run on the accelerator models (hw_eval.py; skipped with a note where its toolchain is missing). Then, in
this process, it times dense matmuls at each run's MLP shapes in the run's compute dtype, for MFU.
`--device cpu` runs the same sequence on the quick preset for a few steps, on a smaller built-in scene, with
hw_eval mapping smaller tiles and without the compile comparison.

Every experiment runs as a subprocess, `python expN.py ... --out <out> --wandb disabled`, exactly the
command a user types. It prints a table (check, result, seconds, samples/s, peak memory, note) and writes
`<out>/gpu_check.json`. A check fails on a non-zero exit, with its stderr's last line recorded, or when
its run directory shows another device, precision, world size or step count than asked for. The exit
code is 0 only if no check failed (a hw_eval skipped for its missing toolchain is not a failure).
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
import rundir
from utils import OneLineParser, UserError, atomic_write, exit_on_user_error, nvidia_driver, resolve_device, write_json

REPO = Path(__file__).resolve().parent
EXPERIMENTS = tuple(configs.AXES)
# On a GPU: few enough that the full configuration's fp32 steps stay within minutes on a small GPU, enough
# that the last logged quarter's samples/s is past the warm-up (CUDA context, cuBLAS handles, compilation).
# On the CPU: enough for every logged, evaluated and checkpointed step of the schedule, and for a resume.
DEFAULT_STEPS = {"cuda": 100, "cpu": 20}
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
# The matmul benchmark's rows per layer: enough to saturate a GPU, few enough that the operands of the 4x
# batch's layers fit in a 16 GB one.
MATMUL_MAX_ROWS = 1 << 18
MATMUL_ROUNDS, MATMUL_PASSES = 3, 4
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


CHECKS = (
    Check("exp1", "NeRF, fp32"),
    Check("exp2", "AMP: fp16 autocast with a GradScaler (bf16 on the CPU)"),
    Check("exp3", "AMP with the 4x ray batch"),
    Check("exp4", "BitNeRF: torchao ternary weights and int8 activations, torch.compile"),
    Check("exp5", "NeRF under DDP, self-launched by torchrun (nccl over the GPUs; gloo on the CPU)"),
    Check("exp6", "BitNeRF under DDP, compiled"),
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


class CheckFailed(Exception):
    """A check's command failed or its output is not what was asked for: the message is one line."""


@dataclass
class Plan:
    """What the checks run: the device, the preset, the schedule, and where everything goes."""

    device: str  # cuda or cpu
    out: Path
    steps: int
    data: str | None
    timeout_s: float

    def experiment_steps(self, name: str) -> int:
        """The steps of an experiment's check: exp3 takes a quarter, its 4x batch taking the same rays."""
        return max(1, self.steps // 4) if name == "exp3" else self.steps

    def experiment_argv(self, name: str, out: Path | None = None, steps: int | None = None) -> list[str]:
        """The expN.py command line of an experiment's check: the full configuration on CUDA, the quick
        preset on the CPU, this schedule."""
        # exp3 counts its step options in exp1's steps (configs.STEP_COUNTS) and trains a quarter of them.
        steps = (steps or self.experiment_steps(name)) * (configs.experiment(name).batch_rays // configs.EXP1.batch_rays)
        argv = [] if self.device == "cuda" else ["--quick"]
        argv += ["--device", self.device, "--out", str(out or self.out), "--wandb", "disabled",
                 "--steps", str(steps), "--log-every", str(max(1, steps // 4)), "--eval-every", str(max(1, steps // 2)),
                 "--ckpt-every", str(max(1, steps // 2)), "--eval-views", "1",
                 "--video-frames", str(VIDEO_FRAMES[self.device])]
        if configs.experiment(name).model == "bitnerf":
            argv += ["--compile", "on"]
        if self.data:
            argv += ["--data", self.data]
        return argv

    def hw_eval_argv(self) -> list[str]:
        """The hw_eval.py command line of the hw_eval check: every run in out, its default tile on a GPU machine."""
        argv = ["hw_eval.py", "--runs", str(self.out), "--out", str(self.out / "hw_eval")]
        return argv + (["--tile", str(CPU_HW_TILE)] if self.device == "cpu" else [])

    def expected_world_size(self, name: str) -> int:
        if not configs.experiment(name).distributed:
            return 1
        if self.device == "cuda":
            import torch

            return torch.cuda.device_count()
        return 2  # bitnerf_ddp's default on the CPU

    def expected_precision(self, name: str) -> str:
        config = configs.experiment(name)
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
    """Train the experiment, then hold its run directory to what was asked for."""
    argv = plan.experiment_argv(name)
    run_command([f"{name}.py", *argv, "--overwrite"], result, log, plan.timeout_s)
    summary, metrics = read_run(plan.out / name)
    expected = {"device": plan.device, "precision": plan.expected_precision(name),
                "world_size": plan.expected_world_size(name), "steps": plan.experiment_steps(name)}
    found = {**summary, "device": summary.get("device", "").split(":")[0]}
    wrong = [f"{key} {found.get(key)!r} (expected {value!r})" for key, value in expected.items()
             if found.get(key) != value]
    if wrong:
        raise CheckFailed(f"{plan.out / name / rundir.SUMMARY} says " + ", ".join(wrong))
    if not math.isfinite(summary["psnr_test"]):
        raise CheckFailed(f"test PSNR is {summary['psnr_test']}")
    result.metrics = {
        "precision": summary["precision"], "world_size": summary["world_size"], "steps": summary["steps"],
        "train_samples_per_s": summary["train_samples_per_s"], "compile_s": summary.get("compile_s"),
        # The last logged interval, past the first steps' warm-up (and BitNeRF's compilation).
        "steady_samples_per_s": round(float(metrics[-1]["samples_per_s"])),
        "peak_mem_bytes": summary["peak_mem_bytes"], "psnr_test": summary["psnr_test"], "wall_s": summary["wall_s"],
    }


def check_resume(plan: Plan, result: Result, log: Path) -> None:
    """Continue a copy of exp2's run (checkpoint, optimizer, GradScaler) on the device for half as many steps again."""
    resumed_out = plan.out / RESUMED
    shutil.rmtree(resumed_out, ignore_errors=True)
    shutil.copytree(plan.out / "exp2", resumed_out / "exp2")
    start = json.loads((resumed_out / "exp2" / rundir.SUMMARY).read_text())["steps"]
    steps = start + max(1, start // 2)
    run_command(["exp2.py", *plan.experiment_argv("exp2", out=resumed_out, steps=steps), "--resume"], result, log,
                plan.timeout_s)
    summary, metrics = read_run(resumed_out / "exp2")
    if summary["steps"] != steps or int(metrics[-1]["step"]) != steps or summary["device"].split(":")[0] != plan.device:
        raise CheckFailed(f"the resumed run ended at step {summary['steps']} on {summary['device']}, expected step "
                          f"{steps} on {plan.device}")
    result.metrics = {"from_step": start, "to_step": steps, "psnr_test": summary["psnr_test"]}


def check_compile(plan: Plan, results: dict[str, Result], result: Result, log: Path) -> None:
    """Steady samples/s compiled over eager for NeRF (exp1) and BitNeRF (exp4), each against its own check's run:
    what --compile auto chose (BitNeRF's only), measured on the CPU, measured here. Skipped on the CPU."""
    if plan.device == "cpu":
        result.status, result.note = "skip", "on a GPU only: the CPU's measurement is BENCHMARKS.md's"
        return
    for name, choice in FLIPPED_COMPILE.items():
        run_command([f"{name}.py", *plan.experiment_argv(name, out=plan.out / FLIPPED), "--compile", choice,
                     "--overwrite"], result, log, plan.timeout_s)
        _, metrics = read_run(plan.out / FLIPPED / name)
        flipped, own = float(metrics[-1]["samples_per_s"]), results[name].metrics["steady_samples_per_s"]
        result.metrics[f"{name}_compiled_over_eager"] = round(flipped / own if choice == "on" else own / flipped, 2)


def check_ptq(plan: Plan, result: Result, log: Path) -> None:
    import ptq

    run_dir = plan.out / "exp1"
    argv = ["ptq.py", str(run_dir), "--device", plan.device] + (["--data", plan.data] if plan.data else [])
    run_command(argv, result, log, plan.timeout_s)
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
    run_command(plan.hw_eval_argv(), result, log, plan.timeout_s)
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
    run's layer shapes and compute dtype (BitNeRF against fp32, as bench.py does), times the GPUs it used."""
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
        rows_per_rank = config.batch_rays // world_size
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


def run_checks(plan: Plan, checks: list[Check]) -> dict[str, Result]:
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    for check in checks:
        result = results[check.name] = Result(check.name, check.what)
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
            if check.name in EXPERIMENTS:
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
    """Steady samples/s of exp2 (AMP) and exp3 (AMP, 4x batch) over exp1's (fp32)."""
    rate = {name: results[name].metrics.get("steady_samples_per_s") for name in ("exp1", "exp2", "exp3")
            if name in results and results[name].status == "pass"}
    return {f"{name}_over_exp1": round(rate[name] / rate["exp1"], 2)
            for name in ("exp2", "exp3") if name in rate and "exp1" in rate}


def print_table(results: dict[str, Result]) -> None:
    print(f"\n{'check':<9}{'result':<8}{'seconds':>8}{'samples/s':>12}{'peak MiB':>10}{'MFU':>7}  note")
    for r in results.values():
        samples = r.metrics.get("steady_samples_per_s")
        peak = r.metrics.get("peak_mem_bytes")
        mfu = r.metrics.get("mfu")
        print(f"{r.name:<9}{r.status:<8}{r.seconds:>8.1f}{f'{samples:,}' if samples else '':>12}"
              f"{f'{peak / 2**20:,.0f}' if peak else '':>10}{f'{mfu:.3f}' if mfu is not None else '':>7}  {r.note}")


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--data", help="a scene .npz or Blender folder (default: the built-in scene)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one command may take (default 900)")
    with exit_on_user_error():
        args = parser.parse_args(argv)
        if args.steps is not None and args.steps < 2:
            raise UserError(f"--steps must be at least 2 (a resume continues from a finished run), got {args.steps}")
        if args.timeout <= 0:
            raise UserError(f"--timeout must be positive, got {args.timeout}")
        checks = selected(args.only, args.skip)
        if not checks:
            raise UserError("--skip leaves no check to run")
        device = resolve_device(args.device).type
        out = args.out.resolve()  # the commands run in the project's folder
        data = (str(Path(args.data).resolve()) if args.data
                else small_builtin_scene(out) if device == "cpu" else None)
        plan = Plan(device, out, args.steps or DEFAULT_STEPS[device], data, args.timeout)
    print(f"gpu_check on {device} ({'full configuration' if device == 'cuda' else 'quick preset'}, {plan.steps} steps)"
          f" into {plan.out}", flush=True)
    try:
        results = run_checks(plan, checks)
    except KeyboardInterrupt:
        print("\ninterrupted; the check's processes were stopped", file=sys.stderr)
        sys.exit(130)
    failed = [r.name for r in results.values() if r.status == "fail"]
    report = {"device": device, "preset": "full" if device == "cuda" else "quick", "steps": plan.steps, "data": data,
              "passed": not failed, "environment": environment(plan), "speedup": speedups(results),
              "checks": [vars(r) for r in results.values()]}
    write_json(plan.out / "gpu_check.json", report)
    print_table(results)
    for key, value in report["speedup"].items():
        print(f"{key.replace('_over_', ' over ')} (steady samples/s): {value:.2f}x")
    print(f"{len(results) - len(failed)} of {len(results)} checks did not fail"
          f"{f'; failed: {failed}' if failed else ''} -> {plan.out / 'gpu_check.json'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
