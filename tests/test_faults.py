"""Faults and misuse on one process: a stop signal saves exactly the steps applied and resume continues bit
for bit, a damaged checkpoint, a busy or stale run directory, a batch too large for memory, running out of
memory while training, and overlapping splits each end in one line. The distributed cases (SIGTERM under
torchrun, elastic restarts) are in test_bitnerf_ddp.py."""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_command, write_scene

import command_line
import configs
import precision
import rundir
import train
from utils import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_config(tmp_path):
    """The quick preset with a small model on a scene of 6 views of 16x16 pixels (one test view), so that a
    whole run, its final evaluation included, is quick; it writes into tmp_path."""
    scene = write_scene(tmp_path / "scene.npz", n=6, size=16)
    return replace(
        configs.QUICK,
        data=str(scene),
        out=str(tmp_path / "runs"),
        wandb="disabled",
        depth=2,
        width=32,
        n_coarse=8,
        n_fine=8,
        steps=40,
        batch_rays=64,
        log_every=10,
        eval_every=20,
        ckpt_every=20,
        video_frames=1,
        eval_views=1,
        compile="off",
    )


def exp1_command(config, *extra: str) -> list[str]:
    """exp1.py on a model small enough to take a few milliseconds a step, into config's data and out."""
    return tiny_command("exp1.py", config, "--eval-every", "1000000", *extra)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command printed, after checking that it printed only that, with exit code 2."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def final_state(run_dir: Path) -> dict:
    checkpoint = torch.load(run_dir / rundir.CHECKPOINT, weights_only=False)
    return {"model": checkpoint["model"], "moments": checkpoint["optimizer"]["state"]}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "weights differ"
    for key, moments in a["moments"].items():
        assert all(torch.equal(v, b["moments"][key][name]) for name, v in moments.items()), "AdamW moments differ"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_right_after_an_optimizer_step_saves_that_step_and_resume_is_bit_identical(
    small_config, monkeypatch, capsys, signum
):
    config = replace(small_config, steps=30, ckpt_every=10)
    train.run(replace(config, name="straight"))

    real_train_step = train.train_step

    def step_then_signal(step_model, batch, optimization, *args):
        stats = real_train_step(step_model, batch, optimization, *args)
        if optimization.scheduler.last_epoch == 17:  # the 17th step is applied, the loop has not moved on
            os.kill(os.getpid(), signum)
        return stats

    monkeypatch.setattr(train, "train_step", step_then_signal)
    with pytest.raises(SystemExit) as stop:
        train.run(replace(config, name="resumed"))
    assert stop.value.code == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted ({signal.Signals(signum).name}) at step 17; checkpoint saved, continue with --resume"
    )
    run_dir = Path(config.out) / "resumed"
    assert torch.load(run_dir / rundir.CHECKPOINT, weights_only=False)["step"] == 17
    assert not rundir.RunLock(run_dir).path.exists()

    monkeypatch.setattr(train, "train_step", real_train_step)
    train.run(replace(config, name="resumed"), resume=True)
    assert_bit_identical(final_state(Path(config.out) / "straight"), final_state(run_dir))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run put the handlers back


def test_a_stop_signal_in_the_final_evaluation_stops_it_at_once_and_resume_evaluates_again(
    small_config, monkeypatch, capsys
):
    config = replace(small_config, steps=10)

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once, long before this ends
        raise AssertionError("the final evaluation went on after SIGTERM")

    monkeypatch.setattr(train, "evaluate_trained", signalled)
    with pytest.raises(SystemExit) as stop:
        train.run(config)
    assert stop.value.code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted (SIGTERM) in the final evaluation; the checkpoint holds all 10 steps, --resume evaluates it again"
    )
    monkeypatch.undo()
    summary = train.run(config, resume=True)
    assert summary["steps"] == 10 and (Path(config.out) / "exp1" / rundir.SUMMARY).exists()


