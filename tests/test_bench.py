import contextlib
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import write_scene
from torch.utils.flop_counter import FlopCounterMode

import bench
import bitnerf
import configs
from dataset import RaySampler, load_scene
from nerf import MLP_RANGE, NeRF, RadianceField
from step import Optimization, train_step

CPU = torch.device("cpu")
TINY_BUDGET = bench.Budget(warmup=1, steps=2, seed_steps=1, rounds=1, profile_steps=1)


@pytest.fixture
def small_scene(tmp_path):
    """Six 8x8 views: the seed pipeline's whole-image batches stay small."""
    return load_scene(str(write_scene(tmp_path / "small.npz")))


@pytest.fixture
def small_config():
    """A small MLP with a skip connection and the view-dependent branch: every kind of Linear layer."""
    return replace(
        configs.QUICK,
        depth=3,
        width=32,
        skips=(1,),
        use_viewdirs=True,
        pos_freqs=4,
        dir_freqs=2,
        n_coarse=8,
        n_fine=8,
        batch_rays=64,
    )


def test_quick_preset_flops_per_sample_by_hand(small_scene):
    model = bitnerf.build_model(configs.QUICK, small_scene, CPU)
    encoded = 3 + 3 * 2 * 6  # the points and 6 frequencies of sin and cos
    assert bench.flops_per_sample(model) == 3 * 2 * (encoded * 128 + 3 * 128 * 128 + 128 * 4) == 327_936


def test_linear_shapes_and_flops_of_a_tiny_model_by_hand():
    # One 3->2 layer and a 2->4 head per field; 3 coarse samples per ray, then 3 + 1 in the fine pass.
    model = NeRF(2.0, 6.0, False, n_coarse=3, n_fine=1, depth=1, width=2, pos_freqs=0, use_viewdirs=False)
    shapes = bench.linear_shapes(model, batch_rays=5)
    assert shapes == [(15, 3, 2), (15, 2, 4), (20, 3, 2), (20, 2, 4)]
    assert bench.forward_flops(shapes) == 2 * (15 * 6 + 15 * 8 + 20 * 6 + 20 * 8) == 980
    # Per sample the same in both fields: 3 (forward and backward) x 2 (multiply, add) x (3*2 + 2*4).
    assert bench.flops_per_sample(model) == 3 * 2 * (6 + 8) == 84


def test_flops_per_sample_matches_flop_counter(small_config, small_scene):
    model = bitnerf.build_model(small_config, small_scene, CPU)
    optimization = Optimization.build(small_config, model, CPU, None)
    batch = RaySampler(small_scene, CPU, small_config.batch_rays, seed=0).batch(0)
    samples = small_config.batch_rays * small_config.samples_per_ray

    with FlopCounterMode(display=False) as forward:
        model(batch.origins, batch.dirs)
    assert forward.get_total_flops() == bench.forward_flops(bench.linear_shapes(model, small_config.batch_rays))

    with FlopCounterMode(display=False) as step:
        train_step(model, batch, optimization, small_config, contextlib.nullcontext)
    # The encoded points need no gradient, so autograd skips each field's first-layer input gradient.
    first = model.coarse.layers[0]
    skipped = 2 * first.in_features * first.out_features * samples
    assert step.get_total_flops() == bench.flops_per_sample(model) * samples - skipped


# The seed pipeline forks its DataLoader worker from this multi-threaded process, as the seed did.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_measured_row_is_plausible_and_the_seed_pipeline_runs(small_config, small_scene):
    row = bench.bench_experiment(small_config, small_scene, CPU, TINY_BUDGET)
    assert 0 < row["mfu"] < 1.5 and 0 <= row["non_mlp_share"] < 1 and row["peak_mem_bytes"] > 0
    assert row["samples_per_s"] > 0 and row["seed_pipeline_samples_per_s"] > 0 and row["speedup_vs_seed_pipeline"] > 0


class HalfSecondClock:
    """A Stopwatch for which every timed block takes 0.5 s."""

    def __init__(self, device, elapsed=0.0):
        self.elapsed = elapsed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.elapsed += 0.5


def test_row_arithmetic_from_known_times_by_hand(small_config, small_scene, monkeypatch):
    # Training rounds take 0.5 s, the matmuls 0.25 s, the seed pipeline's step 2 s: every rate follows by hand.
    matmul_calls, seed_calls = [], []
    monkeypatch.setattr(bench, "Stopwatch", HalfSecondClock)
    monkeypatch.setattr(
        bench,
        "matmul_seconds",
        lambda shapes, dtype, device, repeats: matmul_calls.append((shapes, dtype, repeats)) or 0.25,
    )
    monkeypatch.setattr(bench.SeedPipeline, "seconds", lambda self, steps: seed_calls.append(steps) or 2.0)
    row = bench.bench_experiment(small_config, small_scene, CPU, TINY_BUDGET)

    # The small config's layers: encoded point 3 + 3*2*4 = 27, view direction 3 + 3*2*2 = 15, skip after layers.1.
    per_field = [(27, 32), (32, 32), (32 + 27, 32), (32, 1), (32, 32), (32 + 15, 16), (16, 3)]
    macs = sum(n_in * n_out for n_in, n_out in per_field)
    assert macs == 5632
    # 64 rays: 8 coarse samples each, then 8 + 8 fine.
    assert matmul_calls == [([(64 * 8, *s) for s in per_field] + [(64 * 16, *s) for s in per_field], torch.float32, 2)]
    assert seed_calls == [1]
    assert {
        k: row[k]
        for k in (
            "samples_per_ray",
            "timed_steps",
            "samples_per_s",
            "rays_per_s",
            "flops_per_sample",
            "model_flops_per_s",
            "matmul_flops_per_s",
            "mfu",
            "seed_pipeline_samples_per_s",
            "speedup_vs_seed_pipeline",
            "precision",
            "matmul_dtype",
        )
    } == {
        # 2 timed steps of 64 rays x 24 samples in 0.5 s.
        "samples_per_ray": 24,
        "timed_steps": 2,
        "samples_per_s": 64 * 24 * 2 / 0.5,
        "rays_per_s": 64 * 2 / 0.5,
        "flops_per_sample": 3 * 2 * macs,
        "model_flops_per_s": 6144 * 3 * 2 * macs,
        # The matmuls of the same 2 steps in half the time: twice the rate, so MFU 0.5.
        "matmul_flops_per_s": 3 * 2 * macs * 64 * 24 * 2 / 0.25,
        "mfu": 0.5,
        "seed_pipeline_samples_per_s": 8 * 8 * 8 / 2.0,  # one whole 8x8 image of 8 coarse samples in 2 s
        "speedup_vs_seed_pipeline": 6144 / 256,
        "precision": "fp32",
        "matmul_dtype": "float32",
    }


