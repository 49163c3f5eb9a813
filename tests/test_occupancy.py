"""Empty-space skipping (nerf.OccupancyGrid): with every cell occupied nothing changes, bit for bit;
samples in empty cells never reach an MLP; early stopping; nerfacc's update rule; equal grids on every
DDP rank; a bit-identical resume; and what summary.json and layers.json report of the skipping."""

import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import ddp_rank, write_scene
from test_bitnerf_ddp import free_port, plain

import bitnerf
import command_line
import configs
import nerf
import train
from camera import get_rays
from dataset import RaySampler, load_scene, scene_box
from evaluation import Evaluation
from nerf import NeRF, OccupancyGrid, render_image
from step import train_step
from utils import UserError


def grid_config(config, resolution: int = 8):
    return replace(config, occupancy_grid=True, occupancy_resolution=resolution)


@pytest.mark.parametrize("model_name", ["nerf", "bitnerf"])
def test_with_every_cell_occupied_renders_and_gradients_equal_the_model_without_a_grid(tiny_config, model_name):
    config = replace(tiny_config, model=model_name)
    scene = load_scene(config.data)
    models = []
    for occupancy_grid in (False, True):
        torch.manual_seed(0)
        models.append(bitnerf.build_model(replace(grid_config(config), occupancy_grid=occupancy_grid), scene, "cpu"))
    dense, skipping = models
    skipping.early_stop = 0.0  # early stopping changes renders by design (tested below)
    batch = RaySampler(scene, torch.device("cpu"), 64, 0, config.jitter_per_ray).batch(0)
    outputs = []
    for model in models:
        out = model(batch.origins, batch.dirs, batch.jitter)
        (out["rgb"].square().mean() + out["rgb_coarse"].square().mean()).backward()
        outputs.append(out)
    for key in ("rgb", "rgb_coarse", "depth", "weights"):
        assert torch.equal(outputs[0][key], outputs[1][key]), key
    # The box of every camera's frustum holds every training sample: none was skipped.
    assert (outputs[1]["samples_coarse"] == config.n_coarse).all()
    assert (outputs[1]["samples_fine"] == config.n_coarse + config.n_fine).all()
    for (name, p), q in zip(dense.named_parameters(), skipping.parameters()):
        assert torch.equal(plain(p.grad), plain(q.grad)), name

    evaluation = Evaluation.of(config, scene, torch.device("cpu"))
    origins, dirs = evaluation.rays(scene.i_test[0])
    renders = [render_image(model.eval(), origins[:2], dirs[:2], chunk=64) for model in models]
    assert torch.equal(renders[0]["rgb"], renders[1]["rgb"]) and torch.equal(renders[0]["depth"], renders[1]["depth"])


def wall_model(**kwargs) -> tuple[NeRF, torch.Tensor, torch.Tensor]:
    """A model whose grid (over [-2, 2]^3, 4 cells a side) is occupied only for x < 0, and rays along +x from
    x = -5 with near 2, far 6: their coarse samples (eval: bin middles 2.25, 2.75, ..., 5.75) lie at
    x = -2.75, ..., 0.75, of which the 4 at -1.75, -1.25, -0.75, -0.25 are in occupied cells."""
    torch.manual_seed(0)
    grid = OccupancyGrid(torch.tensor([[-2.0] * 3, [2.0] * 3]), resolution=4)
    occupied = torch.zeros(4, 4, 4, dtype=torch.bool)
    occupied[:2] = True  # cells with x index 0, 1: x in [-2, 0)
    grid.occupied.copy_(occupied.reshape(-1))
    model = NeRF(
        2.0,
        6.0,
        False,
        n_coarse=8,
        n_fine=8,
        depth=2,
        width=16,
        pos_freqs=2,
        use_viewdirs=False,
        occupancy=grid,
        **kwargs,
    ).eval()
    origins = torch.tensor([[-5.0, 0.1, -0.3]]).repeat(6, 1) + torch.linspace(0, 0.5, 6)[:, None] * torch.tensor(
        [0, 1, 1.0]
    )
    dirs = torch.tensor([[1.0, 0.0, 0.0]]).repeat(6, 1)
    return model, origins, dirs


