import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import write_scene

from camera import get_rays, pose_spherical
from dataset import RaySampler, load_scene
from utils import UserError


def test_rays_follow_the_nerf_pinhole_convention():
    c2w = torch.from_numpy(pose_spherical(30.0, -45.0, 4.0))
    origins, dirs = get_rays(6, 8, 10.0, c2w)
    assert origins.shape == dirs.shape == (6, 8, 3)
    assert torch.allclose(origins, c2w[:3, 3].expand(6, 8, 3))
    # Pixel (W/2, H/2) looks straight down the camera's -z axis; +i goes right (+x), +j goes down (-y).
    assert torch.allclose(dirs[3, 4], -c2w[:3, 2], atol=1e-6)
    assert torch.allclose(dirs[3, 5] - dirs[3, 4], c2w[:3, 0] / 10.0, atol=1e-6)
    assert torch.allclose(dirs[4, 4] - dirs[3, 4], -c2w[:3, 1] / 10.0, atol=1e-6)


def test_rays_of_a_camera_at_the_world_origin_by_hand():
    # Identity c2w: camera space is world space. Pixel (i, j) of a 2x4 image, focal 2, looks along
    # ((i - 2) / 2, -(j - 1) / 2, -1).
    origins, dirs = get_rays(2, 4, 2.0, torch.eye(4))
    assert torch.equal(origins, torch.zeros(2, 4, 3))
    assert dirs.tolist() == [
        [[-1.0, 0.5, -1.0], [-0.5, 0.5, -1.0], [0.0, 0.5, -1.0], [0.5, 0.5, -1.0]],
        [[-1.0, 0.0, -1.0], [-0.5, 0.0, -1.0], [0.0, 0.0, -1.0], [0.5, 0.0, -1.0]],
    ]
    # A camera moved to (1, 2, 3) and turned 90 degrees about z: x -> y, y -> -x.
    c2w = torch.tensor([[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    origins, dirs = get_rays(2, 4, 2.0, c2w)
    assert origins[1, 3].tolist() == [1.0, 2.0, 3.0]
    assert dirs[0, 0].tolist() == [-0.5, -1.0, -1.0]  # camera (-1, 0.5, -1) -> world (-0.5, -1, -1)


def test_npz_defaults_and_optional_keys(tmp_path):
    scene = load_scene(str(write_scene(tmp_path / "plain.npz", n=10)))
    assert list(scene.i_train) == list(range(9)) and list(scene.i_test) == [9]
    assert scene.i_val.size == 0 and scene.monitored_views()[0] == "test"  # no val split: monitor test views
    assert (scene.near, scene.far, scene.white_bkgd, scene.depths) == (2.0, 6.0, False, None)
    scene = load_scene(
        str(
            write_scene(
                tmp_path / "full.npz",
                n=4,
                i_test=np.array([0, 2]),
                near=np.float32(1.0),
                far=np.float32(3.0),
                white_bkgd=True,
                depths=np.ones((4, 8, 8)),
            )
        )
    )
    assert list(scene.i_train) == [1, 3] and list(scene.i_test) == [0, 2]
    assert (scene.near, scene.far, scene.white_bkgd, scene.depths.shape) == (1.0, 3.0, True, (4, 8, 8))
    # i_val: left out of the default training views, and what the periodic evaluation renders.
    scene = load_scene(str(write_scene(tmp_path / "val.npz", n=6, i_test=np.array([5]), i_val=np.array([1, 4]))))
    assert (list(scene.i_train), list(scene.i_val), list(scene.i_test)) == ([0, 2, 3], [1, 4], [5])
    assert scene.monitored_views()[0] == "val" and list(scene.monitored_views()[1]) == [1, 4]
    scene = load_scene(str(write_scene(tmp_path / "val_only.npz", n=12, i_val=np.array([0, 1]))))
    assert (list(scene.i_train), list(scene.i_val), list(scene.i_test)) == (list(range(2, 11)), [0, 1], [11])


def test_val_views_hold_out_evenly_spaced_training_views(tmp_path):
    path = str(write_scene(tmp_path / "plain.npz", n=11))
    scene = load_scene(path, val_views=3)  # training views 0..9 (view 10 tests): validate on 0, 4 or 5, 9
    assert list(scene.i_val) == [0, 4, 9] or list(scene.i_val) == [0, 5, 9]
    assert list(scene.i_train) == [v for v in range(10) if v not in scene.i_val] and list(scene.i_test) == [10]
    assert scene.monitored_views()[0] == "val"
    assert list(load_scene(path).i_train) == list(range(10))  # 0: the split as it was
    with pytest.raises(UserError, match="between 1 and 9"):
        load_scene(path, val_views=10)
    with pytest.raises(UserError, match="validation views of its own"):
        load_scene(str(write_scene(tmp_path / "val.npz", n=6, i_val=np.array([1]))), val_views=1)


def test_builtin_scene_loads(builtin_scene):
    scene = load_scene(str(builtin_scene))
    assert scene.white_bkgd and scene.depths is not None and len(scene.i_test) > 0


def write_blender_scene(folder, size=8):
    folder.mkdir()
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        (folder / split).mkdir()
        frames = []
        for i in range(n):
            rgba = np.zeros((size, size, 4), dtype=np.uint8)
            rgba[..., 0] = 255
            rgba[: size // 2, :, 3] = 255  # top half opaque red, bottom half transparent
            iio.imwrite(folder / split / f"r_{i}.png", rgba)
            frames.append(
                {"file_path": f"./{split}/r_{i}", "transform_matrix": pose_spherical(40.0 * i, -30, 4).tolist()}
            )
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))


def test_blender_folder_composites_on_white_and_downscales(tmp_path):
    write_blender_scene(tmp_path / "lego")
    scene = load_scene(str(tmp_path / "lego"))
    assert scene.images.shape == (6, 8, 8, 3) and scene.white_bkgd
    # Train views alone train; val views validate, as in the original NeRF code.
    assert (list(scene.i_train), list(scene.i_val), list(scene.i_test)) == ([0, 1, 2], [3], [4, 5])
    assert np.allclose(scene.images[0, 0, 0], [1, 0, 0]) and np.allclose(scene.images[0, -1, 0], [1, 1, 1])
    assert scene.focal == pytest.approx(0.5 * 8 / np.tan(0.345))
    half = load_scene(str(tmp_path / "lego"), downscale=2)
    assert half.images.shape == (6, 4, 4, 3) and half.focal == pytest.approx(scene.focal / 2)


BAD_SCENES = [
    ({"images": np.zeros((5, 8, 8))}, "images must have shape"),
    ({"poses": np.zeros((5, 3, 4))}, "poses must have shape"),
    ({"images": np.full((6, 8, 8, 3), 255.0)}, "must lie in \\[0, 1\\]"),
    ({"images": np.full((6, 8, 8, 3), np.nan)}, "NaN"),
    ({"focal": np.float32(0.0)}, "focal must be a positive"),
    ({"near": 5.0, "far": 2.0}, "near < far"),
    ({"i_test": np.array([17])}, "i_test must be"),
    ({"i_val": np.array([17])}, "i_val must be"),
    (
        {"i_train": np.array([0, 1, 2]), "i_test": np.array([5]), "i_val": np.array([2, 3])},
        "i_train and i_val share 1 views \\(2\\): a val view must not be trained on",
    ),
    ({"depths": np.zeros((6, 4, 4))}, "depths must have shape"),
]


@pytest.mark.parametrize("overrides, message", BAD_SCENES)
def test_bad_scenes_raise_one_clear_user_error(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        load_scene(str(write_scene(tmp_path / "bad.npz", **overrides)))


def test_missing_corrupt_and_incomplete_files(tmp_path):
    with pytest.raises(UserError, match="no scene at"):
        load_scene(str(tmp_path / "nowhere.npz"))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(UserError, match="cannot read"):
        load_scene(str(tmp_path / "corrupt.npz"))
    np.savez(tmp_path / "partial.npz", images=np.zeros((2, 4, 4, 3)))
    with pytest.raises(UserError, match="lacks focal, poses"):
        load_scene(str(tmp_path / "partial.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Blender scene"):
        load_scene(str(tmp_path / "empty"))


def test_ray_batches_are_deterministic_and_shard_the_global_batch(tmp_path):
    scene = load_scene(str(write_scene(tmp_path / "s.npz", n=10)))
    whole = RaySampler(scene, torch.device("cpu"), 64, seed=3, jitter_samples=5)
    shards = [
        RaySampler(scene, torch.device("cpu"), 64, seed=3, jitter_samples=5, rank=r, world_size=2) for r in range(2)
    ]
    for step in (0, 5):
        batch = whole.batch(step)
        assert torch.equal(batch.rgb, whole.batch(step).rgb)
        for field in ("origins", "dirs", "rgb", "jitter"):
            assert torch.equal(getattr(batch, field), torch.cat([getattr(s.batch(step), field) for s in shards]))
    assert whole.batch(0).jitter.shape == (64, 5) and 0 <= whole.batch(0).jitter.min() < whole.batch(0).jitter.max() < 1
    assert RaySampler(scene, torch.device("cpu"), 64, seed=3).batch(0).jitter is None
    assert not torch.equal(whole.batch(0).rgb, whole.batch(1).rgb)
    # Only training views are sampled, with their pixels' colours.
    train_colours = torch.from_numpy(scene.images[scene.i_train]).reshape(-1, 3)
    assert whole.rgb.shape == train_colours.shape and torch.equal(whole.rgb, train_colours)
    # Each ray of a batch carries the colour of the pixel it goes through: find its pixel among every
    # training pixel's ray (origin and direction) and compare.
    rays = [get_rays(scene.height, scene.width, scene.focal, torch.from_numpy(scene.poses[v])) for v in scene.i_train]
    all_rays = torch.cat([torch.cat([o, d], -1).reshape(-1, 6) for o, d in rays])
    batch = whole.batch(5)
    pixel = torch.cdist(torch.cat([batch.origins, batch.dirs], -1), all_rays).argmin(-1)
    assert torch.allclose(all_rays[pixel], torch.cat([batch.origins, batch.dirs], -1))
    assert torch.equal(batch.rgb, train_colours[pixel])
    with pytest.raises(UserError, match="divisible"):
        RaySampler(scene, torch.device("cpu"), 63, seed=0, world_size=2)
