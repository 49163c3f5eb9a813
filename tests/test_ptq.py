import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ptq
import train
from conftest import write_scene
from utils import UserError

REPO = Path(__file__).resolve().parents[1]


def test_post_training_quantization_keeps_quality_and_shrinks_the_weights(tiny_config, tmp_path):
    # 16x16 views keep the evaluation of four variants quick (CPU fp16 has no fast kernels).
    scene = write_scene(tmp_path / "small.npz", n=8, size=16)
    config = replace(tiny_config, data=str(scene), steps=100, eval_every=1000, ckpt_every=1000, video_frames=1)
    train.run(config)
    run_dir = Path(config.out) / config.name
    rows = {r["variant"]: r for r in ptq.evaluate_variants(run_dir, ptq.VARIANTS, None, torch.device("cpu"))}
    assert rows.keys() == set(ptq.VARIANTS)
    fp32 = rows["fp32"]
    assert fp32["psnr_test"] == pytest.approx(json.loads((run_dir / "summary.json").read_text())["psnr_test"], abs=1e-3)
    assert rows["fp16"]["model_bytes"] < 0.6 * fp32["model_bytes"]
    assert rows["int8-weight"]["model_bytes"] < rows["fp16"]["model_bytes"]
    for variant in ("fp16", "int8-weight", "int8-dynamic"):
        assert abs(rows[variant]["psnr_test"] - fp32["psnr_test"]) < 1.0, variant


def test_bitnerf_runs_and_missing_runs_are_refused(tiny_config, tmp_path):
    config = replace(tiny_config, model="bitnerf", steps=2, eval_every=1000, ckpt_every=1000, video_frames=1)
    train.run(config)
    with pytest.raises(UserError, match="bitnerf run"):
        ptq.evaluate_variants(Path(config.out) / config.name, ["fp32"], None, torch.device("cpu"))
    result = subprocess.run([sys.executable, str(REPO / "ptq.py"), str(tmp_path / "nothing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: no checkpoint at")
    assert "Traceback" not in result.stderr
