"""Micro-batches and the plan (step.train_step, plan.py): a step split into micro-batches computes the whole
batch's update; the plan splits a step only where it does not fit, refuses only what cannot fit a few rays,
and applies every device rule to a GPU profile on the CPU as it would to the real GPU."""

import contextlib
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import write_scene

import bitnerf
import configs
import gpus
import nerf
import plan
import precision
import ray_memory
import train
from dataset import RaySampler, load_scene
from step import Optimization, train_step

REPO = Path(__file__).resolve().parents[1]
T4_ONLY_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # today's CUDA 13 wheels


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """The values of a parameter, torchao's BitNet weight subclass included."""
    return getattr(tensor, "_data", tensor)


def one_step(config, micro_batch_rays: int) -> tuple[dict, dict, dict]:
    """(the accumulated gradients, the parameters after one step of SGD with lr 1, the step's stats) from the
    same initial model and batch."""
    scene = load_scene(config.data)
    torch.manual_seed(config.seed)
    model = bitnerf.build_model(config, scene, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optimization = Optimization(optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), 0.0, config.steps)
    batch = RaySampler(scene, torch.device("cpu"), config.batch_rays, config.seed, config.jitter_per_ray).batch(0)
    stats = train_step(model, batch, optimization, config, contextlib.nullcontext, micro_batch_rays)
    gradients = {name: plain(p.grad).clone() for name, p in model.named_parameters()}  # zeroed only by the next step
    return gradients, {k: plain(v).detach().clone() for k, v in model.state_dict().items()}, stats


@pytest.mark.parametrize("model_name", ["nerf", "bitnerf"])
def test_a_step_of_four_micro_batches_equals_a_step_of_the_whole_batch(tiny_config, model_name):
    config = replace(tiny_config, model=model_name, batch_rays=64, perturb=True)
    whole_gradients, whole, whole_stats = one_step(config, 0)
    split_gradients, split, split_stats = one_step(config, 16)
    if model_name == "nerf":  # fp32 rounding of 4 partial sums against one
        for name, gradient in whole_gradients.items():
            assert (split_gradients[name] - gradient).norm() <= 1e-6 * gradient.norm(), name
    for name in whole:  # the tolerance of the DDP step test (test_bitnerf_ddp.py)
        assert torch.allclose(split[name], whole[name], rtol=1e-5, atol=1e-6), name
    assert torch.allclose(split_stats["loss"], whole_stats["loss"], rtol=1e-6)
    assert torch.allclose(split_stats["grad_norm"], whole_stats["grad_norm"], rtol=1e-5)


def test_uneven_micro_batches_weigh_each_ray_once(tiny_config):
    """60 rays in parts of at most 16 (4 of 15), 25 (3 of 20) and 59 (2 of 30)."""
    config = replace(tiny_config, batch_rays=60, perturb=True)
    _, whole, _ = one_step(config, 0)
    for micro in (16, 25, 59):
        _, split, _ = one_step(config, micro)
        for name in whole:
            assert torch.allclose(split[name], whole[name], rtol=1e-5, atol=1e-6), (micro, name)


def test_twenty_steps_with_micro_batches_train_what_twenty_whole_steps_train(tiny_config, tmp_path, monkeypatch):
    updates = []
    update_occupancy = nerf.NeRF.update_occupancy
    monkeypatch.setattr(
        nerf.NeRF, "update_occupancy", lambda self, step: updates.append(step) or update_occupancy(self, step)
    )
    config = replace(
        tiny_config,
        data=str(write_scene(tmp_path / "scene.npz", n=6, size=16)),
        steps=20,
        batch_rays=128,
        occupancy_grid=True,
        occupancy_resolution=16,
        eval_every=20,
        ckpt_every=20,
        log_every=10,
    )
    whole = train.run(replace(config, name="whole"))
    split = train.run(replace(config, name="split", micro_batch_rays=32))
    assert (whole["micro_batches"], split["micro_batches"], split["micro_batch_rays"]) == (1, 4, 32)
    assert abs(whole["psnr_test"] - split["psnr_test"]) < 0.05
    load = lambda name: torch.load(Path(config.out) / name / "checkpoint.pt", weights_only=False)  # noqa: E731
    whole_state, split_state = load("whole")["model"], load("split")["model"]
    differing = total = 0
    for name, value in whole_state.items():
        if value.is_floating_point():
            far = ~torch.isclose(split_state[name], value, rtol=1e-3, atol=1e-5)
            differing, total = differing + far.sum().item(), total + value.numel()
    # Adam turns a rounding-level gradient difference into a full-size step: a few in a thousand may differ.
    assert differing <= 0.005 * total
    assert updates == [*range(20), *range(20)]  # the occupancy grid sees one step per step, not one per micro-batch


