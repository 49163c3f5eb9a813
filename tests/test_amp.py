"""exp2's fp16 path with its gradient scaler, run on the CPU (fp16 autocast and torch.amp.GradScaler("cpu")
work there, slowly): the project's own step (step.Optimization.build's scaler, step.train_step) skips a
step whose fp16 gradients overflow and backs the scale off, grows the scale after growth_interval good
steps, and trains with its matmuls in fp16; `exp2.py --quick --amp-dtype fp16` records fp16-amp and saves
the scaler's state in its checkpoint. On CUDA the same path runs with the scaler as the seed did."""

import functools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_FLAGS, write_scene

import bitnerf
import configs
import measured
import precision
import rundir
from dataset import RaySampler, load_scene
from step import Optimization, train_step

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# A scale at which the scaled fp16 gradients overflow (fp16's largest value is 65504): the loss is about
# 0.2, so the scaled gradients flowing back into the fp16 matmuls are about 1e11.
OVERFLOWING_SCALE = 2.0**40


class Fp16Training:
    """exp2 of the quick preset in fp16, shrunk as conftest's tiny_config shrinks exp1, built as train.py
    builds it: the model, Optimization.build with the run's autocast dtype, the rays and the autocast."""

    def __init__(self, scene_path: Path):
        self.config = replace(
            configs.experiment("exp2", configs.QUICK),
            amp_dtype="fp16",
            data=str(scene_path),
            depth=2,
            width=64,
            pos_freqs=6,
            use_viewdirs=True,
            n_coarse=16,
            n_fine=16,
            steps=40,
            batch_rays=256,
            compile="off",
            occupancy_grid=False,
        )
        scene = load_scene(self.config.data, self.config.downscale, self.config.val_views)
        self.dtype = precision.amp_dtype(self.config, CPU)
        torch.manual_seed(self.config.seed)
        self.model = bitnerf.build_model(self.config, scene, CPU)
        self.optimization = Optimization.build(self.config, self.model, CPU, self.dtype)
        self.scaler = self.optimization.scaler
        self.sampler = RaySampler(
            scene, CPU, self.config.batch_rays, self.config.seed, jitter_samples=self.config.jitter_per_ray
        )
        self.autocast = functools.partial(precision.autocast, CPU, self.dtype)  # as evaluation.Evaluation.autocast
        self.steps = 0

    def step(self) -> dict[str, torch.Tensor]:
        stats = train_step(self.model, self.sampler.batch(self.steps), self.optimization, self.config, self.autocast)
        self.steps += 1
        return stats

    def set_scaler(self, **state) -> None:
        """Put values into the scaler's state (scale, growth_interval, _growth_tracker) as a checkpoint would."""
        self.scaler.load_state_dict({**self.scaler.state_dict(), **state})

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.model.named_parameters()}

    def adam_steps(self) -> set[float]:
        """The step counts of AdamW's per-parameter state: empty before its first step; the fused AdamW that
        Optimization.build makes creates its state on a skipped step but counts no step there."""
        return {float(s["step"]) for s in self.optimization.optimizer.state.values()}

    def adam_moments_are_zero(self) -> bool:
        states = self.optimization.optimizer.state.values()
        return all(not state[k].any() for state in states for k in ("exp_avg", "exp_avg_sq"))


