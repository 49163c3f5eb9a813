import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench
import configs
import gpu_check
from conftest import write_scene

REPO = Path(__file__).resolve().parents[1]
# The quick model's training FLOPs per sample, by hand: 39 -> 128, two 128 -> 128, 128 -> 128 and the
# 128 -> 4 head (no skip, no view branch), 2 FLOPs per multiply-accumulate, 3x for forward and backward.
QUICK_FLOPS_PER_SAMPLE = 3 * 2 * (39 * 128 + 3 * 128 * 128 + 128 * 4)


def run_gpu_check(*argv):
    return subprocess.run([sys.executable, str(REPO / "gpu_check.py"), *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True)


def test_only_brings_what_a_check_needs_and_skip_leaves_checks_out():
    names = lambda checks: [c.name for c in checks]  # noqa: E731
    assert names(gpu_check.selected(["ptq"], [])) == ["exp1", "ptq"]
    assert names(gpu_check.selected(["resume", "exp1"], [])) == ["exp1", "exp2", "resume"]
    assert names(gpu_check.selected(["hw_eval"], [])) == ["exp1", "exp2", "exp3", "exp4", "exp5", "exp6", "hw_eval"]
    assert names(gpu_check.selected(None, ["hw_eval", "exp3"])) == ["exp1", "exp2", "exp4", "exp5", "exp6", "resume",
                                                                   "compile", "ptq", "mfu"]
    assert names(gpu_check.selected(["compile"], [])) == ["exp1", "exp4", "compile"]


def test_each_experiment_runs_the_users_command_on_the_asked_schedule(tmp_path):
    gpu = gpu_check.Plan("cuda", tmp_path, steps=200, data=None, timeout_s=60)
    exp1 = gpu.experiment_argv("exp1")
    assert "--quick" not in exp1 and exp1[exp1.index("--device") + 1] == "cuda"
    assert exp1[exp1.index("--steps") + 1] == "200" and exp1[exp1.index("--wandb") + 1] == "disabled"
    exp3 = gpu.experiment_argv("exp3")
    assert exp3[exp3.index("--steps") + 1] == "200"  # counted in exp1's steps: exp3 trains 50 of the 4x batch
    assert configs.parse_args("exp3", exp3)[0].steps == gpu.experiment_steps("exp3") == 50
    for name in ("exp4", "exp6"):
        argv = gpu.experiment_argv(name)
        assert argv[argv.index("--compile") + 1] == "on"
    assert "--compile" not in gpu.experiment_argv("exp5")
    assert [gpu.expected_precision(n) for n in gpu_check.EXPERIMENTS] == [
        "fp32", "fp16-amp", "fp16-amp", "ternary-int8", "fp32", "ternary-int8"]
    cpu = gpu_check.Plan("cpu", tmp_path, steps=40, data="scene.npz", timeout_s=60)
    argv = cpu.experiment_argv("exp2")
    assert argv[0] == "--quick" and argv[argv.index("--data") + 1] == "scene.npz"
    assert cpu.expected_precision("exp2") == "bf16-amp" and cpu.expected_world_size("exp5") == 2
    assert "--tile" not in gpu.hw_eval_argv()  # hw_eval's own tile on a GPU machine, a small one on the CPU
    assert cpu.hw_eval_argv() == ["hw_eval.py", "--runs", str(tmp_path), "--out", str(tmp_path / "hw_eval"),
                                  "--tile", str(gpu_check.CPU_HW_TILE)]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1"], "--steps must be at least 2"),
    (["--only", "exp7"], "argument --only: invalid choice"),
    (["--timeout", "0"], "--timeout must be positive"),
    (["--skip", *gpu_check.BY_NAME], "--skip leaves no check to run"),
])
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
    result = gpu_check.Result("slow", "sleeps")
    child_pid = tmp_path / "child.pid"
    code = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(child_pid)!r}, 'w').write(str(p.pid)); p.wait()")
    start = time.monotonic()
    with pytest.raises(gpu_check.CheckFailed, match="^timed out after 3 s$"):
        gpu_check.run_command(["-c", code], result, tmp_path / "slow.log", timeout_s=3)
    assert time.monotonic() - start < 30  # not waiting for the grandchild, which holds the output pipes
    pid = int(child_pid.read_text())
    assert ended_within(pid, 5)  # killed: it closed the output pipes as it exited, and may still be exiting
    assert "time.sleep(60)" in (tmp_path / "slow.log").read_text()