def test_the_gradient_scaler_sees_one_step_per_step(tiny_config):
    config = replace(tiny_config, precision="amp", amp_dtype="fp16", batch_rays=64)
    scene = load_scene(config.data)
    torch.manual_seed(0)
    model = bitnerf.build_model(config, scene, torch.device("cpu"))
    optimization = Optimization.build(config, model, torch.device("cpu"), torch.float16)
    optimization.scaler.load_state_dict({**optimization.scaler.state_dict(), "scale": 2.0**8})
    sampler = RaySampler(scene, torch.device("cpu"), config.batch_rays, config.seed, config.jitter_per_ray)
    for step in range(3):
        train_step(
            model,
            sampler.batch(step),
            optimization,
            config,
            lambda: precision.autocast(torch.device("cpu"), torch.float16),
            16,
        )
        assert optimization.scaler.state_dict()["_growth_tracker"] == step + 1
        assert optimization.scheduler.last_epoch == step + 1


def test_exp1_quick_with_micro_batch_rays_64_as_a_user_types_it(tmp_path):
    scene = write_scene(tmp_path / "scene.npz", n=6, size=16)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "exp1.py"),
            "--quick",
            "--micro-batch-rays",
            "64",
            "--steps",
            "4",
            "--data",
            str(scene),
            "--out",
            str(tmp_path / "runs"),
            "--video-frames",
            "1",
            "--eval-views",
            "1",
            "--wandb",
            "disabled",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "exp1" / "summary.json").read_text())
    assert (summary["micro_batch_rays"], summary["micro_batches"]) == (64, 4)  # the quick preset's 256 rays
    assert summary["peak_reserved_bytes"] is None and summary["capability"] is None
    assert "4 micro-batches of 64 rays" in result.stdout


def plan_of(name: str, profile: str, world_size: int | None = None, scene=None, **overrides):
    config = replace(configs.experiment(name), **overrides)
    scene = scene or load_scene(None)
    return plan.plan_run(config, scene, plan.profile_target(profile), world_size or (2 if config.distributed else 1))