def test_samples_in_empty_cells_never_reach_the_mlp():
    model, origins, dirs = wall_model(early_stop=0.0)
    queried = {"coarse": [], "fine": []}
    for name in queried:
        getattr(model, name).register_forward_hook(lambda m, args, out, name=name: queried[name].append(args[0]))
    with torch.no_grad():
        out = model(origins, dirs)
    coarse_points = torch.cat(queried["coarse"])
    # 4 occupied samples of 8 on each of 6 rays: 24 of 48, a multiple of the bucket (48 / 8), so no padding.
    assert coarse_points.shape == (24, 3)
    assert (out["samples_coarse"] == 4).all()
    for points in queried.values():
        points = torch.cat(points)
        assert ((points[:, 0] >= -2.0) & (points[:, 0] < 0.0)).all()
    assert (out["samples_fine"] <= 16).all() and (out["samples_fine"] >= 4).all()
    # What was not evaluated has no density: the weights of samples outside the occupied cells are zero.
    t = torch.linspace(2.25, 5.75, 8)
    empty = (-5.0 + t < -2.0) | (-5.0 + t >= 0.0)
    model.fine = None
    with torch.no_grad():
        weights = model(origins, dirs)["weights"]
    assert (weights[:, empty] == 0).all() and (weights[:, ~empty] > 0).all()


def test_a_padded_call_queries_only_occupied_samples_and_drops_the_padding(monkeypatch):
    assert nerf.bucket_size(13, 48) == 18 and nerf.bucket_size(0, 48) == 6 and nerf.bucket_size(47, 48) == 48
    model, origins, dirs = wall_model(early_stop=0.0)
    origins, dirs = origins[:5], dirs[:5]  # 5 rays of 8 samples: buckets of 5
    occupied = model.occupancy.occupied.reshape(4, 4, 4)
    occupied[1, :, 2:] = False  # x in [-1, 0) stays occupied only for z < 0: rays 0-2 (z = -0.3, -0.2, -0.1)
    queried = []
    model.coarse.register_forward_hook(lambda m, args, out: queried.append(args[0]))
    model.fine = None
    with torch.no_grad():
        out = model(origins, dirs)
        monkeypatch.setattr(nerf, "BUCKETS", 40)  # buckets of one sample: no padding
        unpadded = model(origins, dirs)
    assert out["samples_coarse"].tolist() == [4, 4, 4, 2, 2]
    points = queried[0]
    assert points.shape == (20, 3) and queried[1].shape == (16, 3)  # 16 occupied samples, padded to 4 buckets
    assert (points[:, 0] < -1.0).logical_or((points[:, 0] < 0.0) & (points[:, 2] < 0.0)).all()
    assert torch.equal(points[16:], points[:1].expand(4, 3))
    assert torch.allclose(out["rgb"], unpadded["rgb"], atol=1e-6) and torch.allclose(out["depth"], unpadded["depth"])


def test_a_field_sees_only_bucketed_sample_counts_whatever_the_rays():
    model, origins, dirs = wall_model()
    model.train()
    rows = {"coarse": set(), "fine": set()}
    for name in rows:
        getattr(model, name).register_forward_hook(lambda m, args, out, name=name: rows[name].add(args[0].shape[0]))
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):  # rays at random heights and angles cross the occupied half for different lengths
        tilted = dirs + 0.3 * torch.randn(dirs.shape, generator=generator)
        model(origins + torch.randn(origins.shape, generator=generator), tilted, torch.rand(6, 16, generator=generator))
    assert all(n % 6 == 0 for n in rows["coarse"]) and max(rows["coarse"]) <= 48  # eighths of 6 rays x 8 samples
    assert all(n % 12 == 0 for n in rows["fine"]) and max(rows["fine"]) <= 96
    assert len(rows["coarse"]) > 1 and len(rows["fine"]) > 1


