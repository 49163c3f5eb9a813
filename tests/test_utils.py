import re

import numpy as np
import pytest
import torch

import camera
import devices
import files
import image_metrics
import media
import utils


@pytest.mark.parametrize("theta, phi", [(0.0, -30.0), (90.0, -60.0), (200.0, -10.0)])
def test_pose_spherical_looks_at_the_origin_from_the_radius(theta, phi):
    c2w = camera.pose_spherical(theta, phi, 4.0)
    centre, forward = c2w[:3, 3], -c2w[:3, 2]
    assert np.linalg.norm(centre) == pytest.approx(4.0, abs=1e-5)
    assert np.allclose(forward, -centre / 4.0, atol=1e-5)
    assert centre[2] == pytest.approx(4.0 * np.sin(np.radians(-phi)), abs=1e-5)  # negative phi: above, z up
    assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-5)


def test_psnr_and_ssim_against_known_values():
    a = torch.zeros(16, 16, 3)
    assert image_metrics.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    assert image_metrics.ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    assert image_metrics.ssim(image, 1 - image) < 0.0


def test_depth_colouring_and_video(tmp_path):
    depth = torch.linspace(2.0, 6.0, 64).reshape(8, 8)
    coloured = media.colorize_depth(depth, 2.0, 6.0)
    assert coloured.shape == (8, 8, 3) and coloured.dtype == np.uint8
    assert not np.array_equal(coloured[0, 0], coloured[-1, -1])
    paths = media.write_video(str(tmp_path / "video"), [coloured] * 3)
    assert paths[0].endswith(".gif") and all((tmp_path / p).exists() for p in paths)


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    files.atomic_write(path, lambda tmp: torch.save({"step": 1}, tmp))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("crash while saving")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, lambda tmp: torch.save({"step": 2, "bad": Unpicklable()}, tmp))
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_atomic_write_writes_text_bytes_and_what_a_function_writes(tmp_path):
    files.atomic_write(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_bytes() == "héllo\n".encode()  # UTF-8
    files.atomic_write(tmp_path / "a.txt", b"\x00\xff")  # replaces the file
    assert (tmp_path / "a.txt").read_bytes() == b"\x00\xff"
    files.atomic_write(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").write(b"by a function"))
    assert (tmp_path / "b.bin").read_bytes() == b"by a function"
    # Readable by others, as open() would make it (mkstemp's temporary files are 0600).
    assert {(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_atomic_write_that_fails_leaves_neither_a_file_nor_a_temporary_one(tmp_path):
    def half_then_crash(tmp):
        with open(tmp, "w") as f:
            f.write("half a fi")
        raise KeyboardInterrupt  # not an Exception: a Ctrl-C mid-write must clean up too

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(tmp_path / "new.json", half_then_crash)
    (tmp_path / "old.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(tmp_path / "old.json", half_then_crash)
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"] and (tmp_path / "old.json").read_text() == "old"


def test_json_files_round_trip_and_a_bad_one_is_a_user_error_naming_it(tmp_path):
    files.write_json(tmp_path / "s.json", {"psnr": 20.5, "views": [1, 2]})
    assert (tmp_path / "s.json").read_text() == '{\n  "psnr": 20.5,\n  "views": [\n    1,\n    2\n  ]\n}\n'
    assert files.read_json(tmp_path / "s.json") == {"psnr": 20.5, "views": [1, 2]}
    (tmp_path / "bad.json").write_text('{"psnr": ')
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        message = f"^{re.escape(str(path))} is not a readable JSON file .*; rerun what wrote it$"
        with pytest.raises(utils.UserError, match=message):
            files.read_json(path)


def test_depth_error_is_the_mean_absolute_difference():
    predicted = torch.tensor([[2.0, 4.0], [3.0, 3.5]])
    truth = np.full((2, 2), 3.0, dtype=np.float32)
    assert image_metrics.depth_error(predicted, truth) == pytest.approx((1 + 1 + 0 + 0.5) / 4)  # signed mean: 0.125


def test_exit_on_user_error_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info, utils.exit_on_user_error():
        raise utils.UserError("no runs in runs/")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no runs in runs/\n"


@pytest.fixture
def no_nvidia(monkeypatch, tmp_path):
    """A machine without a sign of an NVIDIA GPU: no driver file, no device file, no nvidia-smi on the PATH."""
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_VERSION_FILE", str(tmp_path / "no_version"))
    monkeypatch.setattr(devices, "NVIDIA_DEVICE_FILE", str(tmp_path / "no_nvidia0"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    return tmp_path


def test_an_nvidia_gpu_is_seen_by_its_driver_file_device_file_or_nvidia_smi(no_nvidia):
    assert devices.nvidia_driver() is None
    smi = no_nvidia / "empty_bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 550.54.15\n")
    smi.chmod(0o755)
    assert devices.nvidia_driver() == "driver 550.54.15"
    (no_nvidia / "no_nvidia0").touch()
    assert devices.nvidia_driver() == str(no_nvidia / "no_nvidia0")
    (no_nvidia / "no_version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert devices.nvidia_driver() == "driver 535.104.05"


def test_auto_on_a_visible_gpu_that_torch_cannot_use_warns_in_one_line(no_nvidia, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""  # no GPU in sight: the CPU is what the user has
    (no_nvidia / "no_version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.90.07\n")
    assert devices.resolve_device("auto") == torch.device("cpu")
    warning = capsys.readouterr().err
    assert len(warning.splitlines()) == 1
    assert warning.startswith("warning: running on the CPU: an NVIDIA GPU is visible")
    for part in ("driver 550.90.07", "built for CUDA 12.8", devices.TORCH_CUDA_FIX, "--device cpu to silence this"):
        assert part in warning
    assert devices.resolve_device("cpu") == torch.device("cpu") and capsys.readouterr().err == ""
    monkeypatch.setattr(torch.version, "cuda", None)
    devices.resolve_device("auto")
    assert "a CPU-only build" in capsys.readouterr().err


def test_device_cuda_without_a_usable_gpu_is_one_user_error_with_the_fix_when_a_gpu_is_visible(no_nvidia, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    no_gpu = "^--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu$"
    with pytest.raises(utils.UserError, match=no_gpu):
        devices.resolve_device("cuda")
    (no_nvidia / "no_nvidia0").touch()
    with pytest.raises(utils.UserError) as error:
        devices.resolve_device("cuda")
    message = str(error.value)
    assert "\n" not in message and f"an NVIDIA GPU is visible ({no_nvidia / 'no_nvidia0'})" in message
    assert devices.TORCH_CUDA_FIX in message and message.endswith("or use --device cpu")


def test_stopwatch_sums_its_blocks_and_a_first_blocks_excess_over_the_mean_of_the_others(monkeypatch):
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 21.0])  # blocks of 3 s, 1 s and 1 s, with gaps between them
    monkeypatch.setattr(devices.time, "perf_counter", lambda: next(ticks))
    clock = devices.Stopwatch(torch.device("cpu"), carried_s=100.0)  # 100 s from before a resume
    with clock:
        pass
    assert clock.first_block_excess() == 0.0  # nothing to compare the first block with yet
    for _ in range(2):
        with clock:
            pass
    assert clock.elapsed == 105.0 and clock.first_block_excess() == 2.0