def run_plan_command(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(
    "profile, extra, split",
    [
        ("t4", [], True),
        # Counted in fp16, exp3's 16384 rays fit a 40 GB A100 in one pass; counted in fp32 (the old estimate's 50 GiB)
        # they do not, and the same plan splits them.
        ("a100-40", [], False),
        ("a100-40", ["--precision", "fp32"], True),
    ],
)
def test_exp3_plans_micro_batches_where_its_step_does_not_fit(profile, extra, split, builtin_scene):
    result = run_plan_command("exp3.py", "--plan", profile, "--data", str(builtin_scene), *extra)
    assert result.returncode == 0, result.stderr
    assert "16384 rays per step" in result.stdout
    planned = re.search(r"micro-batches  (\d+) micro-batches of (\d+) rays", result.stdout)
    assert bool(planned) == split, result.stdout
    if split:
        assert int(planned[1]) * int(planned[2]) >= 16384 > (int(planned[1]) - 1) * int(planned[2])
    else:
        assert "micro-batches  one pass (no micro-batches)" in result.stdout


def test_every_experiment_of_the_full_configuration_fits_a_t4_and_one_rank_of_two(builtin_scene):
    scene = load_scene(str(builtin_scene))
    t4 = gpus.PROFILES["t4"].memory_bytes - plan.CUDA_OVERHEAD_BYTES
    for name in configs.AXES:
        for world_size in (1, 2):
            if world_size == 2 and not configs.experiment(name).distributed:
                continue
            planned = plan_of(name, "t4", world_size, scene)
            assert planned.peak_bytes <= t4, name
            # The split is the fewest micro-batches that fit: one fewer would not.
            if planned.micro_batches > 1:
                fewer = -(-planned.rays_per_process // (planned.micro_batches - 1))
                assert planned.fixed_bytes + fewer * planned.bytes_per_ray > t4, name
    assert plan_of("exp3", "t4", scene=scene).micro_batches > 1
    assert plan_of("exp1", "h100", scene=scene).micro_batches == 1


def test_the_estimate_counts_the_autocast_dtype(builtin_scene):
    """AMP saves its activations in 16 bits: about half of fp32's bytes per ray (the rendering stays fp32)."""
    scene = load_scene(str(builtin_scene))
    fp32, _ = ray_memory.counted_bytes_per_ray(configs.EXP1, scene, None)
    fp16, _ = ray_memory.counted_bytes_per_ray(configs.experiment("exp2"), scene, torch.float16)
    assert 0.4 < fp16 / fp32 < 0.7


def test_a_p100_plan_is_the_one_line_torch_build_error(builtin_scene):
    result = run_plan_command("exp1.py", "--plan", "p100", "--data", str(builtin_scene))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: the Tesla P100-PCIE-16GB (sm_60) has no kernels in this PyTorch"
        f" ({torch.__version__}, built for {' '.join(torch.cuda.get_arch_list())}): install a"
        f" build that has them, {gpus.OLD_GPU_TORCH}\n"
    )


def test_the_arch_rule_knows_binary_and_ptx_compatibility():
    assert plan.supports_arch((7, 5), T4_ONLY_ARCHS) and plan.supports_arch((8, 9), T4_ONLY_ARCHS)  # sm_86 runs on 8.9
    assert not plan.supports_arch((6, 0), T4_ONLY_ARCHS) and not plan.supports_arch((7, 0), T4_ONLY_ARCHS)
    assert plan.supports_arch((6, 1), ["sm_60", "sm_75"]) and plan.supports_arch((12, 1), ["sm_90", "compute_120"])


@pytest.fixture
def pascal_wheels(monkeypatch):
    """The installed torch as a CUDA 12.6 build, which carries Pascal kernels: the rules after the arch rule."""
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_50", "sm_60", "sm_70", *T4_ONLY_ARCHS])


def test_compile_below_capability_7_stays_eager_on_auto_and_is_refused_on_on(pascal_wheels):
    p100 = plan.profile_target("p100")
    compiled, reason = plan.compile_decision(configs.experiment("exp4"), p100)
    assert not compiled and "below Triton's minimum capability 7.0" in reason
    with pytest.raises(
        configs.UserError,
        match="^--compile on cannot compile here: the Tesla P100-PCIE-16GB"
        " \\(sm_60\\) is below Triton's minimum capability 7.0; use",
    ):
        plan.compile_decision(replace(configs.experiment("exp1"), compile="on"), p100)
    assert plan.compile_decision(configs.experiment("exp4"), plan.profile_target("t4"))[0]


@pytest.mark.parametrize(
    "profile, kernel",
    [
        ("p100", "int-mm-padded"),
        ("t4", "int-mm-padded"),
        ("a100-40", "torchao-triton"),
        ("l4", "torchao-triton"),
        ("h100", "torchao-triton"),
    ],
)
def test_the_int8_kernel_follows_the_capability(pascal_wheels, profile, kernel, builtin_scene):
    assert plan_of("exp4", profile, scene=load_scene(str(builtin_scene))).int8_kernel == kernel
    assert plan_of("exp1", profile, scene=load_scene(str(builtin_scene))).int8_kernel is None


def test_the_int8_kernel_rules_refuse_what_cannot_run():
    cpu = plan.Target("cpu")
    assert plan.int8_kernel_decision(configs.experiment("exp4"), cpu) == "int-mm"
    with pytest.raises(
        configs.UserError,
        match="^--int8-kernel torchao-triton: torchao's Triton kernel does not run on the CPU: use --int8-kernel auto$",
    ):
        plan.int8_kernel_decision(replace(configs.experiment("exp4"), int8_kernel="torchao-triton"), cpu)
    with pytest.raises(configs.UserError, match="K = 63, 283, 319: use --int8-kernel int-mm-padded"):
        plan.int8_kernel_decision(
            replace(configs.experiment("exp4"), int8_kernel="int-mm"), plan.profile_target("a100-40")
        )
    assert plan.int8_matmul_widths(configs.experiment("exp4")) == [63, 256, 256, 256, 256, 319, 256, 256, 256, 283] * 2


def test_bf16_is_refused_without_native_bf16_and_tf32_warns(builtin_scene):
    scene = load_scene(str(builtin_scene))
    with pytest.raises(
        configs.UserError,
        match="^--amp-dtype bf16: the Tesla T4 \\(sm_75\\) has no native bf16 .*: use --amp-dtype fp16",
    ):
        plan_of("exp2", "t4", scene=scene, amp_dtype="bf16")
    assert plan_of("exp2", "a100-40", scene=scene, amp_dtype="bf16").autocast_dtype == torch.bfloat16
    assert plan_of("exp2", "t4", scene=scene).autocast_dtype == torch.float16  # auto: fp16 with scaling
    assert any("TF32" in w for w in plan_of("exp1", "t4", scene=scene, tf32=True).warnings)
    assert not plan_of("exp1", "a100-40", scene=scene, tf32=True).warnings


def test_only_what_cannot_fit_a_few_rays_is_refused_and_an_explicit_split_must_fit(tiny_config):
    scene = load_scene(tiny_config.data)
    config = replace(tiny_config, batch_rays=4096)
    per_ray = ray_memory.counted_bytes_per_ray(config, scene, None)[0] * plan.MEMORY_MARGIN
    fixed = plan.plan_run(config, scene, plan.Target("cpu", available_bytes=2**40)).fixed_bytes
    room = int(fixed + 1000 * per_ray)  # 1000 rays fit
    planned = plan.plan_run(config, scene, plan.Target("cpu", available_bytes=room))
    assert planned.micro_batches == 5 and planned.micro_batch_rays == 820  # 4096 rays in the fewest parts of <= 1000
    with pytest.raises(
        configs.UserError, match="^--micro-batch-rays 2000 needs about .* use --micro-batch-rays 1000 or auto$"
    ):
        plan.plan_run(replace(config, micro_batch_rays=2000), scene, plan.Target("cpu", available_bytes=room))
    with pytest.raises(
        configs.UserError, match=f"^not even {plan.MIN_MICRO_BATCH_RAYS} rays per micro-batch fit on cpu: "
    ):
        plan.plan_run(config, scene, plan.Target("cpu", available_bytes=int(fixed + 10 * per_ray)))


def test_an_impossible_run_is_refused_in_one_line_before_the_run_directory_is_touched(tmp_path):
    scene = write_scene(tmp_path / "scene.npz", n=6, size=16)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "exp1.py"),
            "--quick",
            "--data",
            str(scene),
            "--out",
            str(tmp_path / "runs"),
            "--batch-rays",
            "10000000000",
            "--wandb",
            "disabled",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: not even {plan.MIN_MICRO_BATCH_RAYS} rays per micro-batch fit on cpu")
    assert not (tmp_path / "runs").exists()


def test_the_gpu_page_table_is_the_one_the_code_plans(builtin_scene):
    page = (REPO / "docs" / "gpus.md").read_text()
    assert plan.requirements_table(load_scene(str(builtin_scene))) in page


def test_the_time_estimate_comes_from_a_finished_run_on_the_same_device(tiny_config, capsys):
    config = replace(tiny_config, steps=3000, batch_rays=256)  # 3000 * 256 rays * 48 samples
    plan.print_plan(config, "", None)
    assert "time           unknown: no measured rate for this device yet" in capsys.readouterr().out
    run_dir = Path(config.out) / config.name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(
        json.dumps({"device": "cpu", "device_name": "cpu", "train_samples_per_s": 36864})
    )
    plan.print_plan(config, "", None)
    assert f"time           about 17 min at 36,864 samples/s, measured by {run_dir}" in capsys.readouterr().out
    plan.print_plan(config, "t4", None)  # a CPU run's rate says nothing of a T4
    assert "time           unknown" in capsys.readouterr().out