def test_hw_eval_without_its_toolchain_is_skipped_with_its_reason(tmp_path, monkeypatch):
    probe = subprocess.run([sys.executable, "-c", gpu_check.TOOLCHAIN_PROBE], cwd=REPO, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr  # here the toolchain is complete (tests/test_hw_eval.py needs it)
    monkeypatch.setattr(gpu_check, "TOOLCHAIN_PROBE", "import sys; sys.exit('error: hw_eval.py needs Python >= 3.12')")
    result = gpu_check.Result("hw_eval", "")
    gpu_check.check_hw_eval(gpu_check.Plan("cpu", tmp_path, 2, None, 60), result, tmp_path / "hw.log")
    assert (result.status, result.note) == ("skip", "hw_eval.py needs Python >= 3.12")


def fake_run(run_dir: Path, **summary) -> None:
    """A finished run directory as train.py writes it, with the summary's fields given."""
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "device": "cpu", "precision": "fp32", "world_size": 1, "steps": 8, "psnr_test": 20.0,
        "train_samples_per_s": 900, "peak_mem_bytes": 2**30, "wall_s": 3.0, **summary}))
    (run_dir / "metrics.csv").write_text("step,wall_s,loss,psnr_train,grad_norm,lr,samples_per_s,psnr_test\n"
                                         "4,1,0.1,10,1,0.001,500.4,\n8,2,0.1,10,1,0.001,1000.4,12\n")


@pytest.mark.parametrize("summary, message", [
    ({}, None),
    ({"device": "cuda:0"}, "device 'cuda' (expected 'cpu')"),
    ({"precision": "bf16-amp"}, "precision 'bf16-amp' (expected 'fp32')"),
    ({"steps": 4}, "steps 4 (expected 8)"),
    ({"psnr_test": float("nan")}, "test PSNR is nan"),
])
def test_a_run_directory_that_shows_other_settings_than_asked_for_fails_its_check(tmp_path, monkeypatch, summary,
                                                                                message):
    monkeypatch.setattr(gpu_check, "run_command", lambda *args: None)
    fake_run(tmp_path / "exp1", **summary)
    result = gpu_check.Result("exp1", "")
    plan = gpu_check.Plan("cpu", tmp_path, 8, None, 60)
    if message is None:
        gpu_check.check_experiment(plan, "exp1", result, tmp_path / "log")
        assert result.metrics["steady_samples_per_s"] == 1000  # the last logged interval, past the warm-up
        assert (result.metrics["train_samples_per_s"], result.metrics["peak_mem_bytes"]) == (900, 2**30)
    else:
        with pytest.raises(gpu_check.CheckFailed, match=re.escape(message)):
            gpu_check.check_experiment(plan, "exp1", result, tmp_path / "log")


