import numpy as np
import pytest
import torch

import utils


@pytest.mark.parametrize("theta, phi", [(0.0, -30.0), (90.0, -60.0), (200.0, -10.0)])
def test_pose_spherical_looks_at_the_origin_from_the_radius(theta, phi):
    c2w = utils.pose_spherical(theta, phi, 4.0)
    centre, forward = c2w[:3, 3], -c2w[:3, 2]
    assert np.linalg.norm(centre) == pytest.approx(4.0, abs=1e-5)
    assert np.allclose(forward, -centre / 4.0, atol=1e-5)
    assert centre[2] == pytest.approx(4.0 * np.sin(np.radians(-phi)), abs=1e-5)  # negative phi: above, z up
    assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-5)


def test_psnr_and_ssim_against_known_values():
    a = torch.zeros(16, 16, 3)
    assert utils.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    assert utils.ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    assert utils.ssim(image, 1 - image) < 0.0


def test_depth_colouring_and_video(tmp_path):
    depth = torch.linspace(2.0, 6.0, 64).reshape(8, 8)
    coloured = utils.colorize_depth(depth, 2.0, 6.0)
    assert coloured.shape == (8, 8, 3) and coloured.dtype == np.uint8
    assert not np.array_equal(coloured[0, 0], coloured[-1, -1])
    paths = utils.write_video(str(tmp_path / "video"), [coloured] * 3)
    assert paths[0].endswith(".gif") and all((tmp_path / p).exists() for p in paths)


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    utils.atomic_torch_save({"step": 1}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("crash while saving")

    with pytest.raises(RuntimeError):
        utils.atomic_torch_save({"step": 2, "bad": Unpicklable()}, str(path))
    assert torch.load(path)["step"] == 1


def test_exit_on_user_error_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info, utils.exit_on_user_error():
        raise utils.UserError("no runs in runs/")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no runs in runs/\n"