def damage(checkpoint: Path, how: str) -> None:
    """Overwrite a checkpoint file with a damaged one: a real checkpoint cut in half, other bytes, or nothing."""
    if how == "truncated":
        torch.save({"step": 3, "model": {"w": torch.arange(100000.0)}}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    else:
        checkpoint.write_bytes({"garbage": b"\x00not a checkpoint" * 64, "empty": b""}[how])


def test_resuming_from_a_truncated_checkpoint_is_one_line_with_exit_code_2(small_config):
    run_dir = Path(small_config.out) / small_config.name
    run_dir.mkdir(parents=True)
    damage(run_dir / rundir.CHECKPOINT, "truncated")
    result = subprocess.run(exp1_command(small_config, "--resume"), capture_output=True, text=True)
    line = one_line_error(result)
    assert line.startswith(f"error: {run_dir / rundir.CHECKPOINT} is not a readable checkpoint (")
    assert line.endswith("restore it from a copy, or start afresh with --overwrite instead of --resume")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_a_user_error_for_resume_and_for_analyses(tmp_path, how):
    checkpoint = tmp_path / rundir.CHECKPOINT
    damage(checkpoint, how)
    message = f"^{re.escape(str(checkpoint))} is not a readable checkpoint \\(.+\\); restore it from a copy, or"
    with pytest.raises(UserError, match=message + " start afresh with --overwrite instead of --resume$"):
        rundir.load_checkpoint(tmp_path, configs.QUICK, None)
    with pytest.raises(UserError, match=message + re.escape(" train the run again (expN.py --overwrite)") + "$"):
        rundir.load_trained(tmp_path, None, "cpu")


def test_a_file_that_loads_but_is_not_a_checkpoint_is_a_user_error(tmp_path):
    torch.save({"model": {}}, tmp_path / rundir.CHECKPOINT)
    with pytest.raises(UserError, match=r"is not a training checkpoint \(no step, wall_s, .*\); restore it"):
        rundir.load_checkpoint(tmp_path, configs.QUICK, None)


def test_a_resume_that_would_change_the_autocast_dtype_is_one_line_naming_the_flag_that_keeps_it(
    small_config, monkeypatch
):
    config = replace(small_config, precision="amp", steps=4)
    train.run(config)  # bf16 autocast on the CPU, its gradient scaler disabled
    path = Path(config.out) / config.name / rundir.CHECKPOINT
    # The same run resumed where --amp-dtype auto means fp16, as on CUDA: the device is all that changed.
    resolve = precision.amp_dtype
    monkeypatch.setattr(precision, "amp_dtype", lambda config, device: resolve(config, torch.device("cuda")))
    refusal = (
        "--resume: the checkpoint was trained with bf16 autocast; this resume would use fp16:"
        " add --amp-dtype bf16 to keep it"
    )
    with pytest.raises(UserError, match=f"^{re.escape(refusal)}$"):
        train.run(replace(config, steps=6), resume=True)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["autocast_dtype"] == "bfloat16"
    del checkpoint["autocast_dtype"]  # a checkpoint from before it was recorded: its empty scaler state tells
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match=f"^{re.escape(refusal)}$"):
        train.run(replace(config, steps=6), resume=True)
    summary = train.run(replace(config, steps=6, amp_dtype="bf16"), resume=True)  # the flag the line names
    assert (summary["steps"], summary["precision"]) == (6, "bf16-amp")


@pytest.mark.parametrize(
    "checkpoint, dtype",
    [
        ({"config": {"precision": "fp32"}, "scaler": {}}, None),
        ({"config": {"precision": "amp"}, "scaler": {}}, "bfloat16"),
        ({"config": {"precision": "amp"}, "scaler": torch.amp.GradScaler("cpu").state_dict()}, "float16"),
        ({"config": {"precision": "amp"}, "scaler": {}, "autocast_dtype": "float16"}, "float16"),
    ],
)
def test_the_autocast_dtype_of_a_checkpoint_without_its_record_follows_from_its_gradient_scaler(checkpoint, dtype):
    assert rundir.trained_autocast_dtype(checkpoint) == dtype


def test_resuming_a_cuda_fp16_checkpoint_on_the_cpu_is_one_line_with_exit_code_2(small_config):
    argv = exp1_command(small_config, "--precision", "amp", "--steps", "2")
    config, _ = command_line.parse_args("exp1", argv[2:])
    train.run(config)
    path = Path(config.out) / config.name / rundir.CHECKPOINT
    checkpoint = torch.load(path, weights_only=False)
    # As a CUDA run's: fp16 autocast and an enabled gradient scaler's state.
    checkpoint.update(autocast_dtype="float16", scaler=torch.amp.GradScaler("cpu").state_dict())
    torch.save(checkpoint, path)
    result = subprocess.run(argv[:-1] + ["3", "--resume"], capture_output=True, text=True)
    assert one_line_error(result) == (
        "error: --resume: the checkpoint was trained with fp16 autocast; this resume"
        " would use bf16: add --amp-dtype fp16 to keep it"
    )


