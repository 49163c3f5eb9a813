"""The built-in scene (a valid, deterministic, converged, non-trivial render) and offline data setup."""

import io
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import data_setup
from utils import UserError, get_rays

REPO = Path(__file__).resolve().parents[1]


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
    n, h, w = data_setup.N_VIEWS, data_setup.IMAGE_SIZE, data_setup.IMAGE_SIZE
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
    assert sorted(set(i_train) | set(i_test)) == list(range(data_setup.N_VIEWS))
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
    poses = data_setup.builtin_poses()
    assert np.array_equal(poses, scene["poses"])
    with torch.inference_mode():
        for view in (0, 42, 99):
            rgb, depth = data_setup.render_view(poses[view])
            assert np.array_equal(rgb.numpy(), scene["images"][view])
            assert np.array_equal(depth.numpy(), scene["depths"][view])


def test_quadrature_has_converged():
    """Doubling the samples per ray barely changes any pixel, silhouettes and highlights included."""
    poses = data_setup.builtin_poses()
    with torch.inference_mode():
        for view in (7, 93):  # one low and one high camera
            origins, dirs = get_rays(100, 100, data_setup.FOCAL, torch.from_numpy(poses[view]))
            origins, dirs = origins[::2, ::2].reshape(-1, 3), dirs[::2, ::2].reshape(-1, 3)
            rgb, depth, acc = data_setup.render_rays(origins, dirs)
            rgb_fine, depth_fine, acc_fine = data_setup.render_rays(origins, dirs, n_samples=2 * data_setup.N_SAMPLES)
            assert (acc > 0.5).float().mean() > 0.2  # the rays do hit things
            assert (rgb - rgb_fine).abs().max() < 1e-2
            assert (acc - acc_fine).abs().max() < 1e-2
            assert (depth - depth_fine).abs().max() < 1e-2


def test_colour_depends_on_the_view_direction():
    # A point on the glossy sphere's surface, where its normal is the halfway vector between the
    # light and a camera straight above: that camera sees the full highlight, a camera at the side does not.
    light = torch.tensor(data_setup.LIGHT_DIR)
    halfway = torch.nn.functional.normalize(light + torch.tensor([0.0, 0.0, 1.0]), dim=0)
    point = torch.tensor([0.42, 0.30, 0.32]) + 0.32 * halfway
    from_above, from_side = torch.tensor([0.0, 0.0, -1.0]), torch.tensor([-1.0, 0.0, 0.0])
    colours = data_setup.scene_radiance(torch.stack([point, point]), torch.stack([from_above, from_side]))
    assert (colours[0] - colours[1]).abs().max() > 0.3
    matte = data_setup.scene_radiance(torch.stack([point, point]), torch.stack([from_above, from_side]), specular=False)
    assert torch.allclose(matte[0], matte[1])


def test_rendered_highlight_is_the_only_view_dependent_part():
    poses = data_setup.builtin_poses()
    with torch.inference_mode():
        for view in (0, 99):
            glossy, _ = data_setup.render_view(poses[view])
            matte, _ = data_setup.render_view(poses[view], specular=False)
            changed = (glossy - matte).abs().amax(-1) > 1e-3
            assert (glossy - matte).abs().max() > 0.2
            assert 0.0 < changed.float().mean() < 0.05  # a highlight, not the whole image


class FakeResponse:
    """What urllib.request.urlopen returns, serving body (then, if broken_by is set, raising it)."""

    def __init__(self, body: bytes, content_length: int | None = None, broken_by: Exception | None = None):
        self.headers = {"Content-Length": str(len(body) if content_length is None else content_length)}
        self.blocks, self.broken_by = [body], broken_by

    def read(self, size):
        if self.blocks:
            return self.blocks.pop()
        if self.broken_by is not None:
            raise self.broken_by
        return b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def serve(monkeypatch, response_or_error) -> list:
    """Make every download get response_or_error (an exception is raised); returns the URLs asked for."""
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        if isinstance(response_or_error, Exception):
            raise response_or_error
        return response_or_error

    monkeypatch.setattr(data_setup.urllib.request, "urlopen", urlopen)
    return urls


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


OFFLINE = urllib.error.URLError(OSError(101, "Network is unreachable"))


def test_builtin_scene_is_written_whole_with_no_temporary_file_left(builtin_scene):
    # np.savez given a path would write "<temp>.npz" beside an empty file and rename the empty one.
    assert [p.name for p in builtin_scene.parent.iterdir()] == ["builtin.npz"]


def test_tiny_nerf_download_offline_fails_cleanly(tmp_path, monkeypatch):
    serve(monkeypatch, OFFLINE)
    dest = tmp_path / "data"
    with pytest.raises(UserError) as error:
        data_setup.download_tiny_nerf(dest)
    message = str(error.value)
    assert "\n" not in message
    assert data_setup.TINY_NERF_URL in message and "Network is unreachable" in message
    assert "by hand" in message and str(dest / "tiny_nerf_data.npz") in message
    assert "built-in scene" in message and "python data_setup.py --scene builtin" in message
    assert "without --data" in message
    assert not dest.exists()  # the folder it created is gone again
    assert list(tmp_path.iterdir()) == []


