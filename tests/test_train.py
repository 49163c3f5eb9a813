import contextlib
import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_FLAGS, write_scene

import bitnerf
import command_line
import configs
import plan
import precision
import train
from dataset import RaySampler, load_scene
from devices import Stopwatch
from image_metrics import ssim
from step import train_step
from utils import UserError

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {
    "experiment",
    "model",
    "precision",
    "world_size",
    "global_batch_rays",
    "steps",
    "wall_s",
    "train_samples_per_s",
    "peak_mem_bytes",
    "psnr_test",
    "ssim_test",
    "params",
    "weight_bits",
    "checkpoint_bytes",
    "model_bytes",
    "scene",
    "device",
    "torch_version",
    "compile_s",
    "float32_matmul_precision",
    "compiled",
}


def test_training_learns_and_writes_the_run_directory(tiny_config):
    config = replace(tiny_config, steps=500, log_every=50, eval_every=25, ckpt_every=500)
    summary = train.run(config)
    run_dir = Path(config.out) / config.name
    assert SUMMARY_KEYS <= summary.keys()
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    first_test_psnr = float(rows[0]["psnr_test"])  # the evaluation after 25 steps
    assert summary["psnr_test"] > 17.0 and summary["psnr_test"] > first_test_psnr + 5.0
    # Against what no training gives: a constant render (white, the scene's background, or the mean colour)
    # already reaches about 0.6 on these views, so the bar is each view's best constant render plus a margin
    # that a render without the scene's structure does not make up.
    scene = load_scene(config.data)
    constant = [
        max(ssim(torch.full_like(target, value), target) for value in (1.0, float(target.mean())))
        for target in (torch.from_numpy(scene.images[view]) for view in scene.i_test)
    ]
    assert summary["ssim_test"] > float(np.mean(constant)) + 0.05
    assert summary["precision"] == "fp32" and summary["weight_bits"] == 32 and summary["world_size"] == 1
    # The code that trained it: this checkout's commit (tests run in one), with its uncommitted changes marked.
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=Path(train.__file__).parent, capture_output=True, text=True
    ).stdout
    assert summary["commit"].split()[0] == (head.strip() or "unknown"), summary["commit"]
    assert summary["compile_s"] == 0.0 and summary["float32_matmul_precision"] == "highest"  # exp1 is strict fp32

    layers = json.loads((run_dir / "layers.json").read_text())
    names = [layer["name"] for layer in layers["layers"]]
    assert names[0] == "coarse.layers.0" and names[-1] == "fine.rgb_head" and len(names) == 2 * (2 + 4)
    assert names.index("coarse.density_head") < names.index("coarse.feature") < names.index("coarse.view_layer")
    by_name = {layer["name"]: layer for layer in layers["layers"]}
    assert by_name["coarse.layers.0"]["input_sparsity"] == 0.0  # the encoding is dense
    assert by_name["fine.layers.1"]["input_sparsity"] > 0.05  # ReLU outputs are not
    assert by_name["fine.layers.1"]["samples_per_frame"] == 800 * 800 * 32
    assert layers["samples_per_frame"] == 800 * 800 * (16 + 32)

    n_test = len(summary["psnr_test_per_view"])
    for kind in ("rgb", "gt", "depth"):
        assert len(list((run_dir / "renders").glob(f"{kind}_*.png"))) == n_test
    assert (run_dir / "video.gif").exists() and (run_dir / "checkpoint.pt").exists()
    assert summary["model_bytes"] == (run_dir / "model.pt").stat().st_size < summary["checkpoint_bytes"]