def wait_for(path: Path, job: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert job.poll() is None, job.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


def run_files(run_dir):
    """The run directory's files, without the atomic writes still in progress (they come and go)."""
    return {p.name for p in run_dir.iterdir() if not p.name.endswith(".tmp")}


def test_a_second_run_into_a_busy_run_directory_is_refused_in_one_line_and_the_first_keeps_its_files(small_config):
    command = exp1_command(small_config, "--steps", "1000000", "--ckpt-every", "5", "--log-every", "5")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = Path(small_config.out) / "exp1"
    try:
        wait_for(run_dir / rundir.CHECKPOINT, first)
        files, metrics = run_files(run_dir), (run_dir / rundir.METRICS).read_text()
        second = subprocess.run(
            exp1_command(small_config, "--overwrite", "--steps", "5"), capture_output=True, text=True
        )
        assert one_line_error(second) == (
            f"error: {run_dir} is in use by another run (process {first.pid}; lock {run_dir.parent / '.exp1.lock'}):"
            f" wait for it to end, or train into another --name"
        )
        assert first.poll() is None and files <= run_files(run_dir)
        assert (run_dir / rundir.METRICS).read_text().startswith(metrics)  # appended to, never replaced
    finally:
        first.send_signal(signal.SIGTERM)  # what a scheduler sends: the run stops with a checkpoint
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    stopped_at = int(
        re.fullmatch(r"interrupted \(SIGTERM\) at step (\d+); checkpoint saved, continue with --resume", last).group(1)
    )
    assert torch.load(run_dir / rundir.CHECKPOINT, weights_only=False)["step"] == stopped_at > 0
    assert not (run_dir.parent / ".exp1.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_released_on_every_exit(small_config):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = Path(small_config.out) / small_config.name
    lock = rundir.RunLock(run_dir)
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(f"{dead.pid}\n")
    summary = train.run(replace(small_config, steps=2))
    assert summary["steps"] == 2 and not lock.path.exists()
    with pytest.raises(UserError, match="already holds a run"):  # refused after the lock was taken
        train.run(replace(small_config, steps=2))
    assert not lock.path.exists()


def test_a_live_holder_is_named_and_a_launcher_shares_its_lock_with_its_children(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "exp5"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, rundir; lock = rundir.RunLock(sys.argv[1]);"
            " lock.acquire(); print('held', flush=True); time.sleep(60)",
            str(run_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=f"is in use by another run \\(process {holder.pid};"):
            rundir.RunLock(run_dir).acquire()
        monkeypatch.setenv(rundir.LOCK_HOLDER_ENV, str(holder.pid))  # as a launcher sets it for its ranks
        child = rundir.RunLock(run_dir)
        child.acquire()
        child.release()  # the holder's lock, not this one's to remove
        assert child.path.read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"),
        MemoryError(),
    ],
    ids=["cuda", "cpu-allocator", "python"],
)
def test_running_out_of_memory_in_a_step_saves_the_steps_applied_and_names_micro_batch_rays(
    small_config, monkeypatch, error
):
    real_train_step = train.train_step

    def out_of_memory_at_step_8(step_model, batch, optimization, *args):
        if optimization.scheduler.last_epoch == 7:
            raise error
        return real_train_step(step_model, batch, optimization, *args)

    monkeypatch.setattr(train, "train_step", out_of_memory_at_step_8)
    with pytest.raises(UserError) as stop:
        train.run(small_config)
    assert str(stop.value) == (
        "out of memory with --micro-batch-rays 64; checkpoint saved at step 7: continue with"
        " --resume and a lower --micro-batch-rays (the same steps, in smaller parts), or free"
        " memory"
    )
    run_dir = Path(small_config.out) / small_config.name
    assert torch.load(run_dir / rundir.CHECKPOINT, weights_only=False)["step"] == 7
    assert not rundir.RunLock(run_dir).path.exists()


def test_an_error_that_is_not_memory_stays_itself(small_config, monkeypatch):
    def broken_step(*args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(train, "train_step", broken_step)
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        train.run(small_config)


@pytest.mark.parametrize("final", [False, True], ids=["periodic", "final"])
def test_running_out_of_memory_rendering_test_views_names_chunk(small_config, monkeypatch, final):
    real_test_views = train.Evaluation.test_views

    def out_of_memory(self, model, views=None):
        if (views is None) == final:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_test_views(self, model, views)

    monkeypatch.setattr(train.Evaluation, "test_views", out_of_memory)
    with pytest.raises(UserError) as stop:
        train.run(small_config)
    saved = "the checkpoint holds all 40 steps" if final else "checkpoint saved at step 20"  # eval_every is 20
    assert str(stop.value) == f"out of memory with --chunk 1024; {saved}: continue with --resume and a lower --chunk"
    checkpoint = torch.load(Path(small_config.out) / small_config.name / rundir.CHECKPOINT, weights_only=False)
    assert checkpoint["step"] == (40 if final else 20)


def test_a_scene_whose_test_views_are_also_training_views_is_refused_in_one_line(tmp_path):
    scene = write_scene(tmp_path / "overlap.npz", n=6, i_train=np.array([0, 1, 2, 3]), i_test=np.array([3, 4, 1]))
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "exp1.py"),
            "--quick",
            "--steps",
            "1",
            "--data",
            str(scene),
            "--out",
            str(tmp_path / "runs"),
            "--wandb",
            "disabled",
        ],
        capture_output=True,
        text=True,
    )
    assert one_line_error(result) == (
        f"error: {scene}: i_train and i_test share 2 views (1, 3): a test view must not"
        f" be trained on; give disjoint splits"
    )
    assert not (tmp_path / "runs").exists()


def test_max_restarts_must_not_be_negative():
    assert command_line.parse_args("exp5", ["--max-restarts", "2"])[1].max_restarts == 2
    with pytest.raises(UserError, match="--max-restarts must not be negative, got -1"):
        command_line.parse_args("exp5", ["--max-restarts", "-1"])