def test_the_compile_check_trains_exp1_compiled_and_exp4_eager_and_divides_compiled_by_eager(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(gpu_check, "run_command", lambda argv, *args: commands.append(argv))
    for name in ("exp1", "exp4"):  # the flipped runs: 1000 steady samples/s each (fake_run's last interval)
        fake_run(tmp_path / gpu_check.FLIPPED / name)
    results = {"exp1": gpu_check.Result("exp1", "", metrics={"steady_samples_per_s": 500}),
               "exp4": gpu_check.Result("exp4", "", metrics={"steady_samples_per_s": 4000})}
    result = gpu_check.Result("compile", "")
    gpu_check.check_compile(gpu_check.Plan("cuda", tmp_path, 8, None, 60), results, result, tmp_path / "log")
    # The last --compile wins: exp4's check command compiles, this one does not.
    assert [(argv[0], argv[argv.index("--out") + 1], argv[-3:]) for argv in commands] == [
        ("exp1.py", str(tmp_path / "compile"), ["--compile", "on", "--overwrite"]),
        ("exp4.py", str(tmp_path / "compile"), ["--compile", "off", "--overwrite"])]
    assert result.metrics == {"exp1_compiled_over_eager": 2.0, "exp4_compiled_over_eager": 4.0}
    cpu_result = gpu_check.Result("compile", "")
    gpu_check.check_compile(gpu_check.Plan("cpu", tmp_path, 8, None, 60), results, cpu_result, tmp_path / "log")
    assert cpu_result.status == "skip" and len(commands) == 2


def test_a_ddp_run_with_another_world_size_fails_its_check(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "run_command", lambda *args: None)
    fake_run(tmp_path / "exp5", world_size=1)
    with pytest.raises(gpu_check.CheckFailed, match=re.escape("world_size 1 (expected 2)")):
        gpu_check.check_experiment(gpu_check.Plan("cpu", tmp_path, 8, None, 60), "exp5", gpu_check.Result("exp5", ""),
                                   tmp_path / "log")


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.npz", n=8, size=16)


def test_a_failed_experiment_records_its_last_error_line_skips_what_needs_it_and_exits_1(tmp_path):
    result = run_gpu_check("--device", "cpu", "--only", "resume", "--data", tmp_path / "missing.npz",
                           "--out", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["passed"] is False
    exp2, resume = report["checks"]
    assert exp2["status"] == "fail" and exp2["note"].startswith("error: ") and "missing.npz" in exp2["note"]
    assert resume["status"] == "skip" and resume["note"] == "needs exp2, which did not pass"
    assert "failed: ['exp2']" in result.stdout


def test_a_reduced_cpu_sequence_passes_with_a_table_and_gpu_check_json(tmp_path, small_scene, monkeypatch):
    out = tmp_path / "out"
    result = run_gpu_check("--device", "cpu", "--steps", 8, "--only", "exp1", "resume", "--data", small_scene,
                           "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("check "))
    table = {line.split()[0]: line.split() for line in lines[header + 1:header + 4]}
    assert list(table) == ["exp1", "exp2", "resume"] and all(row[1] == "pass" for row in table.values())
    report = json.loads((out / "gpu_check.json").read_text())
    assert (report["passed"], report["device"], report["preset"], report["steps"]) == (True, "cpu", "quick", 8)
    checks = {c["name"]: c for c in report["checks"]}
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
    plan = gpu_check.Plan("cpu", out, 8, str(small_scene), 60)
    results = {name: gpu_check.Result(name, "", metrics=checks[name]["metrics"]) for name in ("exp1", "exp2")}
    # A DDP run of 2 CPU processes: each rank's matmuls take half the rays, and both share this machine's cores.
    results["exp5"] = gpu_check.Result("exp5", "", metrics={**checks["exp1"]["metrics"], "world_size": 2})
    gpu_check.check_mfu(plan, results, gpu_check.Result("mfu", ""))
    per_ray = 16 + 16 + 32  # the quick preset's MLP queries per ray: coarse, then coarse and fine again
    for name, dtype, rays in (("exp1", "float32", 256), ("exp2", "bfloat16", 256), ("exp5", "float32", 128)):
        matmul_rate = 3 * 2 * rays * per_ray * (39 * 128 + 3 * 128 * 128 + 128 * 4) * gpu_check.MATMUL_PASSES / 0.5
        metrics = results[name].metrics
        assert metrics["flops_per_sample"] == QUICK_FLOPS_PER_SAMPLE and metrics["matmul_dtype"] == dtype
        assert metrics["matmul_flops_per_s"] == round(matmul_rate)
        assert metrics["mfu"] == round(metrics["steady_samples_per_s"] * QUICK_FLOPS_PER_SAMPLE / matmul_rate, 3)