def test_layers_json_and_the_summary_count_the_samples_the_grid_let_through(tmp_path):
    model, origins, dirs = wall_model(early_stop=0.0)
    config = replace(configs.QUICK, n_coarse=8, n_fine=8, chunk=6)
    evaluation = Evaluation(load_scene(str(write_scene(tmp_path / "scene.npz"))), config, torch.device("cpu"), None)
    results = [evaluation.render(model, origins[None], dirs[None])]  # one 1x6 "view" of the wall rays
    fine_per_ray = results[0]["samples_fine"].double().mean().item()
    census = {layer["name"]: layer for layer in evaluation.layers(model, results)["layers"]}
    # 4 of 8 coarse samples per ray (by hand, wall_model); the fine pass's count as rendered.
    assert census["coarse.layers.1"]["samples_per_frame"] == 640_000 * 4
    assert census["fine.output_head"]["samples_per_frame"] == round(640_000 * fine_per_ray)
    model.occupancy.trained_samples.copy_(torch.tensor([[300, 400], [100, 800]]))
    assert evaluation.skipped_samples(model, results) == {
        "skipped_train_coarse": 0.25,
        "skipped_render_coarse": 0.5,
        "skipped_train_fine": 0.875,
        "skipped_render_fine": round(1 - fine_per_ray / 16, 4),
    }
    with pytest.raises(ValueError):
        evaluation.layers(model)  # a grid's samples are measured, never assumed


def test_rendering_stops_a_ray_once_it_is_opaque_and_barely_changes_the_render():
    model, origins, dirs = wall_model()
    model.occupancy.occupied.fill_(True)
    model.occupancy.aabb.copy_(torch.tensor([[-10.0] * 3, [10.0] * 3]))
    with torch.no_grad():
        for field in (model.coarse, model.fine):
            field.output_head.bias[3] = 20.0  # density about 19 everywhere: opaque after the first samples
        stopped = model(origins, dirs)
        model.early_stop = 0.0
        full = model(origins, dirs)
    # The first of the 4 runs along the ray (2 coarse samples of 0.5 at density 19) leaves T = e^-19 < 1e-4.
    assert (stopped["samples_coarse"] == 2).all() and (full["samples_coarse"] == 8).all()
    assert (stopped["samples_fine"] < full["samples_fine"]).all()
    assert torch.allclose(stopped["rgb"], full["rgb"], atol=1e-4) and torch.allclose(
        stopped["depth"], full["depth"], atol=1e-3
    )


def test_an_update_follows_nerfaccs_rule_by_hand():
    grid = OccupancyGrid(torch.tensor([[0.0] * 3, [4.0] * 3]), resolution=4, seed=3)
    centres = []

    def density(points):  # 2 in the cells with x < 1 (x index 0), nothing elsewhere
        centres.append(points)
        return torch.where(points[:, 0] < 1.0, 2.0, 0.0)

    grid.update(5, density, step_size=0.5)  # not a multiple of 16: no update
    assert not centres and grid.occupied.all()
    grid.update(0, density, step_size=0.5)  # warm-up: every cell, at one point inside it
    points = centres[0]
    assert points.shape == (64, 3)
    cells = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert ((points >= cells) & (points < cells + 1)).all()
    alpha = 1 - np.exp(-2.0 * 0.5)
    occupied = grid.occupied.reshape(4, 4, 4)
    assert occupied[0].all() and not occupied[1:].any()
    assert torch.allclose(grid.ema.reshape(4, 4, 4)[0], torch.tensor(alpha, dtype=torch.float32))
    # Later (nerfacc's warm-up of 256 steps is over): 16 uniform cells plus the 16 occupied ones, so every
    # occupied cell is visited and, its density gone, decays by 0.95; the threshold is min(0.01, mean).
    grid.update(256, lambda points: torch.zeros(points.shape[0]), step_size=0.5)
    assert torch.allclose(grid.ema.reshape(4, 4, 4)[0], torch.tensor(0.95 * alpha, dtype=torch.float32))
    assert torch.equal(grid.occupied.reshape(4, 4, 4), occupied)
    grid.ema.reshape(4, 4, 4)[0, 0, 0] = 0.005  # occupied until its next visit: then below min(0.01, mean)
    grid.update(512, lambda points: torch.zeros(points.shape[0]), step_size=0.5)
    assert not grid.occupied.reshape(4, 4, 4)[0, 0, 0] and grid.occupied.reshape(4, 4, 4)[0].sum() == 15


