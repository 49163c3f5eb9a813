"""gpu_check's runners: each check's commands, run as a user runs them, and what their run directories must show.

run_checks runs a plan's checks in order, each into a Result: a training check runs `python expN.py ...` and
holds its summary.json to what was asked for; resume, compile, ptq and hw_eval run their commands on those
runs; mfu times dense matmuls in this process.
"""

import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import command_line
import rundir
from gpu_checks.plan import COMPRESSED, EXPERIMENTS, RUNS, VARIANTS, Check, Plan

REPO = Path(__file__).resolve().parents[1]  # the commands run in the project's folder
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


@dataclass
class Result:
    """One check's outcome, as gpu_check.json records it."""

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
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
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


def check_experiment(
    plan: Plan, name: str, result: Result, log: Path, results: dict[str, Result] | None = None
) -> None:
    """Train the experiment (or variant), then hold its run directory to what was asked for. Fields that
    summary.json gained later (micro-batching, kernels, reserved memory) are recorded as None where a run lacks
    them, and only checked where present. An fp8 run must say whether it was emulated as the device implies
    (and its note says which), an int8 training run must have run its plan's int8 kernel, and a run that
    compresses its gradients must have sent at most its share of the uncompressed run's bytes where that one
    passed (results: the checks before it)."""
    experiment = plan.experiment(name)
    run_command(
        [f"{experiment}.py", *plan.experiment_argv(name), "--overwrite"], result, log, plan.command_timeout(name)
    )
    summary_path = plan.run_out(name) / experiment / rundir.SUMMARY
    summary, metrics = read_run(summary_path.parent)
    expected = {
        "device": plan.device,
        "precision": plan.expected_precision(experiment),
        "world_size": plan.expected_world_size(experiment),
        "steps": plan.experiment_steps(experiment),
        **(VARIANTS[name].expect if name in VARIANTS else {}),
    }
    if (emulated := plan.expected_emulated(experiment)) is not None:
        expected["emulated"] = emulated
    if kernel := plan.expected_int8_kernel(experiment):
        expected["int8_kernel"] = kernel
    found = {**summary, "device": summary.get("device", "").split(":")[0]}
    wrong = [
        f"{key} {found.get(key)!r} (expected {value!r})" for key, value in expected.items() if found.get(key) != value
    ]
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
        "precision": summary["precision"],
        "world_size": summary["world_size"],
        "steps": summary["steps"],
        "train_samples_per_s": summary["train_samples_per_s"],
        "compile_s": summary.get("compile_s"),
        # The last logged interval, past the first steps' warm-up (and BitNeRF's compilation).
        "steady_samples_per_s": round(float(metrics[-1]["samples_per_s"])),
        "peak_mem_bytes": summary["peak_mem_bytes"],
        "peak_reserved_bytes": summary.get("peak_reserved_bytes"),
        "psnr_test": summary["psnr_test"],
        "wall_s": summary["wall_s"],
        # What ran: the kernels and the number formats, as the run measured them.
        "compiled": summary.get("compiled"),
        "int8_kernel": summary.get("int8_kernel"),
        "float32_matmul_precision": summary.get("float32_matmul_precision"),
        "micro_batch_rays": summary.get("micro_batch_rays"),
        "micro_batches": summary.get("micro_batches"),
        "emulated": summary.get("emulated"),
        "sent_bytes_per_step": summary.get("sent_bytes_per_step"),
        **skipped,
    }
    notes = [result.note] if result.note else []
    if emulated is not None:
        notes.append(plan.fp8_note(summary["emulated"]))
    if kernel:
        notes.append(f"int8 kernel {summary['int8_kernel']}")
    if name in COMPRESSED:
        notes.append(check_compression(name, summary_path, summary, results or {}, result))
    result.note = "; ".join(notes)


def check_compression(name: str, summary_path: Path, summary: dict, results: dict[str, Result], result: Result) -> str:
    """Hold a compressed run's measured gradient bytes per step to at most COMPRESSED's share of its
    uncompressed run's, where that run passed; returns the note that says how they compare."""
    reference, max_ratio = COMPRESSED[name]
    sent = summary.get("sent_bytes_per_step")
    if not sent:
        raise CheckFailed(f"{summary_path} says sent_bytes_per_step {sent!r} (expected the bytes its hook sent)")
    other = results.get(reference)
    if other is None or other.status != "pass" or not other.metrics.get("sent_bytes_per_step"):
        why = (
            "did not run"
            if other is None or other.status == "skip"
            else "failed"
            if other.status != "pass"
            else "has no sent_bytes_per_step"
        )
        return f"gradient bytes not compared: {reference} {why}"
    ratio = sent / other.metrics["sent_bytes_per_step"]
    result.metrics[f"sent_over_{reference}"] = round(ratio, 3)
    if ratio > max_ratio:
        raise CheckFailed(
            f"{name} sent {sent} gradient bytes per step, {ratio:.2f}x {reference}'s"
            f" {other.metrics['sent_bytes_per_step']} (expected at most {max_ratio}x)"
        )
    return f"sent {ratio:.2f}x {reference}'s gradient bytes per step"


