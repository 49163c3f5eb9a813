"""Offline data setup: downloads (faked) that fail cleanly and leave nothing behind, and the command's errors."""

import io
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

import data_setup
from utils import UserError

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize(
    "body, content_length, reason",
    [
        (b"x" * 1000, 2000, "got 1000 of 2000 bytes"),  # the connection closed early
        (b"<html>proxy error</html>", None, "pickled"),  # not an npz at all
        (npz_bytes(images=np.zeros(1)), None, "lacks ['focal', 'poses']"),
    ],
)
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
    result = subprocess.run(
        [sys.executable, "data_setup.py", "--scene", "nope"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
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
