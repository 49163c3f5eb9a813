import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_scene

import bench
import command_line
import gpu_check
import gpus
from gpu_checks import runners, table
from gpu_checks.plan import (
    BUDGET_S,
    BY_NAME,
    CHECKS,
    COMPRESSED,
    CPU_HW_TILE,
    CPU_TIMEOUT_S,
    DEFAULT_STEPS,
    EXPERIMENTS,
    MIN_TIMEOUT_S,
    QUANTIZED,
    RUNS,
    TIMEOUT_FACTOR,
    VARIANTS,
    Plan,
    describe,
    estimated_total,
    selected,
)

REPO = Path(__file__).resolve().parents[1]
# The quick model's training FLOPs per sample, by hand: 39 -> 128, two 128 -> 128, 128 -> 128 and the
# 128 -> 4 head (no skip, no view branch), 2 FLOPs per multiply-accumulate, 3x for forward and backward.
QUICK_FLOPS_PER_SAMPLE = 3 * 2 * (39 * 128 + 3 * 128 * 128 + 128 * 4)


def run_gpu_check(*argv):
    return subprocess.run(
        [sys.executable, str(REPO / "gpu_check.py"), *map(str, argv)], cwd=REPO, capture_output=True, text=True
    )


def test_only_brings_what_a_check_needs_and_skip_leaves_checks_out():
    names = lambda checks: [c.name for c in checks]  # noqa: E731
    assert names(selected(["ptq"], [])) == ["exp1", "ptq"]
    assert names(selected(["resume", "exp1"], [])) == ["exp1", "exp2", "resume"]
    assert names(selected(["hw_eval"], [])) == [
        "exp1",
        "exp2",
        "exp3",
        "exp4",
        "exp5",
        "exp6",
        "exp7",
        "exp8",
        "exp9",
        "hw_eval",
    ]
    assert names(selected(["mfu"], [])) == [*EXPERIMENTS, "mfu"] and len(EXPERIMENTS) == 9
    assert names(selected(None, ["hw_eval", "exp3"])) == [
        "exp1",
        "exp2",
        "exp4",
        "exp5",
        "exp6",
        "exp7",
        "exp8",
        "exp9",
        "tf32",
        "bf16",
        "resume",
        "compile",
        "ptq",
        "mfu",
    ]
    assert names(selected(["exp9"], [])) == ["exp9"]  # exp5's bytes are compared where exp5 ran, not brought in
    assert names(selected(["compile"], [])) == ["exp1", "exp4", "compile"]