def test_tiny_nerf_download_broken_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    serve(monkeypatch, FakeResponse(b"x" * 1000, content_length=10**6, broken_by=ConnectionResetError("reset")))
    (tmp_path / "keep.txt").write_text("the user's file")
    with pytest.raises(UserError, match="by hand"):
        data_setup.download_tiny_nerf(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("body, content_length, reason", [
    (b"x" * 1000, 2000, "got 1000 of 2000 bytes"),  # the connection closed early
    (b"<html>proxy error</html>", None, "pickled"),  # not an npz at all
    (npz_bytes(images=np.zeros(1)), None, "lacks ['focal', 'poses']"),
])
def test_tiny_nerf_download_that_is_not_the_scene_leaves_no_file(tmp_path, monkeypatch, body, content_length, reason):
    serve(monkeypatch, FakeResponse(body, content_length))
    (tmp_path / "keep.txt").write_text("the user's file")
    with pytest.raises(UserError, match="by hand") as error:
        data_setup.download_tiny_nerf(tmp_path)
    assert reason in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_tiny_nerf_download_writes_the_scene(tmp_path, monkeypatch):
    body = npz_bytes(images=np.zeros((2, 4, 4, 3)), poses=np.zeros((2, 4, 4)), focal=np.float32(5.0))
    urls = serve(monkeypatch, FakeResponse(body))
    assert data_setup.download_tiny_nerf(tmp_path / "data") == tmp_path / "data" / "tiny_nerf_data.npz"
    assert urls == [data_setup.TINY_NERF_URL]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["tiny_nerf_data.npz"]
    assert (tmp_path / "data" / "tiny_nerf_data.npz").read_bytes() == body
    # Already there: no second download.
    assert data_setup.download_tiny_nerf(tmp_path / "data") == tmp_path / "data" / "tiny_nerf_data.npz"
    assert len(urls) == 1


def test_nerf_synthetic_download_offline_fails_cleanly(tmp_path, monkeypatch):
    import gdown

    def offline_download(*, output, **kwargs):
        Path(output).write_bytes(b"partial zip")  # as gdown leaves a partial file behind
        raise OSError("Failed to retrieve file url:\n\n\tCannot retrieve the public link of the file.")

    monkeypatch.setattr(gdown, "download", offline_download)
    dest = tmp_path / "data"
    with pytest.raises(UserError) as error:
        data_setup.download_nerf_synthetic(dest)
    message = str(error.value)
    assert "\n" not in message
    assert data_setup.NERF_SYNTHETIC_DRIVE_LINK in message and "by hand" in message
    assert str(dest / "nerf_synthetic") in message
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def fake_gdown(monkeypatch, also=lambda output: None):
    """Make gdown.download write a small nerf_synthetic.zip (after calling also(output))."""
    import gdown

    def download(*, output, **kwargs):
        also(output)
        with zipfile.ZipFile(output, "w") as archive:
            archive.writestr("nerf_synthetic/lego/transforms_train.json", '{"frames": []}')
        return output

    monkeypatch.setattr(gdown, "download", download)


def test_nerf_synthetic_download_unpacks_into_place(tmp_path, monkeypatch):
    fake_gdown(monkeypatch)
    target = data_setup.download_nerf_synthetic(tmp_path)
    assert target == tmp_path / "nerf_synthetic"
    assert (target / "lego" / "transforms_train.json").read_text() == '{"frames": []}'
    assert [p.name for p in tmp_path.iterdir()] == ["nerf_synthetic"]  # the staging folder is gone


def test_nerf_synthetic_download_keeps_the_folder_a_concurrent_run_finished_first(tmp_path, monkeypatch):
    def concurrent_run_finishes(output):
        (tmp_path / "nerf_synthetic" / "lego").mkdir(parents=True)
        (tmp_path / "nerf_synthetic" / "lego" / "transforms_train.json").write_text("the other run's")

    fake_gdown(monkeypatch, also=concurrent_run_finishes)
    target = data_setup.download_nerf_synthetic(tmp_path)
    assert (target / "lego" / "transforms_train.json").read_text() == "the other run's"
    assert [p.name for p in tmp_path.iterdir()] == ["nerf_synthetic"]


def one_error_line(capsys, main_args) -> str:
    """Run data_setup.main(main_args), which must exit with code 2; returns its one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        data_setup.main(main_args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n")
    return err


def test_cli_reports_a_bad_scene_in_one_line():
    result = subprocess.run([sys.executable, "data_setup.py", "--scene", "nope"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--scene" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_with_no_flags_fetches_tiny_nerf_and_offline_points_to_the_builtin_scene(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_setup, "DATA_DIR", tmp_path / "data")
    urls = serve(monkeypatch, OFFLINE)
    err = one_error_line(capsys, [])
    assert urls == [data_setup.TINY_NERF_URL]
    assert err.startswith(f"error: could not download {data_setup.TINY_NERF_URL}") and "by hand" in err
    assert "built-in scene" in err and "python data_setup.py --scene builtin" in err and "without --data" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scene", ["builtin", "tiny_nerf"])
def test_cli_reports_an_unwritable_out_in_one_line(tmp_path, monkeypatch, capsys, scene):
    serve(monkeypatch, AssertionError("nothing to download into"))
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "data"
    err = one_error_line(capsys, ["--scene", scene, "--out", str(out)])
    assert err.startswith(f"error: could not write into {out} (") and "give --out a folder you can write to" in err
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]