def test_the_scene_box_is_the_smallest_holding_every_camera_frustum_and_blender_scenes_use_nerfaccs(builtin_scene):
    scene = load_scene(str(builtin_scene))
    lower, upper = scene_box(scene)
    points = []
    for pose in scene.poses:
        origins, dirs = get_rays(scene.height, scene.width, scene.focal, torch.from_numpy(pose))
        points += [(origins + t * dirs).reshape(-1, 3) for t in (scene.near, scene.far)]
    points = torch.cat(points).numpy()
    # Every sample inside, and the box no larger than the samples' own box by more than a pixel at far.
    pixel = scene.far / scene.focal
    assert (points >= lower - 1e-5).all() and (points <= upper + 1e-5).all()
    assert (points.min(0) - lower < pixel).all() and (upper - points.max(0) < pixel).all()
    blender = replace(scene, aabb=np.array([[-1.5] * 3, [1.5] * 3], dtype=np.float32))
    assert np.array_equal(scene_box(blender), blender.aabb)


def train_with_a_grid(rank: int, port: int, config, out_dir: str) -> None:
    """17 steps on one of 2 ranks with a grid update at step 0 (every cell) and 16 (after a warm-up of 16
    steps, a random subset); saves this rank's grid."""
    nerf.GRID_WARMUP_STEPS = 16
    with ddp_rank(rank, port, config) as (model, optimization, sampler, step_model):
        for step in range(17):
            model.update_occupancy(step)
            train_step(step_model, sampler.batch(step), optimization, config, contextlib.nullcontext)
        torch.save({"ema": model.occupancy.ema, "occupied": model.occupancy.occupied}, f"{out_dir}/grid{rank}.pt")


def small_scene_config(tiny_config, tmp_path):
    """tiny_config with a grid on a 6-view 16x16 scene, so that its final evaluation is quick."""
    return grid_config(replace(tiny_config, data=str(write_scene(tmp_path / "scene.npz", n=6, size=16)), batch_rays=64))


def test_every_ddp_rank_holds_the_same_grid(tiny_config, tmp_path):
    config = small_scene_config(tiny_config, tmp_path)
    mp.spawn(train_with_a_grid, args=(free_port(), config, str(tmp_path)), nprocs=2)
    grids = [torch.load(tmp_path / f"grid{rank}.pt") for rank in range(2)]
    assert grids[0]["ema"].gt(0).all()  # updated (every cell had a density)
    assert torch.equal(grids[0]["ema"], grids[1]["ema"]) and torch.equal(grids[0]["occupied"], grids[1]["occupied"])


def test_resume_with_a_grid_is_bit_identical_and_the_run_reports_its_skipping(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(nerf, "GRID_WARMUP_STEPS", 16)  # so that the update at step 32 draws a random subset
    config = replace(small_scene_config(tiny_config, tmp_path), ckpt_every=10, steps=40, eval_every=20, video_frames=1)
    summary = train.run(replace(config, name="straight"))

    with monkeypatch.context() as patch:  # Ctrl-C right before step 17 (its grid update is a no-op)
        update = NeRF.update_occupancy
        patch.setattr(
            NeRF, "update_occupancy", lambda model, step: update(model, step) if step != 17 else exit_on(step)
        )
        with pytest.raises(SystemExit):
            train.run(replace(config, name="resumed"))
    train.run(replace(config, name="resumed"), resume=True)
    straight = torch.load(Path(config.out) / "straight" / "checkpoint.pt", weights_only=False)["model"]
    resumed = torch.load(Path(config.out) / "resumed" / "checkpoint.pt", weights_only=False)["model"]
    assert {"occupancy.ema", "occupancy.occupied", "occupancy.trained_samples"} <= straight.keys()
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)

    # 40 steps of 64 rays, 16 coarse samples each, counted in training.
    assert straight["occupancy.trained_samples"][:, 1].tolist() == [40 * 64 * 16, 40 * 64 * 32]
    for kind in ("train", "render"):
        for name in ("coarse", "fine"):
            assert 0.0 <= summary[f"skipped_{kind}_{name}"] < 1.0