def test_each_experiment_runs_the_users_command_on_the_asked_schedule(tmp_path):
    gpu = Plan("cuda", tmp_path, steps=200, data=None, timeout_s=60)
    exp1 = gpu.experiment_argv("exp1")
    assert "--quick" not in exp1 and exp1[exp1.index("--device") + 1] == "cuda"
    assert exp1[exp1.index("--steps") + 1] == "200" and exp1[exp1.index("--wandb") + 1] == "disabled"
    exp3 = gpu.experiment_argv("exp3")
    assert exp3[exp3.index("--steps") + 1] == "200"  # counted in exp1's steps: exp3 trains 50 of the 4x batch
    assert command_line.parse_args("exp3", exp3)[0].steps == gpu.experiment_steps("exp3") == 50
    for name in ("exp4", "exp6"):
        argv = gpu.experiment_argv(name)
        assert argv[argv.index("--compile") + 1] == "on"
    assert "--compile" not in gpu.experiment_argv("exp5")
    assert [gpu.expected_precision(n) for n in EXPERIMENTS] == [
        "fp32",
        "fp16-amp",
        "fp16-amp",
        "ternary-int8",
        "fp32",
        "ternary-int8",
        "int8",
        "fp8",
        "fp32",
    ]
    exp9 = command_line.parse_args("exp9", gpu.experiment_argv("exp9"))[0]
    assert exp9.distributed and exp9.grad_compression == "bf16" and "--compile" not in gpu.experiment_argv("exp9")
    assert command_line.parse_args("exp8", gpu.experiment_argv("exp8"))[0].quantized_training == "fp8-tensorwise"
    cpu = Plan("cpu", tmp_path, steps=40, data="scene.npz", timeout_s=60)
    argv = cpu.experiment_argv("exp2")
    assert argv[0] == "--quick" and argv[argv.index("--data") + 1] == "scene.npz"
    assert cpu.expected_precision("exp2") == "bf16-amp" and cpu.expected_world_size("exp5") == 2
    assert "--tile" not in gpu.hw_eval_argv()  # hw_eval's own tile on a GPU machine, a small one on the CPU
    assert cpu.hw_eval_argv() == [
        "hw_eval.py",
        "--runs",
        str(tmp_path),
        "--out",
        str(tmp_path / "hw_eval"),
        "--tile",
        str(CPU_HW_TILE),
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "1"], "--steps must be at least 2"),
        (["--only", "exp10"], "argument --only: invalid choice"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--skip", *BY_NAME], "--skip leaves no check to run"),
    ],
)
def test_bad_options_are_one_line_with_exit_code_2(argv, message, tmp_path):
    result = run_gpu_check(*argv, "--device", "cpu", "--out", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def ended_within(pid: int, seconds: float) -> bool:
    """Whether process pid is gone or a zombie within seconds (the grandchild above would sleep for 60)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_timed_out_command_fails_its_check_and_ends_its_processes(tmp_path):
    result = runners.Result("slow", "sleeps")
    child_pid = tmp_path / "child.pid"
    code = (
        f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child_pid)!r}, 'w').write(str(p.pid)); p.wait()"
    )
    start = time.monotonic()
    with pytest.raises(runners.CheckFailed, match="^timed out after 3 s$"):
        runners.run_command(["-c", code], result, tmp_path / "slow.log", timeout_s=3)
    assert time.monotonic() - start < 30  # not waiting for the grandchild, which holds the output pipes
    pid = int(child_pid.read_text())
    assert ended_within(pid, 5)  # killed: it closed the output pipes as it exited, and may still be exiting
    assert "time.sleep(60)" in (tmp_path / "slow.log").read_text()


def test_hw_eval_without_its_toolchain_is_skipped_with_its_reason(tmp_path, monkeypatch):
    probe = subprocess.run([sys.executable, "-c", runners.TOOLCHAIN_PROBE], cwd=REPO, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr  # here the toolchain is complete (tests/test_hw_eval.py needs it)
    monkeypatch.setattr(runners, "TOOLCHAIN_PROBE", "import sys; sys.exit('error: hw_eval.py needs Python >= 3.12')")
    result = runners.Result("hw_eval", "")
    runners.check_hw_eval(Plan("cpu", tmp_path, 2, None, 60), result, tmp_path / "hw.log")
    assert (result.status, result.note) == ("skip", "hw_eval.py needs Python >= 3.12")


def fake_run(run_dir: Path, drop: tuple[str, ...] = (), **summary) -> None:
    """A finished run directory as train.py writes it, with the summary's fields given, less those in drop."""
    run_dir.mkdir(parents=True)
    summary = {
        "device": "cpu",
        "precision": "fp32",
        "world_size": 1,
        "steps": 8,
        "psnr_test": 20.0,
        "train_samples_per_s": 900,
        "peak_mem_bytes": 2**30,
        "wall_s": 3.0,
        "skipped_train_coarse": 0.5,
        **summary,
    }
    (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k not in drop}))
    (run_dir / "metrics.csv").write_text(
        "step,wall_s,loss,psnr_train,grad_norm,lr,samples_per_s,psnr_test\n"
        "4,1,0.1,10,1,0.001,500.4,\n8,2,0.1,10,1,0.001,1000.4,12\n"
    )


@pytest.mark.parametrize(
    "summary, message",
    [
        ({}, None),
        ({"device": "cuda:0"}, "device 'cuda' (expected 'cpu')"),
        ({"precision": "bf16-amp"}, "precision 'bf16-amp' (expected 'fp32')"),
        ({"steps": 4}, "steps 4 (expected 8)"),
        ({"psnr_test": float("nan")}, "test PSNR is nan"),
        ({"drop": ("skipped_train_coarse",)}, "no samples skipped by an occupancy grid"),
    ],
)
def test_a_run_directory_that_shows_other_settings_than_asked_for_fails_its_check(
    tmp_path, monkeypatch, summary, message
):
    monkeypatch.setattr(runners, "run_command", lambda *args: None)
    fake_run(tmp_path / "exp1", **summary)
    result = runners.Result("exp1", "")
    plan = Plan("cpu", tmp_path, 8, None, 60)
    if message is None:
        runners.check_experiment(plan, "exp1", result, tmp_path / "log")
        assert result.metrics["steady_samples_per_s"] == 1000  # the last logged interval, past the warm-up
        assert (result.metrics["train_samples_per_s"], result.metrics["peak_mem_bytes"]) == (900, 2**30)
    else:
        with pytest.raises(runners.CheckFailed, match=re.escape(message)):
            runners.check_experiment(plan, "exp1", result, tmp_path / "log")


def checked(plan, name: str, tmp_path: Path, message: str | None) -> "runners.Result | None":
    """check_experiment on the faked run: its Result, or None where it failed with message as it should."""
    result = runners.Result(name, "")
    if message:
        with pytest.raises(runners.CheckFailed, match=re.escape(message)):
            runners.check_experiment(plan, name, result, tmp_path / "log")
        return None
    runners.check_experiment(plan, name, result, tmp_path / "log")
    return result