@pytest.mark.parametrize("model", ["nerf", "bitnerf"])
def test_resume_continues_exactly_where_the_run_stopped(tiny_config, monkeypatch, model):
    config = replace(tiny_config, ckpt_every=10, steps=30, model=model, video_frames=1)
    train.run(replace(config, name="straight"))

    original_batch = train.RaySampler.batch

    def interrupt_at_step_17(self, step):
        if step == 17:
            raise KeyboardInterrupt
        return original_batch(self, step)

    monkeypatch.setattr(train.RaySampler, "batch", interrupt_at_step_17)
    with pytest.raises(SystemExit) as stop:
        train.run(replace(config, name="resumed"))
    assert stop.value.code == 130
    run_dir = Path(config.out) / "resumed"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 17
    monkeypatch.setattr(train.RaySampler, "batch", original_batch)
    train.run(replace(config, name="resumed"), resume=True)

    straight = torch.load(Path(config.out) / "straight" / "checkpoint.pt", weights_only=False)["model"]
    resumed = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps_logged = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == 30

    with pytest.raises(UserError, match="trained with other width"):
        train.run(replace(config, name="resumed", width=32), resume=True)


class FirstStepCompiles(Stopwatch):
    """A Stopwatch on which each process's first training step takes 10 s (it compiles) and every other 0.5 s."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._add(10.0 if self.blocks == 0 else 0.5)


def test_compilation_is_reported_apart_and_kept_out_of_the_training_throughput(tiny_config, monkeypatch):
    monkeypatch.setattr(train, "Stopwatch", FirstStepCompiles)
    monkeypatch.setattr(plan, "compile_decision", lambda config, target: (True, "compiled in this test"))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: None)  # no real compilation
    small_scene = write_scene(Path(tiny_config.out).parent / "scene.npz", n=6, size=16)  # a quick final evaluation
    config = replace(tiny_config, data=str(small_scene), steps=20, video_frames=1)
    samples_per_step = config.batch_rays * config.samples_per_ray
    summary = train.run(config)
    # 20 steps: 10 s, then 19 of 0.5 s. The first step's excess over the others' mean is compilation.
    assert (summary["train_s"], summary["compile_s"]) == (19.5, 9.5)
    assert summary["train_samples_per_s"] == round(samples_per_step * 20 / 10.0)
    # A resumed process compiles again: 10 more steps, the first of 10 s.
    summary = train.run(replace(config, steps=30), resume=True)
    assert (summary["train_s"], summary["compile_s"]) == (19.5 + 14.5, 9.5 + 9.5)
    assert summary["train_samples_per_s"] == round(samples_per_step * 30 / 15.0)


def test_tf32_is_a_flag_and_the_summary_records_the_fp32_matmul_precision_the_run_had(tiny_config):
    assert command_line.parse_args("exp2", ["--tf32"])[0].tf32 and not any(
        configs.experiment(name).tf32 for name in configs.AXES
    )
    try:
        small_scene = write_scene(Path(tiny_config.out).parent / "scene.npz", n=6, size=16)
        summary = train.run(replace(tiny_config, data=str(small_scene), tf32=True, steps=2, video_frames=1))
        assert summary["float32_matmul_precision"] == "high"
    finally:
        precision.set_float32_matmul(False)


def test_validation_views_are_not_trained_on_and_are_what_the_periodic_evaluation_renders(tiny_config, tmp_path):
    scene_path = write_scene(tmp_path / "val.npz", n=6, size=16, i_test=np.array([5]), i_val=np.array([4]))
    config = replace(tiny_config, data=str(scene_path), steps=4, eval_every=2, log_every=2, video_frames=1)
    rendered = []
    original = train.Evaluation.test_views

    def noting_views(self, model, views=None):
        rendered.append(list(self.scene.i_test if views is None else views))
        return original(self, model, views)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.Evaluation, "test_views", noting_views)
        train.run(config)
    # The periodic evaluation at step 2 on val; the final one on test, and on val for summary.json.
    assert rendered == [[4], [5], [4]]
    summary = json.loads((Path(config.out) / config.name / "summary.json").read_text())
    assert summary["val_views"] == [4] and summary["psnr_val"] > 0 and summary["psnr_test_per_view"]
    assert summary["psnr_val_per_view"] == [summary["psnr_val"]] and 0 < summary["ssim_val"] <= 1
    rows = list(csv.DictReader(open(Path(config.out) / config.name / "metrics.csv")))
    assert [(r["step"], bool(r["psnr_val"]), bool(r["psnr_test"])) for r in rows] == [
        ("2", True, False),
        ("4", False, False),
    ]
    sampler = RaySampler(load_scene(str(scene_path)), torch.device("cpu"), 8, 0)
    assert sampler.rgb.shape[0] == 4 * 16 * 16  # views 0-3 alone


def test_mixed_precision_runs_and_records_its_dtype(tiny_config):
    summary = train.run(replace(tiny_config, precision="amp", steps=10, video_frames=1))
    assert summary["precision"] == "bf16-amp" and summary["weight_bits"] == 16 and summary["compiled"] is False
    layers = json.loads((Path(tiny_config.out) / "exp1" / "layers.json").read_text())
    assert (layers["precision"], layers["weight_bits"]) == ("bf16-amp", 16)
    assert {(layer["weight_bits"], layer["input_bits"], layer["output_bits"]) for layer in layers["layers"]} == {
        (16, 16, 16)
    }


def test_a_run_that_computes_other_than_its_precision_stops_with_one_line(tiny_config, monkeypatch):
    """Precision and bits are measured from the matmuls that ran: a training step without its autocast, or
    a BitNeRF whose layers were never quantized, stops the run instead of reporting the configured precision."""

    def without_autocast(step_model, batch, optimization, config, autocast, micro_batch_rays):
        return train_step(step_model, batch, optimization, config, contextlib.nullcontext, micro_batch_rays)

    with monkeypatch.context() as patch:
        patch.setattr(train, "train_step", without_autocast)
        with pytest.raises(SystemExit, match="training step ran fp32 .* asks for bf16-amp"):
            train.run(replace(tiny_config, precision="amp", steps=2, video_frames=1))
    with monkeypatch.context() as patch:
        patch.setattr(bitnerf, "to_bitnet", lambda model, quantize_heads=False, first_layer="ternary": model)
        with pytest.raises(
            SystemExit,
            match="ran fp32 with ternary weights in 0 and int8 weights in 0 of 12 layers.* ternary-int8 with 8 and 0",
        ):
            train.run(replace(tiny_config, model="bitnerf", steps=2, video_frames=1, name="never_quantized"))


def test_existing_runs_are_never_overwritten_by_accident(tiny_config):
    config = replace(tiny_config, steps=5, video_frames=1)
    train.run(config)
    summary_path = Path(config.out) / "exp1" / "summary.json"
    before = summary_path.read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train.run(config)
    with pytest.raises(UserError, match="no checkpoint"):
        train.run(replace(config, name="fresh"), resume=True)
    assert summary_path.read_bytes() == before


def test_bad_scene_on_the_command_line_is_one_line_and_touches_nothing(tmp_path):
    bad = write_scene(tmp_path / "bad.npz", focal=0.0)
    (tmp_path / "runs" / "exp1").mkdir(parents=True)
    (tmp_path / "runs" / "exp1" / "summary.json").write_text("{}")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "exp1.py"),
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "runs"),
            "--overwrite",
            "--wandb",
            "disabled",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {bad}: focal must be a positive number of pixels, got 0.0"]
    assert (tmp_path / "runs" / "exp1" / "summary.json").read_text() == "{}"


def test_seeds_train_one_run_per_seed_each_equal_to_a_run_with_that_seed(builtin_scene, tmp_path):
    flags = [
        "--quick",
        "--data",
        str(builtin_scene),
        "--out",
        str(tmp_path),
        "--wandb",
        "disabled",
        *TINY_MODEL_FLAGS,
        "--steps",
        "4",
        "--batch-rays",
        "64",
        "--log-every",
        "2",
        "--eval-every",
        "4",
        "--ckpt-every",
        "4",
        "--video-frames",
        "1",
        "--eval-views",
        "1",
        "--compile",
        "off",
    ]
    train.main("exp1", [*flags, "--seeds", "3,5"])
    train.main("exp1", [*flags, "--seed", "5", "--name", "alone"])
    seed3, seed5, alone = (
        json.loads((tmp_path / n / "summary.json").read_text()) for n in ("exp1-seed3", "exp1-seed5", "alone")
    )
    assert (seed3["experiment"], seed3["seed"], seed5["experiment"], seed5["seed"]) == ("exp1", 3, "exp1", 5)
    assert seed5["psnr_test"] == alone["psnr_test"] != seed3["psnr_test"]
