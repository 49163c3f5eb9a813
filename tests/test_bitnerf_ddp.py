"""DDP on 2 CPU ranks (gloo): one step equals the single-process step (in fp32, and within rounding with
bf16 gradients), BitNet quantizes alike on every rank, the bytes each rank sends per step are measured
(fp32, bf16 and PowerSGD), a lost rank ends the job (or, with --max-restarts, is restarted and the run resumes), a
stop signal stops every rank with a checkpoint, a checkpoint resumes under another world size, and more
processes than GPUs are refused before the launch."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import ddp_rank, tiny_command, write_scene

import bitnerf
import bitnerf_ddp
import command_line
import configs
import devices
import render
import rundir
import train
from dataset import RaySampler, load_scene
from step import Optimization, train_step

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_setup(config, ranks):
    """A model, its optimizer state and this rank's first batch, as train.setup sets them up."""
    scene = load_scene(config.data)
    torch.manual_seed(config.seed)
    model = bitnerf.build_model(config, scene, ranks.device)
    # SGD with lr 1: the parameter change is the (averaged) gradient itself, compared at float
    # tolerance. Adam's first step is about lr * sign(gradient), which would turn float noise in a
    # near-zero gradient element into a whole step.
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    sampler = RaySampler(
        scene,
        ranks.device,
        config.batch_rays,
        config.seed,
        config.jitter_per_ray,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    return (
        model,
        Optimization(optimizer, scheduler, scaler, weight_decay=0.0, stage2_step=config.steps),
        sampler.batch(0),
    )


def quantized_state(model) -> dict:
    """Each quantized layer's ternary weight and scale, as the forward pass computes them."""
    return {name: bitnerf.ternarize(layer.weight) for name, layer in bitnerf.quantized_linears(model).items()}


def one_ddp_step(rank: int, world_size: int, port: int, config, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    ranks = bitnerf_ddp.init("cpu", distributed=True)
    try:
        model, optimization, batch = step_setup(config, ranks)
        step_model = bitnerf_ddp.wrap(model, ranks, config.grad_compression)
        stats = train_step(step_model, batch, optimization, config, contextlib.nullcontext, config.micro_batch_rays)
        loss = bitnerf_ddp.mean_across_ranks(stats["loss"])
        torch.save(
            {
                "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "quantized": quantized_state(model) if config.model == "bitnerf" else {},
                "loss": loss,
                "grad_norm": stats["grad_norm"],
                "rounds": step_model.gradient_traffic.rounds,
                "sent_bytes_per_step": bitnerf_ddp.sent_bytes_per_step(step_model),
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        bitnerf_ddp.shutdown()


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """The values of a parameter, torchao's BitNet weight subclass included."""
    return getattr(tensor, "_data", tensor)


def single_process_step(config, ranks=bitnerf_ddp.Ranks()) -> tuple[dict, dict, dict]:
    """One step in this process on ranks' share of the first batch (by default all of it): the weights before,
    their change (with SGD at lr 1, minus the gradient) and the step's stats."""
    model, optimization, batch = step_setup(config, ranks)
    before = {k: plain(v).clone() for k, v in model.state_dict().items()}
    stats = train_step(model, batch, optimization, config, contextlib.nullcontext)
    return before, {k: plain(v) - before[k] for k, v in model.state_dict().items()}, stats


# The bytes per gradient element that a hook hands to all-reduce: fp32 without compression, bf16 with it.
GRADIENT_BYTES = {"none": 4, "bf16": 2}


@pytest.mark.parametrize(
    "model_name, micro_batch_rays, grad_compression",
    [("nerf", 0, "none"), ("bitnerf", 0, "none"), ("nerf", 8, "none"), ("nerf", 0, "bf16")],
    ids=["nerf", "bitnerf", "nerf-4-micro-batches", "nerf-bf16"],
)
def test_a_ddp_step_equals_a_single_process_step_on_the_union_of_the_rays(
    tiny_config, tmp_path, model_name, micro_batch_rays, grad_compression
):
    """Also with each rank's 32 rays in 4 micro-batches: the same update, and one round of bucket reductions per
    step (no_sync on all but the last micro-batch). Each rank sends every gradient once, in fp32 (4 bytes an
    element), or in bf16 (2 bytes) with the bf16 hook, whose update is the fp32 one up to bf16 rounding."""
    config = replace(
        tiny_config,
        model=model_name,
        batch_rays=64,
        perturb=True,
        micro_batch_rays=micro_batch_rays,
        distributed=True,
        grad_compression=grad_compression,
    )
    mp.spawn(one_ddp_step, args=(2, free_port(), config, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    before, update, stats = single_process_step(replace(config, micro_batch_rays=0))
    params = sum(u.numel() for u in update.values())  # the tiny model's state is all parameters (no grid)
    for rank in ranks:
        assert rank["rounds"] == 1
        assert rank["sent_bytes_per_step"] == GRADIENT_BYTES[grad_compression] * params
    assert torch.allclose(ranks[0]["loss"], stats["loss"], rtol=1e-5)  # computed before any communication
    if grad_compression == "none":
        assert torch.allclose(ranks[0]["grad_norm"], stats["grad_norm"], rtol=1e-4)
    else:
        # What each rank's own rays alone change, which the hook rounds to bf16 before the sum.
        shares = [single_process_step(config, bitnerf_ddp.Ranks(rank=r, world_size=2))[1] for r in range(2)]
    for name in update:
        for rank in ranks:
            ddp_update = plain(rank["params"][name]) - before[name]
            bound = 1e-6 + 1e-5 * update[name].abs()  # fp32 rounding, in another order of summation
            if grad_compression == "bf16":
                # bf16 keeps 8 significant bits: casting each rank's half of its gradient and rounding their sum
                # to nearest each move an element by at most 2^-8 of the value rounded.
                bound = bound + 2**-8 * ((shares[0][name].abs() + shares[1][name].abs()) / 2 + ddp_update.abs())
            assert ((ddp_update - update[name]).abs() <= bound).all(), name
    assert any(u.any() for u in update.values())
    # Compressed, the update is off the fp32 one by more than fp32's rounding: the gradients did travel in bf16.
    assert (grad_compression == "bf16") == any(
        not torch.allclose(plain(ranks[0]["params"][name]) - before[name], u, rtol=1e-5, atol=1e-6)
        for name, u in update.items()
    )
    if model_name == "bitnerf":
        # Every rank quantizes identically: same ternary weights, same absmean scale.
        assert ranks[0]["quantized"].keys() == ranks[1]["quantized"].keys() and ranks[0]["quantized"]
        for name, (values, scale) in ranks[0]["quantized"].items():
            other_values, other_scale = ranks[1]["quantized"][name]
            assert torch.equal(values, other_values) and torch.equal(scale, other_scale)


def powersgd_steps(rank: int, port: int, config, steps: int, out_dir: str) -> None:
    """steps training steps of config with PowerSGD on one of 2 ranks, with the run's optimizer (AdamW): the bytes
    sent after each step, PowerSGD's own count of the elements it sent, and the weights go to out_dir/rank<rank>.pt."""
    with ddp_rank(rank, port, config, "powersgd") as (model, optimization, sampler, step_model):
        sent, losses = [], []
        for step in range(steps):
            losses.append(
                train_step(step_model, sampler.batch(step), optimization, config, contextlib.nullcontext)["loss"]
            )
            sent.append(step_model.gradient_traffic.group.sent_bytes)
        [(_, powersgd_state)] = step_model._comm_hooks  # DDP keeps the registered hook and its state here
        torch.save(
            {
                "sent": sent,
                "losses": losses,
                "sent_bytes_per_step": bitnerf_ddp.sent_bytes_per_step(step_model),
                "numel_sent_compressed": powersgd_state.compression_stats()[2],
                "weights": model.state_dict(),
            },
            f"{out_dir}/rank{rank}.pt",
        )


def test_powersgd_trains_alike_on_every_rank_and_sends_fewer_bytes_than_fp32(tiny_config, tmp_path):
    """Plain all-reduce for POWERSGD's first steps, then the low-rank factors P and Q and the tensors too small to
    compress: the bytes counted are those PowerSGD says it sent, P and Q included (all-reduced in its
    callbacks), far fewer than the fp32 gradients."""
    config = replace(tiny_config, batch_rays=64)
    plain_steps = bitnerf_ddp.POWERSGD["start_powerSGD_iter"]
    steps = plain_steps + 2
    mp.spawn(powersgd_steps, args=(free_port(), config, steps, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    fp32_bytes = 4 * sum(w.numel() for w in ranks[0]["weights"].values())  # the tiny model's state: parameters
    for rank in ranks:
        sent = rank["sent"]
        assert [b - a for a, b in zip([0, *sent], sent[:plain_steps])] == [fp32_bytes] * plain_steps
        compressed = sent[-1] - sent[plain_steps - 1]
        assert compressed == 4 * rank["numel_sent_compressed"]  # fp32 factors
        assert compressed / (steps - plain_steps) < fp32_bytes / 4
        assert rank["sent_bytes_per_step"] == round(sent[-1] / steps)
        assert all(torch.isfinite(loss) for loss in rank["losses"])
    # Every rank decompresses the same all-reduced factors, so the weights stay equal to the bit.
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])


def exp5_command(config, *extra: str, script: str = "exp5.py") -> list[str]:
    """A small run of exp5, or of another distributed experiment's script, on config's scene and --out."""
    return tiny_command(script, config, *extra)


def run_exp5(config, *extra: str, timeout: float = 240, script: str = "exp5.py") -> subprocess.CompletedProcess:
    return subprocess.run(
        exp5_command(config, *extra, script=script),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_exp5_trains_on_two_processes_and_resumes_on_one(tiny_config):
    # Each rank's 32 rays in 2 micro-batches: exp5 with micro-batches trains what exp1 trains without them.
    first = run_exp5(
        tiny_config, "--steps", "20", "--ckpt-every", "10", "--eval-every", "10", "--micro-batch-rays", "16"
    )
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = Path(tiny_config.out) / "exp5"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_rays"] == 64
    assert (summary["micro_batch_rays"], summary["micro_batches"]) == (16, 2)

    # The path real runs take, end to end: 20 steps on 2 ranks train what one process trains on all the rays
    # (exp1, the same options). Ranks that trained alone on their halves (a forward past DDP) end far off.
    single, _ = command_line.parse_args(
        "exp1", exp5_command(tiny_config, "--steps", "20", "--ckpt-every", "10", "--eval-every", "10")[2:]
    )
    train.run(replace(single, name="single"))
    distributed = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    reference = torch.load(Path(tiny_config.out) / "single" / "checkpoint.pt", weights_only=False)["model"]
    # Floating-point state: the weights and the grid's opacities (its flags follow them; its sample counts are
    # rank 0's rays alone).
    difference = max(
        (distributed[k] - reference[k]).abs().max().item() for k in reference if reference[k].is_floating_point()
    )
    # Averaging in another order leaves float rounding; an AdamW step of a rank alone moves weights by up to lr.
    assert difference < 1e-4

    resumed = run_exp5(tiny_config, "--steps", "30", "--resume", "--nproc", "1", "--eval-every", "10")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 30
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 30


def descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for child in found for p in (int(child), *descendants(int(child)))]


def running(processes: list[int], grace_s: float = 15.0) -> list[int]:
    """The processes still running (not exited, not zombies) after up to grace_s seconds.

    When torchrun exits, a worker that got the same signal may still be on its way out; it is
    orphaned and reaped by init, so the check allows it a few seconds to end."""

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False

    deadline = time.monotonic() + grace_s
    while [p for p in processes if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in processes if alive(p)]


def start_training_workers(
    config, *options: str, started: str = "metrics.csv"
) -> tuple[subprocess.Popen, list[int], list[int]]:
    """An exp5 job (options: by default a million steps) in its own process group, once both ranks train and
    its run directory holds `started`: (job, all its processes, the ranks)."""
    # Ctrl-C handling as in a terminal, even where this test runs with SIGINT ignored (a background job).
    job = subprocess.Popen(
        exp5_command(config, *(options or ("--steps", "1000000", "--eval-every", "1000000"))),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    marker = Path(config.out) / "exp5" / started
    deadline = time.monotonic() + 180
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2.0)  # both ranks are inside the training loop
    processes = descendants(job.pid)
    commands = {p: Path(f"/proc/{p}/cmdline").read_text() for p in processes}
    workers = [p for p, c in commands.items() if "exp5.py" in c and "torch.distributed.run" not in c]
    assert len(workers) == 2, commands
    return job, processes, workers


def test_a_dead_rank_ends_the_job_with_a_clear_error_and_no_stray_processes(tiny_config):
    job, processes, workers = start_training_workers(tiny_config)
    os.kill(max(workers), signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = job.communicate(timeout=90)
    assert time.monotonic() - killed_at < 60
    assert job.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("error: exp5 failed in one of its 2 processes")
    assert not running(processes)


def test_ctrl_c_stops_every_rank_and_saves_a_checkpoint(tiny_config):
    job, processes, _ = start_training_workers(tiny_config)
    os.killpg(job.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, stderr = job.communicate(timeout=90)
    assert job.returncode == 130, stderr[-2000:]
    assert "checkpoint saved, continue with --resume" in stderr
    assert torch.load(Path(tiny_config.out) / "exp5" / "checkpoint.pt", weights_only=False)["step"] > 0
    assert not running(processes)


# A run long enough to be stopped in the middle, checkpointing often; the same in every test that compares to it.
FAULT_RUN = ("--steps", "1000", "--log-every", "20", "--ckpt-every", "100", "--eval-every", "1000000")


@pytest.fixture(scope="module")
def uninterrupted_weights(builtin_scene, tmp_path_factory) -> dict:
    """The final weights of a FAULT_RUN of exp5 on 2 processes that nothing stopped."""
    config = replace(configs.QUICK, data=str(builtin_scene), out=str(tmp_path_factory.mktemp("uninterrupted")))
    result = run_exp5(config, *FAULT_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(Path(config.out) / "exp5" / "checkpoint.pt", weights_only=False)["model"]


def assert_weights_equal(weights: dict, run_dir: Path, steps: int = 1000) -> None:
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == steps and checkpoint["model"].keys() == weights.keys()
    assert all(torch.equal(checkpoint["model"][k], weights[k]) for k in weights)


def test_sigterm_to_the_launcher_stops_every_rank_after_one_step_and_resume_matches_an_uninterrupted_run(
    tiny_config, uninterrupted_weights
):
    job, processes, _ = start_training_workers(tiny_config, *FAULT_RUN)
    job.send_signal(signal.SIGTERM)  # to the launcher alone, as a scheduler or a notebook host sends it
    _, stderr = job.communicate(timeout=90)
    assert job.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    stops = re.findall(r"interrupted \(SIGTERM\) at step (\d+); checkpoint saved, continue with --resume", stderr)
    run_dir = Path(tiny_config.out) / "exp5"
    assert len(stops) == 1 and 0 < int(stops[0]) < 1000
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == int(stops[0])
    assert not running(processes) and not rundir.RunLock(run_dir).path.exists()

    resumed = run_exp5(tiny_config, *FAULT_RUN, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_weights_equal(uninterrupted_weights, run_dir)


def test_with_max_restarts_a_killed_rank_is_restarted_and_the_run_ends_as_if_never_stopped(
    tiny_config, uninterrupted_weights
):
    job, processes, workers = start_training_workers(
        tiny_config, *FAULT_RUN, "--max-restarts", "1", started="checkpoint.pt"
    )
    os.kill(max(workers), signal.SIGKILL)
    _, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr[-3000:]
    assert "exp5: restart 1 after a process died; resuming from the last checkpoint" in stderr
    assert_weights_equal(uninterrupted_weights, Path(tiny_config.out) / "exp5")
    assert not running(processes)


def train_on_two_ranks(rank: int, port: int, config, signalled_rank: int | None, out_dir: str) -> None:
    """train.run of config as one of 2 ranks, resuming where no rank is signalled and the run directory exists;
    signalled_rank gets SIGTERM right after its 17th optimizer step. The exit code (0 when the run ends) goes
    to out_dir/exit<rank>."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    real_train_step = train.train_step

    def step_then_signal(step_model, batch, optimization, *args):
        stats = real_train_step(step_model, batch, optimization, *args)
        if rank == signalled_rank and optimization.scheduler.last_epoch == 17:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    train.train_step = step_then_signal
    try:
        train.run(config, resume=signalled_rank is None and (Path(config.out) / config.name).exists())
        code = 0
    except SystemExit as stop:
        code = stop.code
    Path(out_dir, f"exit{rank}").write_text(str(code))


def test_sigterm_to_one_rank_alone_stops_both_after_the_same_step_and_resume_is_bit_identical(tmp_path):
    scene = write_scene(tmp_path / "scene.npz", n=6, size=16)
    config = replace(
        configs.QUICK,
        data=str(scene),
        out=str(tmp_path / "runs"),
        wandb="disabled",
        distributed=True,
        device="cpu",
        depth=2,
        width=32,
        n_coarse=8,
        n_fine=8,
        steps=30,
        batch_rays=64,
        log_every=10,
        eval_every=1000,
        ckpt_every=10,
        video_frames=1,
        eval_views=1,
        compile="off",
    )

    def two_ranks(name: str, signalled_rank: int | None) -> list[int]:
        mp.spawn(
            train_on_two_ranks, args=(free_port(), replace(config, name=name), signalled_rank, str(tmp_path)), nprocs=2
        )
        return [int((tmp_path / f"exit{rank}").read_text()) for rank in range(2)]

    assert two_ranks("straight", None) == [0, 0]
    assert two_ranks("resumed", 1) == [143, 143]  # rank 0 stops too, though only rank 1 got the signal
    run_dir = Path(config.out) / "resumed"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 17
    assert two_ranks("resumed", None) == [0, 0]
    straight = torch.load(Path(config.out) / "straight" / "checkpoint.pt", weights_only=False)["model"]
    assert_weights_equal(straight, run_dir, steps=30)


def test_the_launcher_refuses_a_busy_run_directory_or_a_bad_checkpoint_in_one_line_before_torchrun(tiny_config):
    run_dir = Path(tiny_config.out) / "exp5"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with rundir.RunLock(run_dir) as lock:
        busy = run_exp5(tiny_config, "--overwrite", "--steps", "5")
    assert busy.returncode == 2 and busy.stderr.strip().splitlines() == [
        f"error: {run_dir} is in use by another run (process {os.getpid()}; lock {lock.path}): wait for it to end,"
        f" or train into another --name"
    ]
    damaged = run_exp5(tiny_config, "--resume", "--steps", "5")
    assert damaged.returncode == 2 and len(damaged.stderr.strip().splitlines()) == 1
    assert damaged.stderr.startswith(f"error: {run_dir / 'checkpoint.pt'} is not a readable checkpoint")
    assert (run_dir / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def map_on_two_ranks(rank: int, port: int, out_dir: str) -> None:
    """bitnerf_ddp.map_across_ranks of 5 items on 2 ranks; what each rank returns goes to out_dir/map<rank>.pt."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    bitnerf_ddp.init("cpu", distributed=True)
    try:
        work = lambda item: {"item": item, "rank": rank, "values": torch.full((2,), float(item))}  # noqa: E731
        torch.save(bitnerf_ddp.map_across_ranks(work, list(range(5)), torch.device("cpu")), f"{out_dir}/map{rank}.pt")
    finally:
        bitnerf_ddp.shutdown()


def test_map_across_ranks_shares_the_items_out_and_gives_rank_0_every_result_in_order(tmp_path):
    mp.spawn(map_on_two_ranks, args=(free_port(), str(tmp_path)), nprocs=2)
    gathered = torch.load(tmp_path / "map0.pt", weights_only=False)
    assert [(r["item"], r["rank"]) for r in gathered] == [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)]
    assert all(torch.equal(r["values"], torch.full((2,), float(r["item"]))) for r in gathered)
    assert torch.load(tmp_path / "map1.pt", weights_only=False) is None


# exp5 on a scene of 3 test views (and 3 video frames): 2 ranks get uneven shares.
UNEVEN_RUN = ("--steps", "10", "--log-every", "5", "--eval-every", "5", "--eval-views", "3", "--video-frames", "3")


@pytest.fixture(scope="module")
def uneven_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven")
    scene = write_scene(root / "scene.npz", n=8, size=16, i_train=np.arange(5), i_test=np.arange(5, 8))
    return replace(configs.QUICK, data=str(scene), out=str(root / "runs"))


@pytest.fixture(scope="module")
def two_process_run(uneven_config) -> Path:
    """The run directory of an UNEVEN_RUN of exp5 on 2 processes of one machine."""
    result = run_exp5(uneven_config, *UNEVEN_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    return Path(uneven_config.out) / "exp5"


def test_the_data_parallel_evaluation_equals_a_single_process_evaluation_of_the_same_model(two_process_run, tmp_path):
    summary = json.loads((two_process_run / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["psnr_test_per_view"]) == 3
    metrics = render.render_run(two_process_run, tmp_path, device=torch.device("cpu"))
    assert metrics["views"] == [5, 6, 7] and metrics["psnr_test_per_view"] == summary["psnr_test_per_view"]
    assert metrics["psnr_test"] == summary["psnr_test"] and metrics["ssim_test"] == summary["ssim_test"]
    renders = sorted(p.name for p in (two_process_run / "renders").glob("*.png"))
    assert renders == sorted(p.name for p in (tmp_path / "renders").glob("*.png")) and len(renders) == 9
    for name in renders:
        assert np.array_equal(iio.imread(two_process_run / "renders" / name), iio.imread(tmp_path / "renders" / name))
    video = iio.imread(two_process_run / "video.gif", index=None)
    assert video.shape[0] == 3 and np.array_equal(video, iio.imread(tmp_path / "video.gif", index=None))


def test_exp9_trains_on_two_processes_sending_bf16_gradients_half_the_bytes_of_exp5(uneven_config, two_process_run):
    """exp9 is exp5 with the bf16 hook: each rank sends its gradients once per step, 2 bytes an element instead of
    exp5's 4, measured from what the hooks handed to all-reduce."""
    result = run_exp5(uneven_config, *UNEVEN_RUN, script="exp9.py")
    assert result.returncode == 0, result.stderr[-2000:]
    exp5, exp9 = (
        json.loads((run_dir / "summary.json").read_text())
        for run_dir in (two_process_run, two_process_run.parent / "exp9")
    )
    assert exp9["world_size"] == 2 and exp9["steps"] == exp5["steps"] and exp9["params"] == exp5["params"]
    assert exp5["sent_bytes_per_step"] == 4 * exp5["params"]
    assert exp9["sent_bytes_per_step"] == 2 * exp9["params"]
    assert abs(exp9["psnr_test"] - exp5["psnr_test"]) < 0.1  # bf16 rounding of 10 steps: equal to 0.001 dB here


# torchrun's rendezvous flags for node 0 or 1 of two nodes that meet at a port of this machine; the c10d
# rendezvous numbers the nodes itself (it ignores --node-rank), the static one gives node 0 rank 0.
RENDEZVOUS = {
    "c10d": lambda node, port: ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job"],
    "static": lambda node, port: ["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)],
}


@pytest.mark.parametrize("rendezvous", RENDEZVOUS)
def test_two_nodes_of_one_process_each_run_as_two_processes_on_one_node(
    uneven_config, two_process_run, tmp_path, rendezvous
):
    """Two torchrun launchers, as on two machines, that share the --out folder (a shared file system)."""
    config = replace(uneven_config, out=str(tmp_path / "runs"))
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                *RENDEZVOUS[rendezvous](node, port),
                *exp5_command(config, *UNEVEN_RUN)[1:],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for node in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=240)
            assert node.returncode == 0, stderr[-2000:]
            outputs.append(stdout)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.terminate()  # torchrun passes it on to its rank
                node.wait(timeout=60)
    run_dir = Path(config.out) / "exp5"
    summary, single_node = (json.loads((d / "summary.json").read_text()) for d in (run_dir, two_process_run))
    assert summary["world_size"] == 2
    for key in ("psnr_test", "ssim_test", "psnr_test_per_view", "steps", "global_batch_rays"):
        assert summary[key] == single_node[key], key
    periodic = [[r["psnr_test"] for r in rundir.read_metrics(d) if r["psnr_test"]] for d in (run_dir, two_process_run)]
    assert len(periodic[0]) == 1 and periodic[0] == periodic[1]  # the evaluation at step 5
    assert_weights_equal(torch.load(two_process_run / "checkpoint.pt", weights_only=False)["model"], run_dir, steps=10)
    assert not rundir.RunLock(run_dir).path.exists()
    if rendezvous == "static":  # rank 0, which alone reports and writes the run directory, is on node 0
        assert "exp5: test PSNR" in outputs[0] and "exp5: test PSNR" not in outputs[1]


def test_a_distributed_run_on_cuda_without_a_gpu_is_one_line_not_a_cpu_run(tiny_config, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "unusable_gpu", lambda: None)  # no NVIDIA GPU on this machine at all
    monkeypatch.setattr(bitnerf_ddp, "launch", lambda *args: pytest.fail("torchrun was launched"))
    with pytest.raises(SystemExit) as refused:
        train.main(
            "exp5", ["--device", "cuda", "--data", tiny_config.data, "--out", tiny_config.out, "--wandb", "disabled"]
        )
    assert refused.value.code == 2 and capsys.readouterr().err == (
        "error: --device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu\n"
    )
    assert not Path(tiny_config.out).exists()


def test_more_processes_than_visible_gpus_is_one_line_before_anything_starts(tiny_config, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with 2 GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(bitnerf_ddp, "launch", lambda *args: pytest.fail("torchrun was launched"))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [
        bitnerf_ddp.launch_nproc(None, cuda),
        bitnerf_ddp.launch_nproc(1, cuda),
        bitnerf_ddp.launch_nproc(3, cpu),
        bitnerf_ddp.launch_nproc(None, cpu),
    ] == [2, 1, 3, 2]
    for device in ("cuda", "auto"):
        with pytest.raises(SystemExit) as refused:
            train.main(
                "exp5",
                [
                    "--nproc",
                    "3",
                    "--device",
                    device,
                    "--data",
                    tiny_config.data,
                    "--out",
                    tiny_config.out,
                    "--wandb",
                    "disabled",
                ],
            )
        assert refused.value.code == 2 and capsys.readouterr().err == (
            "error: --nproc 3 is more processes than the 2 visible GPUs (one process per GPU): use --nproc 2 or"
            " fewer, or --device cpu\n"
        )
    assert not Path(tiny_config.out).exists()
