import contextlib
import json
import time
from dataclasses import replace

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
    return replace(configs.QUICK, depth=3, width=32, skips=(1,), use_viewdirs=True, pos_freqs=4, dir_freqs=2,
                   n_coarse=8, n_fine=8, batch_rays=64)


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
    monkeypatch.setattr(bench, "matmul_seconds", lambda shapes, dtype, device, repeats:
                        matmul_calls.append((shapes, dtype, repeats)) or 0.25)
    monkeypatch.setattr(bench.SeedPipeline, "seconds", lambda self, steps: seed_calls.append(steps) or 2.0)
    row = bench.bench_experiment(small_config, small_scene, CPU, TINY_BUDGET)

    # The small config's layers: encoded point 3 + 3*2*4 = 27, view direction 3 + 3*2*2 = 15, skip after layers.1.
    per_field = [(27, 32), (32, 32), (32 + 27, 32), (32, 1), (32, 32), (32 + 15, 16), (16, 3)]
    macs = sum(n_in * n_out for n_in, n_out in per_field)
    assert macs == 5632
    # 64 rays: 8 coarse samples each, then 8 + 8 fine.
    assert matmul_calls == [([(64 * 8, *s) for s in per_field] + [(64 * 16, *s) for s in per_field], torch.float32, 2)]
    assert seed_calls == [1]
    assert {k: row[k] for k in ("samples_per_ray", "timed_steps", "samples_per_s", "rays_per_s", "flops_per_sample",
                                "model_flops_per_s", "matmul_flops_per_s", "mfu", "seed_pipeline_samples_per_s",
                                "speedup_vs_seed_pipeline", "precision", "matmul_dtype")} == {
        # 2 timed steps of 64 rays x 24 samples in 0.5 s.
        "samples_per_ray": 24, "timed_steps": 2, "samples_per_s": 64 * 24 * 2 / 0.5, "rays_per_s": 64 * 2 / 0.5,
        "flops_per_sample": 3 * 2 * macs, "model_flops_per_s": 6144 * 3 * 2 * macs,
        # The matmuls of the same 2 steps in half the time: twice the rate, so MFU 0.5.
        "matmul_flops_per_s": 3 * 2 * macs * 64 * 24 * 2 / 0.25, "mfu": 0.5,
        "seed_pipeline_samples_per_s": 8 * 8 * 8 / 2.0,  # one whole 8x8 image of 8 coarse samples in 2 s
        "speedup_vs_seed_pipeline": 6144 / 256, "precision": "fp32", "matmul_dtype": "float32"}


def test_seed_views_are_encoded_stratified_samples_of_whole_images(small_scene):
    field = RadianceField(depth=2, width=16, pos_freqs=4, dir_freqs=2, use_viewdirs=True)
    item = bench.SeedViews(small_scene, field, n_samples=5)[0]
    pixels = small_scene.height * small_scene.width
    assert item["encoded"].shape == (pixels, 5, field.pos_encoding.out_dim)
    assert item["encoded_dirs"].shape == (pixels, 5, field.dir_encoding.out_dim)
    bins = torch.linspace(small_scene.near, small_scene.far, 6)
    assert ((item["t"] >= bins[:-1]) & (item["t"] < bins[1:])).all()  # one sample in each bin
    assert torch.equal(item["rgb"], torch.from_numpy(small_scene.images[small_scene.i_train[0]]).reshape(-1, 3))


def test_a_step_that_is_all_mlp_has_a_small_non_mlp_share():
    field = RadianceField(depth=4, width=64, pos_freqs=4, use_viewdirs=False)
    encoded = torch.randn(4096, field.pos_encoding.out_dim)

    def mlp_step(_):
        with torch.profiler.record_function(MLP_RANGE):
            rgb, _density = field.decode(encoded, None)
        rgb.sum().backward()

    mlp_step(0)
    # 0.5, as below: on a loaded machine the share outside the MLP grows (0.34 measured beside a training run).
    assert 0 <= bench.non_mlp_share(mlp_step, 3, CPU) < 0.5


def test_a_step_that_mostly_waits_outside_the_mlp_has_a_large_non_mlp_share():
    field = RadianceField(depth=2, width=16, pos_freqs=4, use_viewdirs=False)
    encoded = torch.randn(64, field.pos_encoding.out_dim)

    def step(_):
        time.sleep(0.3)  # data loading, say: outside the MLP, and no torch op at all
        with torch.profiler.record_function(MLP_RANGE):
            rgb, _density = field.decode(encoded, None)
        rgb.sum().backward()

    step(0)
    # The MLP takes about a millisecond, but on a loaded machine up to tens: 0.5 still tells the share
    # outside the MLP from the share inside it.
    assert bench.non_mlp_share(step, 2, CPU) > 0.5


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_main_writes_the_rows_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    scene_path = write_scene(tmp_path / "scene.npz")
    bench.main(["--quick", "--experiments", "exp1,exp2", "--data", str(scene_path), "--out", str(out),
                "--warmup", "1", "--steps", "1", "--seed-steps", "1", "--rounds", "1", "--profile-steps", "1"])
    rows = json.loads(out.read_text())
    assert [r["experiment"] for r in rows] == ["exp1", "exp2"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16-amp"]
    assert rows[0]["samples_per_ray"] == 16 + 16 + 32 and rows[0]["batch_rays"] == 256
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["experiment", "precision"] and table[1].startswith("exp1")


@pytest.mark.parametrize("argv, message", [
    (["--experiments", "exp1,exp9"], "error: --experiments takes a comma-separated list from"),
    (["--steps", "0"], "error: --steps, --seed-steps, --rounds and --profile-steps must be at least 1"),
])
def test_bad_options_are_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(message)