def test_the_compile_check_trains_exp1_compiled_and_exp4_eager_and_divides_compiled_by_eager(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(runners, "run_command", lambda argv, *args: commands.append(argv))
    for name in ("exp1", "exp4"):  # the flipped runs: 1000 steady samples/s each (fake_run's last interval)
        fake_run(tmp_path / runners.FLIPPED / name)
    results = {
        "exp1": runners.Result("exp1", "", metrics={"steady_samples_per_s": 500}),
        "exp4": runners.Result("exp4", "", metrics={"steady_samples_per_s": 4000}),
    }
    result = runners.Result("compile", "")
    runners.check_compile(Plan("cuda", tmp_path, 8, None, 60), results, result, tmp_path / "log")
    # The last --compile wins: exp4's check command compiles, this one does not.
    assert [(argv[0], argv[argv.index("--out") + 1], argv[-3:]) for argv in commands] == [
        ("exp1.py", str(tmp_path / "compile"), ["--compile", "on", "--overwrite"]),
        ("exp4.py", str(tmp_path / "compile"), ["--compile", "off", "--overwrite"]),
    ]
    assert result.metrics == {"exp1_compiled_over_eager": 2.0, "exp4_compiled_over_eager": 4.0}
    assert Plan("cpu", tmp_path, 8, None, 60).skip_reason("compile").startswith("on a GPU only")


def test_a_ddp_run_with_another_world_size_fails_its_check(tmp_path, monkeypatch):
    monkeypatch.setattr(runners, "run_command", lambda *args: None)
    fake_run(tmp_path / "exp5", world_size=1)
    with pytest.raises(runners.CheckFailed, match=re.escape("world_size 1 (expected 2)")):
        runners.check_experiment(
            Plan("cpu", tmp_path, 8, None, 60), "exp5", runners.Result("exp5", ""), tmp_path / "log"
        )


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.npz", n=8, size=16)


def test_a_failed_experiment_records_its_last_error_line_skips_what_needs_it_and_exits_1(tmp_path):
    result = run_gpu_check(
        "--device", "cpu", "--only", "resume", "--data", tmp_path / "missing.npz", "--out", tmp_path / "out"
    )
    assert result.returncode == 1, result.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["passed"] is False
    exp2, resume = report["checks"]
    assert exp2["status"] == "fail" and exp2["note"].startswith("error: ") and "missing.npz" in exp2["note"]
    assert resume["status"] == "skip" and resume["note"] == "needs exp2, which did not pass"
    assert "failed: ['exp2']" in result.stdout


def test_a_reduced_cpu_sequence_passes_with_a_table_and_gpu_check_json(tmp_path, small_scene, monkeypatch):
    out = tmp_path / "out"
    result = run_gpu_check(
        "--device", "cpu", "--steps", 8, "--only", "exp1", "resume", "--data", small_scene, "--out", out
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("check "))
    table = {line.split()[0]: line.split() for line in lines[header + 1 : header + 4]}
    assert list(table) == ["exp1", "exp2", "resume"] and all(row[1] == "pass" for row in table.values())
    report = json.loads((out / "gpu_check.json").read_text())
    assert (report["passed"], report["device"], report["preset"], report["steps"]) == (True, "cpu", "quick", 8)
    assert (report["capability"], report["budget_s"], report["estimated_s"]) == (None, None, None)  # a T4's budget
    checks = {c["name"]: c for c in report["checks"]}
    assert report["seconds"] == round(sum(c["seconds"] for c in checks.values()), 1)
    assert all(c["timeout_s"] == CPU_TIMEOUT_S and c["estimated_s"] is None for c in checks.values())
    for name, precision in (("exp1", "fp32"), ("exp2", "bf16-amp")):
        metrics = checks[name]["metrics"]
        assert (metrics["precision"], metrics["world_size"], metrics["steps"]) == (precision, 1, 8)
        assert metrics["steady_samples_per_s"] > 0 and metrics["peak_mem_bytes"] > 0 and checks[name]["seconds"] > 0
        assert checks[name]["commands"][0].startswith(f"python {name}.py --quick --device cpu")
    assert checks["resume"]["metrics"]["from_step"] == 8 and checks["resume"]["metrics"]["to_step"] == 12
    rate = {n: checks[n]["metrics"]["steady_samples_per_s"] for n in ("exp1", "exp2")}
    assert report["speedup"] == {"exp2_over_exp1": round(rate["exp2"] / rate["exp1"], 2)}

    # MFU from those runs, against a fake matmul clock: 0.5 s for MATMUL_PASSES passes at each run's shapes.
    monkeypatch.setattr(bench, "matmul_seconds", lambda shapes, dtype, device, repeats: 0.5)
    plan = Plan("cpu", out, 8, str(small_scene), 60)
    results = {name: runners.Result(name, "", metrics=checks[name]["metrics"]) for name in ("exp1", "exp2")}
    # A DDP run of 2 CPU processes from before summary.json had micro_batch_rays: each rank's matmuls take half
    # the rays, and both share this machine's cores.
    results["exp5"] = runners.Result(
        "exp5", "", metrics={**checks["exp1"]["metrics"], "world_size": 2, "micro_batch_rays": None}
    )
    # exp3's 1024 rays in micro-batches of 64: its matmuls take 64 rays at a time.
    results["exp3"] = runners.Result("exp3", "", metrics={**checks["exp2"]["metrics"], "micro_batch_rays": 64})
    # int8 and fp8 training: against fp32's matmul rate, as bench.py measures them.
    for name, precision in (("exp7", "int8"), ("exp8", "fp8")):
        results[name] = runners.Result(name, "", metrics={**checks["exp1"]["metrics"], "precision": precision})
    runners.check_mfu(plan, results, runners.Result("mfu", ""))
    per_ray = 16 + 16 + 32  # the quick preset's MLP queries per ray: coarse, then coarse and fine again
    for name, dtype, rays in (
        ("exp1", "float32", 256),
        ("exp2", "bfloat16", 256),
        ("exp5", "float32", 128),
        ("exp3", "bfloat16", 64),
        ("exp7", "float32", 256),
        ("exp8", "float32", 256),
    ):
        matmul_rate = 3 * 2 * rays * per_ray * (39 * 128 + 3 * 128 * 128 + 128 * 4) * runners.MATMUL_PASSES / 0.5
        metrics = results[name].metrics
        assert metrics["flops_per_sample"] == QUICK_FLOPS_PER_SAMPLE and metrics["matmul_dtype"] == dtype
        assert metrics["matmul_flops_per_s"] == round(matmul_rate)
        assert metrics["mfu"] == round(metrics["steady_samples_per_s"] * QUICK_FLOPS_PER_SAMPLE / matmul_rate, 3)


def gpu_plan(tmp_path, profile: str, gpu_count: int, steps: int = DEFAULT_STEPS["cuda"], **options):
    """The plan gpu_check.py makes on a machine with gpu_count GPUs of a profile (gpus.PROFILES)."""
    # hw_eval and quantized: gpu_check.py's defaults on a GPU machine.
    options = {"data": None, "timeout_s": None, "hw_eval": False, "quantized": False, **options}
    return Plan("cuda", tmp_path, steps, capability=gpus.PROFILES[profile].capability, gpu_count=gpu_count, **options)


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_a_t4_plan_leaves_out_ddp_tf32_bf16_and_hw_eval_with_their_reasons(tmp_path):
    t4 = gpu_plan(tmp_path, "t4", 1)
    reasons = {check.name: t4.skip_reason(check.name) for check in CHECKS}
    assert reasons == {
        "exp1": None,
        "exp2": None,
        "exp3": None,
        "exp4": None,
        "exp5": "DDP needs 2 or more GPUs; this machine has 1",
        "exp6": "DDP needs 2 or more GPUs; this machine has 1",
        "exp7": "outside the T4 budget, off on a GPU machine: --quantized runs it",
        "exp8": "outside the T4 budget, off on a GPU machine: --quantized runs it",
        "exp9": "DDP needs 2 or more GPUs; this machine has 1",
        "tf32": "needs compute capability 8.0 (TF32 tensor cores); this GPU is 7.5",
        "bf16": "needs compute capability 8.0 (native bf16); this GPU is 7.5",
        "resume": None,
        "compile": None,
        "ptq": None,
        "hw_eval": "CPU work, off on a GPU machine: --hw-eval runs it",
        "mfu": None,
    }
    # One L4 (8.9): TF32 and bf16, no DDP; with --quantized, exp7 and exp8.
    l4 = gpu_plan(tmp_path, "l4", 1)
    assert [n for n in BY_NAME if l4.skip_reason(n)] == ["exp5", "exp6", "exp7", "exp8", "exp9", "hw_eval"]
    assert [n for n in BY_NAME if gpu_plan(tmp_path, "l4", 1, quantized=True).skip_reason(n)] == [
        "exp5",
        "exp6",
        "exp9",
        "hw_eval",
    ]
    # The CPU runs DDP over 2 processes and hw_eval; it has no TF32, its exp2 is bf16 already.
    cpu = Plan("cpu", tmp_path, 20, None, None)
    assert [n for n in BY_NAME if cpu.skip_reason(n)] == ["tf32", "bf16", "compile"]


def test_an_a100_pair_plans_every_check_and_ddp_over_both(tmp_path):
    a100 = gpu_plan(tmp_path, "a100-80", 2, hw_eval=True, quantized=True)
    assert [n for n in BY_NAME if a100.skip_reason(n)] == []
    assert [a100.expected_world_size(n) for n in EXPERIMENTS] == [1, 1, 1, 1, 2, 2, 1, 1, 2]
    tf32 = a100.experiment_argv("tf32")
    config = command_line.parse_args("exp1", tf32)[0]
    assert config.tf32 and config.precision == "fp32" and option(tf32, "--out") == str(tmp_path / "tf32")
    config = command_line.parse_args("exp2", a100.experiment_argv("bf16"))[0]
    assert (config.precision, config.amp_dtype) == ("amp", "bf16")
    assert a100.expected_precision("exp2") == "fp16-amp"  # exp2's own check stays fp16 with its GradScaler


@pytest.mark.parametrize("device, per_process", [("cuda", 4 * 4096), ("cpu", 4 * 256)])
def test_every_run_has_the_occupancy_grid_and_exp3_runs_in_four_micro_batches(tmp_path, device, per_process):
    plan = gpu_plan(tmp_path, "t4", 1) if device == "cuda" else Plan("cpu", tmp_path, 20, None, None)
    for name in RUNS:
        experiment = plan.experiment(name)
        config = command_line.parse_args(experiment, plan.experiment_argv(name))[0]
        assert config.occupancy_grid
        assert config.micro_batch_rays == (per_process // 4 if name == "exp3" else 0)  # 0: auto
    assert command_line.parse_args("exp3", plan.experiment_argv("exp3"))[0].batch_rays == per_process


def test_the_default_t4_plan_fits_its_budget_and_says_so(tmp_path):
    t4 = gpu_plan(tmp_path, "t4", 1)
    checks = selected(None, [])
    total = estimated_total(t4, checks)
    assert 0 < total <= BUDGET_S
    # The skipped checks cost nothing; the estimates grow with the steps; hw_eval, when asked for, is over it.
    assert total == sum(t4.estimate_s(n) for n in ("exp1", "exp2", "exp3", "exp4", "resume", "compile", "ptq", "mfu"))
    assert gpu_plan(tmp_path, "t4", 1, steps=100).estimate_s("exp1") > t4.estimate_s("exp1")
    assert estimated_total(gpu_plan(tmp_path, "t4", 1, hw_eval=True), checks) > BUDGET_S
    # exp7 and exp8 would take it over (hence --quantized); exp9, like exp5, needs a second GPU.
    quantized = estimated_total(gpu_plan(tmp_path, "t4", 1, quantized=True), checks)
    assert quantized == round(total + t4.estimate_s("exp7") + t4.estimate_s("exp8"), 1) > BUDGET_S
    lines = describe(t4, checks)
    assert lines[0].split()[:2] == ["exp1", f"~{t4.estimate_s('exp1'):.0f}"]
    assert lines[4].split(maxsplit=2) == ["exp5", "skip", "DDP needs 2 or more GPUs; this machine has 1"]
    assert lines[-1].startswith(f"estimated {total:.0f} s") and f"within the {BUDGET_S} s budget" in lines[-1]
    cpu = describe(Plan("cpu", tmp_path, 20, None, None), checks)
    assert not any(line.startswith("estimated") for line in cpu)  # the estimates are a T4's


def test_a_gpu_commands_timeout_follows_its_checks_estimate_unless_given(tmp_path):
    t4 = gpu_plan(tmp_path, "t4", 1)
    assert t4.command_timeout("exp4") == TIMEOUT_FACTOR * t4.estimate_s("exp4") > MIN_TIMEOUT_S
    assert t4.command_timeout("mfu") == MIN_TIMEOUT_S
    assert gpu_plan(tmp_path, "t4", 1, timeout_s=60).command_timeout("exp4") == 60
    assert Plan("cpu", tmp_path, 20, None, None).command_timeout("exp4") == CPU_TIMEOUT_S


@pytest.mark.parametrize(
    "summary, message",
    [
        ({"micro_batch_rays": 4096, "micro_batches": 4}, None),
        ({}, None),  # a summary from before micro-batching: unknown, noted
        ({"micro_batch_rays": 4096, "micro_batches": 1}, "micro_batches 1 (expected more than 1)"),
        ({"micro_batch_rays": 16384, "micro_batches": 1}, "micro_batch_rays 16384 (expected 4096)"),
    ],
)
def test_exp3_fails_when_its_summary_shows_no_micro_batching(tmp_path, monkeypatch, summary, message):
    commands = []
    monkeypatch.setattr(runners, "run_command", lambda argv, *args: commands.append(argv))
    t4 = gpu_plan(tmp_path, "t4", 1)
    fake_run(tmp_path / "exp3", device="cuda:0", precision="fp16-amp", steps=6, **summary)
    result = checked(t4, "exp3", tmp_path, message)
    if result is None:
        return
    assert option(commands[0], "--micro-batch-rays") == "4096"
    assert (result.metrics["micro_batch_rays"], result.metrics["micro_batches"]) == (
        summary.get("micro_batch_rays"),
        summary.get("micro_batches"),
    )
    assert result.note == ("" if summary else "micro-batching unknown: summary.json has no micro_batches")


@pytest.mark.parametrize(
    "name, summary, message",
    [
        ("tf32", {"float32_matmul_precision": "high"}, None),
        ("tf32", {"float32_matmul_precision": "highest"}, "float32_matmul_precision 'highest' (expected 'high')"),
        ("bf16", {"precision": "bf16-amp"}, None),
        ("bf16", {"precision": "fp16-amp"}, "precision 'fp16-amp' (expected 'bf16-amp')"),
    ],
)
def test_a_tf32_or_bf16_run_must_show_its_number_format(tmp_path, monkeypatch, name, summary, message):
    commands = []
    monkeypatch.setattr(runners, "run_command", lambda argv, *args: commands.append(argv))
    a100 = gpu_plan(tmp_path, "a100-40", 1, steps=8)
    experiment = VARIANTS[name].experiment
    fake_run(tmp_path / name / experiment, device="cuda:0", **summary)  # beside, not over, the experiment's own run
    result = runners.Result(name, "")
    if message:
        with pytest.raises(runners.CheckFailed, match=re.escape(message)):
            runners.check_experiment(a100, name, result, tmp_path / "log")
    else:
        runners.check_experiment(a100, name, result, tmp_path / "log")
        assert commands[0][0] == f"{experiment}.py" and result.metrics["steady_samples_per_s"] == 1000


def test_a_fake_t4_sequence_records_capability_kernels_memory_and_micro_batches(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(gpu_check, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(gpu_check, "gpu_properties", lambda device: {"capability": (7, 5), "gpu_count": 1})
    monkeypatch.setattr(table, "environment", lambda plan: {})
    runs = {
        "exp3": {
            "precision": "fp16-amp",
            "steps": 6,
            "micro_batch_rays": 4096,
            "micro_batches": 4,
            "int8_kernel": None,
            "compiled": False,
            "peak_reserved_bytes": 3 * 2**30,
        },
        "exp4": {
            "precision": "ternary-int8",
            "steps": 24,
            "int8_kernel": "int-mm-padded",
            "compiled": True,
            "peak_reserved_bytes": 5 * 2**30,
            "micro_batch_rays": 4096,
            "micro_batches": 1,
        },
    }
    timeouts = {}

    def run_command(argv, result, log, timeout_s):
        name = argv[0].removesuffix(".py")
        timeouts[name] = timeout_s
        fake_run(Path(option(argv, "--out")) / name, device="cuda:0", capability="7.5", **runs[name])

    monkeypatch.setattr(runners, "run_command", run_command)
    with pytest.raises(SystemExit) as exit:
        gpu_check.main(["--device", "cuda", "--only", "exp3", "exp4", "exp5", "tf32", "bf16", "--out", str(tmp_path)])
    assert exit.value.code == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    plan = gpu_plan(tmp_path, "t4", 1)
    assert (report["capability"], report["gpu_count"], report["budget_s"]) == ("7.5", 1, BUDGET_S)
    assert report["estimated_s"] == plan.estimate_s("exp3") + plan.estimate_s("exp4")
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("exp3", "exp4"):
        metrics = checks[name]["metrics"]
        assert {key: metrics[key] for key in runs[name] if key != "steps"} == {
            key: value for key, value in runs[name].items() if key != "steps"
        }
        assert metrics["peak_mem_bytes"] == 2**30  # allocated, beside reserved
        assert checks[name]["estimated_s"] == plan.estimate_s(name) and timeouts[name] == plan.command_timeout(name)
    assert [(checks[n]["status"], checks[n]["note"]) for n in ("exp5", "tf32", "bf16")] == [
        ("skip", plan.skip_reason(n)) for n in ("exp5", "tf32", "bf16")
    ]
    out = capsys.readouterr().out
    assert "capability 7.5, 1 GPU(s)" in out and "exp5     skip      DDP needs 2 or more GPUs" in out


@pytest.mark.parametrize(
    "argv, hw_eval, quantized",
    [
        (["--device", "cuda"], False, False),
        (["--device", "cuda", "--hw-eval"], True, False),
        (["--device", "cuda", "--only", "hw_eval"], True, False),
        (["--device", "cuda", "--quantized"], False, True),
        (["--device", "cuda", "--only", "exp8"], False, True),
        (["--device", "cpu", "--data", "scene.npz"], True, True),
    ],
)
def test_hw_eval_and_exp7_exp8_are_off_on_a_gpu_machine_unless_asked_for(
    tmp_path, monkeypatch, argv, hw_eval, quantized
):
    import torch

    monkeypatch.setattr(gpu_check, "resolve_device", lambda name: torch.device(name))
    monkeypatch.setattr(
        gpu_check, "gpu_properties", lambda device: {"capability": (7, 5), "gpu_count": 1} if device == "cuda" else {}
    )
    plan, _ = gpu_check.parse([*argv, "--out", str(tmp_path)])
    assert plan.hw_eval is hw_eval and (plan.skip_reason("hw_eval") is None) is hw_eval
    assert plan.quantized is quantized and [plan.skip_reason(n) is None for n in QUANTIZED] == [quantized] * 2


def test_a_check_the_device_leaves_out_runs_nothing_and_says_why(tmp_path, monkeypatch):
    def run_command(*args):
        raise AssertionError("a skipped check ran a command")

    monkeypatch.setattr(runners, "run_command", run_command)
    checks = [BY_NAME[n] for n in ("exp5", "exp6", "tf32", "bf16", "hw_eval")]
    results = runners.run_checks(gpu_plan(tmp_path, "t4", 1), checks)
    assert all(r.status == "skip" and r.note and r.commands == [] for r in results.values())
    # compile's own reason, not that of the exp1 and exp4 runs it needs (absent here).
    cpu_results = runners.run_checks(Plan("cpu", tmp_path, 8, None, 60), [BY_NAME["compile"]])
    assert (cpu_results["compile"].status, cpu_results["compile"].note) == (
        "skip",
        "on a GPU only: the CPU's measurement is in docs/performance.md",
    )


def test_speedups_divide_each_faster_runs_steady_rate_by_exp1s():
    results = {
        name: runners.Result(name, "", metrics={"steady_samples_per_s": rate})
        for name, rate in (("exp1", 500), ("exp2", 1500), ("exp3", 2000), ("tf32", 1000), ("bf16", 1750))
    }
    results["exp3"].status = "fail"
    assert table.speedups(results) == {"exp2_over_exp1": 3.0, "tf32_over_exp1": 2.0, "bf16_over_exp1": 3.5}


@pytest.mark.parametrize(
    "profile, emulated, note",
    [
        ("h100", False, "fp8 real (capability 9.0)"),
        ("l4", False, "fp8 real (capability 8.9)"),
        ("a100-40", True, "fp8 emulated: capability 8.0 has no fp8 matmul"),
        ("t4", True, "fp8 emulated: capability 7.5 has no fp8 matmul"),
        ("cpu", True, "fp8 emulated: the CPU has no fp8 matmul"),
    ],
)
def test_exp8_expects_real_fp8_from_capability_8_9_and_emulated_below(tmp_path, profile, emulated, note):
    plan = Plan("cpu", tmp_path, 20, None, None) if profile == "cpu" else gpu_plan(tmp_path, profile, 1, quantized=True)
    assert plan.expected_emulated("exp8") is emulated
    assert emulated is (profile == "cpu" or gpus.PROFILES[profile].capability < gpus.FP8_MIN_CAPABILITY)
    assert all(plan.expected_emulated(n) is None for n in EXPERIMENTS if n != "exp8")
    assert plan.fp8_note(emulated) == note
    exp8_line = next(line for line in describe(plan, [BY_NAME["exp8"]]) if line.split()[0] == "exp8")
    assert f"; expects {note} (timeout" in exp8_line


@pytest.mark.parametrize(
    "profile, emulated, message",
    [
        ("h100", False, None),
        ("t4", True, None),
        ("h100", True, "emulated True (expected False)"),  # an fp8 GPU that emulated: fp8's speed not shown
        ("l4", True, "emulated True (expected False)"),
        ("t4", False, "emulated False (expected True)"),  # no fp8 matmul, yet a run that claims one
        ("a100-80", False, "emulated False (expected True)"),
        ("h100", None, "emulated None (expected False)"),  # a summary that does not say
    ],
)
def test_an_fp8_run_must_say_emulated_as_its_gpu_implies_and_its_note_says_which(
    tmp_path, monkeypatch, profile, emulated, message
):
    monkeypatch.setattr(runners, "run_command", lambda *args: None)
    plan = gpu_plan(tmp_path, profile, 1, quantized=True)
    fake_run(tmp_path / "exp8", device="cuda:0", precision="fp8", steps=plan.steps, emulated=emulated)
    result = checked(plan, "exp8", tmp_path, message)
    if result is None:
        return
    assert result.metrics["emulated"] is emulated and result.metrics["precision"] == "fp8"
    assert result.note == plan.fp8_note(emulated)
    # A run that computed in fp32 instead of fp8 fails, whatever it says about emulation.
    fake_run(tmp_path / "other" / "exp8", device="cuda:0", precision="fp32", steps=plan.steps, emulated=emulated)
    with pytest.raises(runners.CheckFailed, match=re.escape("precision 'fp32' (expected 'fp8')")):
        runners.check_experiment(dataclasses.replace(plan, out=tmp_path / "other"), "exp8", result, tmp_path / "log")


@pytest.mark.parametrize(
    "profile, kernel, message",
    [
        ("t4", "int-mm-padded", None),
        ("a100-40", "torchao-triton", None),
        ("cpu", "int-mm", None),
        ("t4", "torchao-triton", "int8_kernel 'torchao-triton' (expected 'int-mm-padded')"),
        ("h100", "int-mm-padded", "int8_kernel 'int-mm-padded' (expected 'torchao-triton')"),
        ("t4", None, "int8_kernel None (expected 'int-mm-padded')"),  # no int8 matmul seen: not int8 training
    ],
)
def test_exp7_must_run_the_int8_kernel_its_plan_chooses(tmp_path, monkeypatch, profile, kernel, message):
    monkeypatch.setattr(runners, "run_command", lambda *args: None)
    plan = (
        Plan("cpu", tmp_path, 8, None, 60)
        if profile == "cpu"
        else gpu_plan(tmp_path, profile, 1, steps=8, quantized=True)
    )
    fake_run(tmp_path / "exp7", device="cpu" if profile == "cpu" else "cuda:0", precision="int8", int8_kernel=kernel)
    result = checked(plan, "exp7", tmp_path, message)
    if result is None:
        return
    assert result.metrics["int8_kernel"] == kernel and result.metrics["precision"] == "int8"
    assert result.note == f"int8 kernel {kernel}"
    assert [plan.expected_int8_kernel(n) for n in EXPERIMENTS if n != "exp7"] == [None] * 8  # BitNeRF's not held


@pytest.mark.parametrize(
    "exp5, exp9_bytes, status, note",
    [
        ({"sent_bytes_per_step": 1000}, 500, "pass", "sent 0.50x exp5's gradient bytes per step"),
        ({"sent_bytes_per_step": 1000}, 550, "pass", "sent 0.55x exp5's gradient bytes per step"),
        (
            {"sent_bytes_per_step": 1000},
            560,
            "fail",
            "exp9 sent 560 gradient bytes per step, 0.56x exp5's 1000 (expected at most 0.55x)",
        ),
        (
            {"sent_bytes_per_step": 1000},
            1000,
            "fail",
            "exp9 sent 1000 gradient bytes per step, 1.00x exp5's 1000 (expected at most 0.55x)",
        ),
        (None, 900, "pass", "gradient bytes not compared: exp5 did not run"),
        ({"world_size": 1}, 900, "pass", "gradient bytes not compared: exp5 failed"),
        (
            {"drop": ("sent_bytes_per_step",)},
            500,
            "pass",
            "gradient bytes not compared: exp5 has no sent_bytes_per_step",
        ),
        ({"sent_bytes_per_step": 1000}, None, "fail", "sent_bytes_per_step None (expected the bytes its hook sent)"),
    ],
)
def test_exp9_sends_at_most_055_of_exp5s_gradient_bytes_where_exp5_ran(
    tmp_path, monkeypatch, exp5, exp9_bytes, status, note
):
    runs = {"exp5": exp5, "exp9": {"sent_bytes_per_step": exp9_bytes}}

    def run_command(argv, result, log, timeout_s):  # each run as its command would write it on 2 GPUs
        name = argv[0].removesuffix(".py")
        fake_run(Path(option(argv, "--out")) / name, device="cuda:0", world_size=2, steps=8, **runs[name])

    monkeypatch.setattr(runners, "run_command", run_command)
    checks = [BY_NAME[n] for n in ("exp5", "exp9") if runs[n] is not None]
    results = runners.run_checks(gpu_plan(tmp_path, "a100-80", 2, steps=8), checks)
    assert COMPRESSED == {"exp9": ("exp5", 0.55)}
    if exp5 is not None:
        assert results["exp5"].metrics.get("sent_bytes_per_step") == exp5.get("sent_bytes_per_step")
    exp9 = results["exp9"]
    assert (exp9.status, exp9.note.removeprefix(f"{tmp_path / 'exp9' / 'summary.json'} says ")) == (status, note)
    assert exp9.metrics.get("sent_bytes_per_step") == (exp9_bytes if exp9_bytes else None)
    assert exp9.metrics.get("sent_over_exp5") == (round(exp9_bytes / 1000, 3) if "x exp5's" in note else None)