def exit_on(step: int):
    raise KeyboardInterrupt(f"step {step}")


def test_the_grid_is_the_same_in_every_experiment_and_a_flag_turns_it_off():
    for name in configs.AXES:
        quick, _ = command_line.parse_args(name, ["--quick"])  # the quick preset keeps a 32^3 grid in every experiment
        assert (quick.occupancy_grid, quick.occupancy_resolution, quick.occupancy_decay) == (True, 32, 0.8)
        assert not command_line.parse_args(name, ["--quick", "--no-occupancy-grid"])[0].occupancy_grid
        config, _ = command_line.parse_args(name, ["--occupancy-grid", "--occupancy-resolution", "64"])
        assert config.occupancy_grid and config.occupancy_resolution == 64
        assert not command_line.parse_args(name, [])[0].occupancy_grid  # the full preset: off until measured on a GPU


def test_the_decay_of_a_visited_cell_is_a_setting():
    grid = OccupancyGrid(torch.tensor([[0.0] * 3, [4.0] * 3]), resolution=4, seed=3, decay=0.5)
    grid.update(0, lambda points: torch.where(points[:, 0] < 1.0, 2.0, 0.0), step_size=0.5)
    grid.update(256, lambda points: torch.zeros(points.shape[0]), step_size=0.5)  # visits every occupied cell
    alpha = 1 - np.exp(-2.0 * 0.5)
    assert torch.allclose(grid.ema.reshape(4, 4, 4)[0], torch.tensor(0.5 * alpha, dtype=torch.float32))


def test_the_occupancy_threshold_is_a_setting_and_the_mean_still_caps_it():
    box = torch.tensor([[0.0] * 3, [4.0] * 3])

    # Two slabs of cells: alpha 1 - exp(-0.1) = 0.095 where x < 1, 1 - exp(-1) = 0.63 where 1 <= x < 2.
    def density(points):
        return torch.where(points[:, 0] < 1.0, 0.2, torch.where(points[:, 0] < 2.0, 2.0, 0.0))

    for threshold, slabs in ((0.01, [True, True]), (0.2, [False, True]), (0.9, [False, True])):
        grid = OccupancyGrid(box, resolution=4, seed=3, threshold=threshold)
        grid.update(0, density, step_size=0.5)
        occupied = grid.occupied.reshape(4, 4, 4)
        # 0.9 is above every cell's alpha: the mean of the positive ones (0.36) decides instead.
        assert [bool(occupied[0].all()), bool(occupied[1].all())] == slabs and not occupied[2:].any()
    with pytest.raises(UserError, match="occupancy_threshold is an opacity"):
        configs.ExperimentConfig(occupancy_threshold=0.0)


def test_the_model_file_keeps_the_grid_s_cells_packed_and_leaves_its_training_state_out():
    model, origins, dirs = wall_model()
    model.occupancy.ema.fill_(0.5)
    state = nerf.deployable_state(model)
    assert not set(nerf.GRID_TRAINING_STATE) & set(state)
    assert state["occupancy.occupied"].dtype == torch.uint8 and state["occupancy.occupied"].numel() == 64 // 8
    fresh, _, _ = wall_model()
    fresh.occupancy.occupied.fill_(True)
    nerf.load_deployable_state(fresh, state)
    assert torch.equal(fresh.occupancy.occupied, model.occupancy.occupied)
    with torch.no_grad():
        assert torch.equal(fresh(origins, dirs)["rgb"], model(origins, dirs)["rgb"])
    with pytest.raises(RuntimeError, match="does not fit the model"):
        nerf.load_deployable_state(fresh, {k: v for k, v in state.items() if k != "occupancy.occupied"})