def check_resume(plan: Plan, result: Result, log: Path) -> None:
    """Continue a copy of exp2's run (checkpoint, optimizer, GradScaler) on the device for half as many steps again."""
    resumed_out = plan.out / RESUMED
    shutil.rmtree(resumed_out, ignore_errors=True)
    shutil.copytree(plan.out / "exp2", resumed_out / "exp2")
    start = json.loads((resumed_out / "exp2" / rundir.SUMMARY).read_text())["steps"]
    steps = start + max(1, start // 2)
    run_command(
        ["exp2.py", *plan.experiment_argv("exp2", out=resumed_out, steps=steps), "--resume"],
        result,
        log,
        plan.command_timeout("resume"),
    )
    summary, metrics = read_run(resumed_out / "exp2")
    if summary["steps"] != steps or int(metrics[-1]["step"]) != steps or summary["device"].split(":")[0] != plan.device:
        raise CheckFailed(
            f"the resumed run ended at step {summary['steps']} on {summary['device']}, expected step "
            f"{steps} on {plan.device}"
        )
    result.metrics = {"from_step": start, "to_step": steps, "psnr_test": summary["psnr_test"]}


def check_compile(plan: Plan, results: dict[str, Result], result: Result, log: Path) -> None:
    """Steady samples/s compiled over eager for NeRF (exp1) and BitNeRF (exp4), each against its own check's run:
    what --compile auto chose (BitNeRF's only), measured on the CPU, measured here."""
    for name, choice in FLIPPED_COMPILE.items():
        run_command(
            [f"{name}.py", *plan.experiment_argv(name, out=plan.out / FLIPPED), "--compile", choice, "--overwrite"],
            result,
            log,
            plan.command_timeout("compile"),
        )
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

    # int8 and fp8 training against fp32 too, as bench.py does (a run's autocast dtype, none for either): not
    # against an int8 or fp8 matmul rate.
    dtypes = {
        "fp32": torch.float32,
        "ternary-int8": torch.float32,
        "int8": torch.float32,
        "fp8": torch.float32,
        "fp16-amp": torch.float16,
        "bf16-amp": torch.bfloat16,
    }
    device = torch.device(plan.device)
    scene = load_scene(plan.data)
    rates: dict = {}
    for name in EXPERIMENTS:
        run = results.get(name)
        if run is None or run.status != "pass":
            continue
        config, _ = command_line.parse_args(name, plan.experiment_argv(name))
        world_size, dtype = run.metrics["world_size"], dtypes[run.metrics["precision"]]
        model = bitnerf.build_model(config, scene, device)
        # A micro-batched run's matmuls take a micro-batch's rays (where its summary says how many).
        rows_per_rank = run.metrics.get("micro_batch_rays") or config.batch_rays // world_size
        shapes = [
            (min(rows, MATMUL_MAX_ROWS), n_in, n_out) for rows, n_in, n_out in bench.linear_shapes(model, rows_per_rank)
        ]
        key = (tuple(shapes), dtype)
        if key not in rates:
            seconds = min(bench.matmul_seconds(shapes, dtype, device, MATMUL_PASSES) for _ in range(MATMUL_ROUNDS))
            rates[key] = bench.FORWARD_BACKWARD * bench.forward_flops(shapes) * MATMUL_PASSES / seconds
        devices = world_size if plan.device == "cuda" else 1  # CPU ranks share this machine's cores
        model_flops = run.metrics["steady_samples_per_s"] * bench.flops_per_sample(model)
        run.metrics.update(
            {
                "matmul_dtype": str(dtype).removeprefix("torch."),
                "matmul_flops_per_s": round(rates[key]),
                "flops_per_sample": bench.flops_per_sample(model),
                "mfu": round(model_flops / (devices * rates[key]), 3),
            }
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result.metrics = {
        "matmul_flops_per_s": {
            f"{str(dtype).removeprefix('torch.')} {shapes[0][0]} rows": round(rate)
            for (shapes, dtype), rate in rates.items()
        }
    }


def run_checks(plan: Plan, checks: list[Check]) -> dict[str, Result]:
    """Run the checks in order, each into its Result: skipped where the device leaves it out or what it needs
    did not pass; a failure is recorded, and the next check runs."""
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
                check_experiment(plan, check.name, result, log, results)
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
