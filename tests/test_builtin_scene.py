"""The built-in scene: a valid, deterministic, converged, non-trivial render, written whole."""

import numpy as np
import pytest
import torch

from builtin_scene import (
    FOCAL,
    IMAGE_SIZE,
    LIGHT_DIR,
    N_SAMPLES,
    N_VIEWS,
    builtin_poses,
    render_rays,
    render_view,
    scene_radiance,
)
from camera import get_rays


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Render on one thread, as write_builtin_scene does: torch's threads stall when another process
    holds one of the two cores, which makes these renders 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scene(builtin_scene):
    """The arrays of the built-in scene that conftest wrote (once per session) into a temporary folder."""
    with np.load(builtin_scene) as arrays:
        return {key: arrays[key] for key in arrays.files}


def test_builtin_scene_has_the_scene_npz_keys_shapes_and_ranges(scene):
    n, h, w = N_VIEWS, IMAGE_SIZE, IMAGE_SIZE
    assert scene["images"].shape == (n, h, w, 3) and scene["images"].dtype == np.float32
    assert scene["poses"].shape == (n, 4, 4) and scene["poses"].dtype == np.float32
    assert scene["depths"].shape == (n, h, w) and scene["depths"].dtype == np.float32
    assert np.isfinite(scene["images"]).all() and np.isfinite(scene["depths"]).all()
    assert scene["images"].min() >= 0.0 and scene["images"].max() <= 1.0
    assert scene["focal"].shape == () and scene["focal"] == np.float32(138.88887)
    assert (scene["near"], scene["far"]) == (2.0, 6.0)
    assert scene["white_bkgd"].dtype == np.bool_ and scene["white_bkgd"]
    # Depth is a convex combination of sample positions (all inside [near, far]) and far.
    assert scene["depths"].min() >= scene["near"] and scene["depths"].max() <= scene["far"]


def test_builtin_split_is_disjoint_covering_and_spread_over_the_hemisphere(scene):
    i_train, i_test = scene["i_train"], scene["i_test"]
    assert i_train.dtype == i_test.dtype == np.int64
    assert (len(i_train), len(i_test)) == (90, 10)
    assert not set(i_train) & set(i_test)
    assert sorted(set(i_train) | set(i_test)) == list(range(N_VIEWS))
    positions = scene["poses"][:, :3, 3]
    assert np.allclose(np.linalg.norm(positions, axis=-1), 4.0, atol=1e-4)
    # Every camera looks at the origin (down its -z axis).
    assert np.allclose(-scene["poses"][:, :3, 2], -positions / 4.0, atol=1e-4)
    elevation = np.degrees(np.arcsin(positions[:, 2] / 4.0))
    assert elevation.min() > 9.9 and elevation.max() < 80.1
    test_elevation, test_azimuth = elevation[i_test], np.degrees(np.arctan2(positions[i_test, 1], positions[i_test, 0]))
    assert test_elevation.max() - test_elevation.min() > 50.0
    assert len(np.unique(np.floor((test_azimuth + 180.0) / 90.0))) == 4  # test views in all four quadrants


def test_builtin_scene_is_not_trivial(scene):
    images, depths = scene["images"], scene["depths"]
    background = depths >= scene["far"] - 1e-3
    assert 0.3 < background.mean() < 0.8
    assert np.allclose(images[background], 1.0, atol=1e-3)  # white background
    r, g, b = images[~background].T
    # Each object's colour covers a real share of the foreground: red sphere, blue box, green torus,
    # yellow cylinder, purple blob, grey plate.
    colour_shares = {
        "red": (r > 0.5) & (g < 0.3) & (b < 0.3),
        "blue": (b > 0.5) & (r < 0.3),
        "green": (g > 0.4) & (r < 0.3) & (b < 0.4),
        "yellow": (r > 0.5) & (g > 0.4) & (b < 0.25),
        "purple": (r > 0.4) & (b > 0.5) & (g < 0.4),
        "grey": (np.abs(r - g) < 0.02) & (np.abs(g - b) < 0.02),
    }
    for name, mask in colour_shares.items():
        assert mask.mean() > 0.01, name
    assert depths[~background].std() > 0.3


def test_builtin_scene_is_deterministic(scene):
    # Rendering some views again gives the very same bits as the file.
    poses = builtin_poses()
    assert np.array_equal(poses, scene["poses"])
    with torch.inference_mode():
        for view in (0, 42, 99):
            rgb, depth = render_view(poses[view])
            assert np.array_equal(rgb.numpy(), scene["images"][view])
            assert np.array_equal(depth.numpy(), scene["depths"][view])


def test_quadrature_has_converged():
    """Doubling the samples per ray barely changes any pixel, silhouettes and highlights included."""
    poses = builtin_poses()
    with torch.inference_mode():
        for view in (7, 93):  # one low and one high camera
            origins, dirs = get_rays(100, 100, FOCAL, torch.from_numpy(poses[view]))
            origins, dirs = origins[::2, ::2].reshape(-1, 3), dirs[::2, ::2].reshape(-1, 3)
            rgb, depth, acc = render_rays(origins, dirs)
            rgb_fine, depth_fine, acc_fine = render_rays(origins, dirs, n_samples=2 * N_SAMPLES)
            assert (acc > 0.5).float().mean() > 0.2  # the rays do hit things
            assert (rgb - rgb_fine).abs().max() < 1e-2
            assert (acc - acc_fine).abs().max() < 1e-2
            assert (depth - depth_fine).abs().max() < 1e-2


def test_colour_depends_on_the_view_direction():
    # A point on the glossy sphere's surface, where its normal is the halfway vector between the
    # light and a camera straight above: that camera sees the full highlight, a camera at the side does not.
    light = torch.tensor(LIGHT_DIR)
    halfway = torch.nn.functional.normalize(light + torch.tensor([0.0, 0.0, 1.0]), dim=0)
    point = torch.tensor([0.42, 0.30, 0.32]) + 0.32 * halfway
    from_above, from_side = torch.tensor([0.0, 0.0, -1.0]), torch.tensor([-1.0, 0.0, 0.0])
    colours = scene_radiance(torch.stack([point, point]), torch.stack([from_above, from_side]))
    assert (colours[0] - colours[1]).abs().max() > 0.3
    matte = scene_radiance(torch.stack([point, point]), torch.stack([from_above, from_side]), specular=False)
    assert torch.allclose(matte[0], matte[1])


def test_rendered_highlight_is_the_only_view_dependent_part():
    poses = builtin_poses()
    with torch.inference_mode():
        for view in (0, 99):
            glossy, _ = render_view(poses[view])
            matte, _ = render_view(poses[view], specular=False)
            changed = (glossy - matte).abs().amax(-1) > 1e-3
            assert (glossy - matte).abs().max() > 0.2
            assert 0.0 < changed.float().mean() < 0.05  # a highlight, not the whole image


def test_builtin_scene_is_written_whole_with_no_temporary_file_left(builtin_scene):
    # np.savez given a path would write "<temp>.npz" beside an empty file and rename the empty one.
    assert [p.name for p in builtin_scene.parent.iterdir()] == ["builtin.npz"]