def test_seed_views_are_encoded_stratified_samples_of_whole_images(small_scene):
    field = RadianceField(depth=2, width=16, pos_freqs=4, dir_freqs=2, use_viewdirs=True)
    item = bench.SeedViews(small_scene, field, n_samples=5)[0]
    pixels = small_scene.height * small_scene.width
    assert item["encoded"].shape == (pixels, 5, field.pos_encoding.out_dim)
    assert item["encoded_dirs"].shape == (pixels, 5, field.dir_encoding.out_dim)
    bins = torch.linspace(small_scene.near, small_scene.far, 6)
    assert ((item["t"] >= bins[:-1]) & (item["t"] < bins[1:])).all()  # one sample in each bin
    assert torch.equal(item["rgb"], torch.from_numpy(small_scene.images[small_scene.i_train[0]]).reshape(-1, 3))


def mlp_and_compositing_step(field: RadianceField, points: torch.Tensor):
    """A training step of step(i)'s form: the field's MLP (in its profiler range), then a cumulative product of
    its densities outside the MLP, as compositing takes one, and the backward pass through both."""

    def step(_):
        rgb, density = field(points, points)
        transmittance = torch.cumprod(1.0 - density, dim=0)
        (rgb.sum() + transmittance.sum()).backward()

    return step


def test_non_mlp_share_from_known_event_times(monkeypatch):
    # A real profile of two steps with known times per event (in microseconds), so load cannot move the share.
    field = RadianceField(depth=2, width=16, pos_freqs=4, use_viewdirs=False)
    assert sum(isinstance(m, torch.nn.Linear) for m in field.modules()) == 3 and len(list(field.parameters())) == 6
    times = {
        bench.STEP_RANGE: 1000,  # the whole step, time outside any op (a data loader's wait, say) included
        MLP_RANGE: 100,  # the MLP's forward ops
        bench.BACKWARD_PREFIX + "AddmmBackward0": 10,  # each Linear layer's backward node
        bench.ACCUMULATE_GRAD: 1,  # each weight's and bias's gradient accumulation
        bench.BACKWARD_PREFIX + "CumprodBackward0": 500,  # a backward node outside the MLP: not the MLP's time
    }
    monkeypatch.setattr(bench, "event_duration", lambda event, device: times.get(event.name, 0))
    share = bench.non_mlp_share(mlp_and_compositing_step(field, torch.rand(64, 3)), 2, CPU)
    assert share == pytest.approx(1 - 2 * (100 + 3 * 10 + 6 * 1) / (2 * 1000))


def test_event_times_are_kernel_times_on_cuda_and_cpu_times_elsewhere():
    event = SimpleNamespace(cpu_time_total=7.0, device_time_total=3.0)
    assert bench.event_duration(event, torch.device("cuda")) == 3.0
    assert bench.event_duration(event, CPU) == 7.0


def test_a_real_profile_gives_a_share_between_0_and_1():
    # Measured times depend on the machine's load: only the bounds hold on every machine.
    field = RadianceField(depth=2, width=16, pos_freqs=4, use_viewdirs=False)
    assert 0 <= bench.non_mlp_share(mlp_and_compositing_step(field, torch.rand(64, 3)), 2, CPU) < 1


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_main_writes_the_rows_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    scene_path = write_scene(tmp_path / "scene.npz")
    bench.main(
        [
            "--quick",
            "--experiments",
            "exp1,exp2",
            "--data",
            str(scene_path),
            "--out",
            str(out),
            "--warmup",
            "1",
            "--steps",
            "1",
            "--seed-steps",
            "1",
            "--rounds",
            "1",
            "--profile-steps",
            "1",
        ]
    )
    rows = json.loads(out.read_text())
    assert [r["experiment"] for r in rows] == ["exp1", "exp2"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16-amp"]
    assert rows[0]["samples_per_ray"] == 16 + 16 + 32 and rows[0]["batch_rays"] == 256
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["experiment", "precision"] and table[1].startswith("exp1")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--experiments", "exp1,exp9"], "error: --experiments takes a comma-separated list from"),
        (["--steps", "0"], "error: --steps, --seed-steps, --rounds and --profile-steps must be at least 1"),
    ],
)
def test_bad_options_are_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(message)