@pytest.fixture
def fp16(builtin_scene) -> Fp16Training:
    training = Fp16Training(builtin_scene)
    assert training.dtype == torch.float16
    assert training.scaler.is_enabled(), "Optimization.build gave fp16 a disabled gradient scaler"
    return training


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_backs_off(fp16):
    fp16.set_scaler(scale=OVERFLOWING_SCALE)
    assert fp16.scaler.get_scale() == OVERFLOWING_SCALE
    before = fp16.weights()
    stats = fp16.step()
    assert not torch.isfinite(stats["grad_norm"]), "the gradients at this scale should have overflowed fp16"
    after = fp16.weights()
    assert all(torch.equal(before[name], after[name]) for name in before), "a step with inf gradients changed weights"
    assert fp16.adam_steps() <= {0.0} and fp16.adam_moments_are_zero(), "AdamW stepped on overflowed gradients"
    # backoff_factor 0.5, once; the count of good steps starts again.
    assert fp16.scaler.get_scale() == OVERFLOWING_SCALE / 2
    assert fp16.scaler.state_dict()["_growth_tracker"] == 0
    # The next step at a scale that fits is applied, with finite weights.
    fp16.set_scaler(scale=2.0**10)
    stats = fp16.step()
    assert torch.isfinite(stats["grad_norm"]) and fp16.adam_steps() == {1.0}
    after = fp16.weights()
    assert all(torch.isfinite(w).all() for w in after.values())
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_the_scale_grows_after_growth_interval_good_steps_and_is_saved(fp16):
    fp16.set_scaler(scale=2.0**10, growth_interval=3, _growth_tracker=0)
    for good in (1, 2):
        assert torch.isfinite(fp16.step()["grad_norm"])
        assert fp16.scaler.get_scale() == 2.0**10, f"the scale changed after {good} of 3 good steps"
        assert fp16.scaler.state_dict()["_growth_tracker"] == good
    fp16.step()
    assert fp16.scaler.get_scale() == 2.0**11  # growth_factor 2 after the third good step
    assert fp16.scaler.state_dict()["_growth_tracker"] == 0
    assert fp16.adam_steps() == {3.0}, "every good step is applied"
    # What a checkpoint saves (Optimization.state_dict) gives a resumed run the grown scale and its interval.
    resumed = Optimization.build(fp16.config, fp16.model, CPU, torch.float16)
    resumed.load_state_dict(fp16.optimization.state_dict())
    assert resumed.scaler.get_scale() == 2.0**11 and resumed.scaler.state_dict()["growth_interval"] == 3


def test_fp16_training_computes_in_fp16_and_lowers_the_loss(fp16):
    # One step under the census that train.py takes: every layer's matmul ran on fp16 operands.
    with measured.MatmulCensus(fp16.model) as census:
        fp16.step()
    assert census.precision() == "fp16-amp", census.layers
    assert {layer.output_dtype for layer in census.layers.values()} == {torch.float16}
    # The loss on a held batch (fixed rays and sample positions, fp32, no gradients) falls over 30 steps.
    held = fp16.sampler.batch(10**6)

    def held_loss() -> float:
        with torch.no_grad():
            rgb = fp16.model(held.origins, held.dirs, held.jitter)["rgb"]
            return torch.nn.functional.mse_loss(rgb, held.rgb).item()

    first = held_loss()
    for _ in range(30):
        assert torch.isfinite(fp16.step()["loss"])
    assert held_loss() < 0.8 * first
    assert fp16.adam_steps() == {31.0}, "a step was skipped at the default scale"


def test_exp2_with_fp16_records_fp16_amp_and_saves_an_enabled_scaler(tmp_path):
    scene = write_scene(tmp_path / "scene.npz", n=6, size=16)
    out = tmp_path / "runs"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "exp2.py"),
            "--quick",
            "--amp-dtype",
            "fp16",
            "--data",
            str(scene),
            "--out",
            str(out),
            *TINY_MODEL_FLAGS,
            "--batch-rays",
            "64",
            "--steps",
            "4",
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
            "--wandb",
            "disabled",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = out / "exp2"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["precision"], summary["steps"]) == ("fp16-amp", 4)
    assert json.loads((run_dir / "layers.json").read_text())["precision"] == "fp16-amp"
    checkpoint = torch.load(run_dir / rundir.CHECKPOINT, weights_only=False)
    assert checkpoint["autocast_dtype"] == "float16" and rundir.trained_autocast_dtype(checkpoint) == "float16"
    state = checkpoint["scaler"]
    # An enabled GradScaler's state (a disabled one saves {}): its keys, a positive scale, and it loads.
    assert set(state) == set(torch.amp.GradScaler("cpu").state_dict()), state
    assert state["scale"] > 0 and state["_growth_tracker"] >= 0
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict(state)
    assert scaler.get_scale() == state["scale"]
