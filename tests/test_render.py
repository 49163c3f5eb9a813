import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import render

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["nerf", "bitnerf"])
@pytest.mark.parametrize("weights", render.WEIGHTS)
def test_rerendered_test_views_equal_the_training_runs_own_final_renders(trained_runs, tmp_path, name, weights):
    run_dir = trained_runs / name
    metrics = render.render_run(run_dir, tmp_path, weights, device=CPU, video_frames=2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics["psnr_test_per_view"] == summary["psnr_test_per_view"]
    assert metrics["psnr_test"] == summary["psnr_test"] and metrics["ssim_test"] == summary["ssim_test"]
    trained = sorted((run_dir / "renders").glob("*.png"))
    assert trained and [p.name for p in trained] == sorted(p.name for p in (tmp_path / "renders").glob("*.png"))
    for path in trained:
        assert np.array_equal(iio.imread(path), iio.imread(tmp_path / "renders" / path.name)), path.name
    assert (tmp_path / "video.gif").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["weights"] == weights


def test_downscale_averages_the_ground_truth_and_scales_the_camera(trained_runs, tmp_path):
    metrics = render.render_run(trained_runs / "nerf", tmp_path, device=CPU, downscale=2, video_frames=1)
    assert (metrics["width"], metrics["height"]) == (8, 8)
    gt = iio.imread(next((tmp_path / "renders").glob("gt_*.png")))
    full = iio.imread(next((trained_runs / "nerf" / "renders").glob("gt_*.png"))).astype(float)
    # Pixel (0, 0) at half resolution is the mean of the full-resolution 2x2 block, up to 8-bit rounding.
    assert gt.shape == (8, 8, 3) and np.allclose(gt[0, 0], full[:2, :2].mean((0, 1)), atol=1.0)


def test_views_picks_test_views_and_refuses_others(trained_runs, tmp_path, capsys):
    summary = json.loads((trained_runs / "nerf" / "summary.json").read_text())
    test_view = int(next((trained_runs / "nerf" / "renders").glob("rgb_*.png")).stem.removeprefix("rgb_"))
    metrics = render.render_run(trained_runs / "nerf", tmp_path, device=CPU, views=str(test_view), video_frames=1)
    assert metrics["views"] == [test_view] and metrics["psnr_test_per_view"] == summary["psnr_test_per_view"][:1]
    with pytest.raises(SystemExit) as exit_info:
        render.main([str(trained_runs / "nerf"), "--out", str(tmp_path / "x"), "--views", "0,999"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_missing_or_corrupt_run_is_one_line_and_exit_code_2(trained_runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        render.main([str(tmp_path / "no_such_run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1

    broken = tmp_path / "broken"
    shutil.copytree(trained_runs / "nerf", broken)
    model_file = broken / "model.pt"
    model_file.write_bytes(model_file.read_bytes()[:100])
    with pytest.raises(SystemExit) as exit_info:
        render.main([str(broken), "--weights", "model", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "model.pt" in err and err.count("\n") == 1
