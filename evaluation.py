"""Evaluating a trained or training model on its scene: test views and their metrics, the 360° video,
and the census of its Linear layers that layers.json records.

An `Evaluation` carries what every evaluation needs (the scene, the config, the device, the autocast
dtype and, when it writes files, the run directory), so train.py, ptq.py and analyze.py render alike.
Under DDP every rank renders its share of the test views and video frames, and rank 0 gets them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import nn

import bitnerf
import bitnerf_ddp
import measured
import precision
import rundir
from camera import get_rays, pose_spherical
from configs import ExperimentConfig
from dataset import Scene
from devices import device_identity
from files import git_commit, write_json
from image_metrics import depth_error, psnr, ssim
from measured import MatmulCensus
from media import colorize_depth, to_uint8, write_video
from nerf import NeRF, render_image
from runlog import RunLog

CODE = Path(__file__).resolve().parent  # the checkout whose commit a run records


@dataclass(frozen=True)
class Evaluation:
    scene: Scene
    config: ExperimentConfig
    device: torch.device
    dtype: torch.dtype | None  # the autocast dtype; None computes in fp32
    run_dir: Path | None = None  # where write_test_views and video write

    @classmethod
    def of(cls, config: ExperimentConfig, scene: Scene, device: torch.device, run_dir: Path | None = None):
        """The evaluation a run of config does: in its own autocast dtype."""
        return cls(scene, config, device, precision.amp_dtype(config, device), run_dir)

    def with_dtype(self, dtype: torch.dtype | None) -> Evaluation:
        return dataclasses.replace(self, dtype=dtype)

    def autocast(self):
        return precision.autocast(self.device, self.dtype)

    def rays(self, view: int):
        """Origins and directions (H, W, 3) of every pixel of a scene view."""
        return self.camera_rays(torch.from_numpy(self.scene.poses[view]).to(self.device))

    def camera_rays(self, c2w: torch.Tensor):
        return get_rays(self.scene.height, self.scene.width, self.scene.focal, c2w)

    def render(self, model: nn.Module, origins: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
        """rgb (H, W, 3) and depth (H, W) of a ray grid, in eval mode and the evaluation's autocast."""
        was_training = model.training
        model.eval()
        with self.autocast():
            rendered = render_image(model, origins, dirs, self.config.chunk)
        model.train(was_training)
        return rendered

    def test_views(self, model: nn.Module, views=None) -> list[dict] | None:
        """Per view (all test views by default), in order: the rendered rgb and depth, and PSNR and SSIM
        against the ground truth. Under DDP every rank calls it and renders its share of the views; rank 0
        gets them all and the other ranks None (bitnerf_ddp.map_across_ranks)."""
        views = [int(v) for v in (self.scene.i_test if views is None else views)]
        return bitnerf_ddp.map_across_ranks(lambda view: self.test_view(model, view), views, self.device)

    def test_view(self, model: nn.Module, view: int) -> dict:
        rendered, target = self.render(model, *self.rays(view)), self.target(view)
        return {"view": view, **rendered, "psnr": psnr(rendered["rgb"], target), "ssim": ssim(rendered["rgb"], target)}

    def target(self, view: int) -> torch.Tensor:
        return torch.from_numpy(self.scene.images[view]).to(self.device)

    def metrics(self, results: list[dict], split: str = "test") -> dict:
        """summary.json's metrics of test_views' results on the split's views (test, val): PSNR, SSIM, and the
        mean absolute depth error where the scene has ground-truth depth."""
        metrics = {
            f"psnr_{split}": round(float(np.mean([r["psnr"] for r in results])), 3),
            f"ssim_{split}": round(float(np.mean([r["ssim"] for r in results])), 4),
            f"psnr_{split}_per_view": [round(r["psnr"], 3) for r in results],
        }
        if self.scene.depths is not None:
            errors = [depth_error(r["depth"], self.scene.depths[r["view"]]) for r in results]
            metrics[f"depth_abs_error_{split}"] = round(float(np.mean(errors)), 4)
        return metrics

    def write_test_views(self, results: list[dict]) -> None:
        """renders/: each test view's render, ground truth and depth map."""
        renders = self.run_dir / rundir.RENDERS
        renders.mkdir(exist_ok=True)
        near, far = self.scene.near, self.scene.far
        for r in results:
            iio.imwrite(renders / f"rgb_{r['view']:03d}.png", to_uint8(r["rgb"]))
            iio.imwrite(renders / f"gt_{r['view']:03d}.png", to_uint8(self.target(r["view"])))
            iio.imwrite(renders / f"depth_{r['view']:03d}.png", colorize_depth(r["depth"], near, far))

    def video(self, model: nn.Module) -> list[str]:
        """A 360-degree orbit at the training cameras' median radius and elevation, colour beside depth;
        returns the paths written. Under DDP every rank calls it and renders its share of the frames, and
        rank 0 writes the video (the other ranks return [])."""
        centres = self.scene.poses[self.scene.i_train, :3, 3]
        radius = float(np.median(np.linalg.norm(centres, axis=-1)))
        elevation = float(np.degrees(np.median(np.arcsin(np.clip(centres[:, 2] / radius, -1, 1)))))

        def frame(theta: float) -> np.ndarray:
            c2w = torch.from_numpy(pose_spherical(theta, -elevation, radius)).to(self.device)
            rendered = self.render(model, *self.camera_rays(c2w))
            return np.concatenate(
                [to_uint8(rendered["rgb"]), colorize_depth(rendered["depth"], self.scene.near, self.scene.far)], axis=1
            )

        thetas = list(np.linspace(0.0, 360.0, self.config.video_frames, endpoint=False))
        frames = bitnerf_ddp.map_across_ranks(frame, thetas, self.device, desc="video")
        return [] if frames is None else write_video(str(self.run_dir / rundir.VIDEO_STEM), frames)

    @torch.no_grad()
    def matmul_census(self, model: NeRF) -> MatmulCensus:
        """What model's Linear layers compute in (measured.py), on one chunk of rays of the first test view
        in eval mode and the evaluation's autocast; compiled fields run eagerly meanwhile."""
        origins, dirs = self.rays(self.scene.i_test[0])
        was_training = model.training
        model.eval()
        with self.autocast(), MatmulCensus(model) as matmuls:
            model(origins.reshape(-1, 3)[: self.config.chunk], dirs.reshape(-1, 3)[: self.config.chunk])
        model.train(was_training)
        return matmuls

    def samples_per_ray(self, model: NeRF, results: list[dict] | None = None) -> dict[str, float]:
        """Per pass (coarse, fine): the samples per ray its MLP evaluates. With an occupancy grid, measured:
        the mean over the pixels of test_views' results; without one, all of the pass's samples."""
        nominal = model.samples_per_ray()
        if model.occupancy is None:
            return nominal
        if results is None:
            raise ValueError(
                "a model with an occupancy grid evaluates what its renders measured: pass test_views' results"
            )
        return {
            name: torch.cat([r[f"samples_{name}"].reshape(-1) for r in results]).double().mean().item()
            for name in nominal
        }

    def skipped_samples(self, model: NeRF, results: list[dict]) -> dict:
        """summary.json's fractions of the samples that skipped the MLP, per pass: in training (over the run's
        steps, on this process's rays: the grid counts them and the checkpoint keeps the count) and in
        rendering test_views' results; none without an occupancy grid."""
        if model.occupancy is None:
            return {}
        nominal, rendered = model.samples_per_ray(), self.samples_per_ray(model, results)
        skipped = {}
        for index, name in enumerate(nominal):
            evaluated, total = model.occupancy.trained_samples[index].tolist()
            skipped[f"skipped_train_{name}"] = round(1.0 - evaluated / max(total, 1), 4)
            skipped[f"skipped_render_{name}"] = round(1.0 - rendered[name] / nominal[name], 4)
        return skipped

    @torch.no_grad()
    def layers(self, model: NeRF, results: list[dict] | None = None) -> dict:
        """layers.json: every Linear layer in execution order with its shape, bitwidths, format and matmul shape
        (LayerMatmul.record) and measured sparsity, and the model's precision, weight bits, int8 kernel and whether
        its fp8 matmuls ran emulated (summary.json's; None without fp8 layers), all measured on one chunk
        (measured.py).

        input_sparsity: the fraction of exactly-zero inputs over one chunk of rays of the first test view.
        weight_density: the fraction of nonzero weights the layer multiplies by (BitNeRF's quantized layers:
        its ternary weights, bitnerf.ternarize; others: the weights themselves). joint_density: over the same
        chunk, the fraction of the layer's multiplications whose input and weight are both nonzero, averaged
        over samples of sum_k [x_k != 0] * [w_jk != 0] / (in * out): what an accelerator skipping both
        operands' zeros skips, against the product of the two densities that independence would give.
        samples_per_frame: 800x800 rays times the samples per ray the layer's pass evaluates (samples_per_ray;
        with an occupancy grid measured on results, test_views' renders); samples_per_frame_all: the same
        with every sample evaluated (without a grid, the two are equal).
        """
        names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        zeros: dict[str, list[float]] = {}
        nonzero_inputs: dict[str, torch.Tensor] = {}  # per input feature: the samples where it is nonzero

        def count_zeros(module, inputs, output):
            x = inputs[0]
            zeros.setdefault(names[module], [0.0, 0.0])
            zeros[names[module]][0] += (x == 0).sum().item()
            zeros[names[module]][1] += x.numel()
            per_feature = (x != 0).reshape(-1, x.shape[-1]).sum(dim=0, dtype=torch.float64)
            nonzero_inputs[names[module]] = nonzero_inputs.get(names[module], 0) + per_feature

        handles = [m.register_forward_hook(count_zeros) for m in names]
        matmuls = self.matmul_census(model)
        for h in handles:
            h.remove()
        per_ray = {name: round(rundir.FRAME_PIXELS * n) for name, n in self.samples_per_ray(model, results).items()}
        per_ray_all = {name: round(rundir.FRAME_PIXELS * n) for name, n in model.samples_per_ray().items()}
        layers = []
        for name in zeros:  # dicts keep insertion order: the order the hooks fired
            module = model.get_submodule(name)
            quantized = isinstance(module.weight, bitnerf.BitNetTrainingLinearWeight)
            weight = bitnerf.ternarize(module.weight)[0] if quantized else module.weight.detach()
            nonzero_weights = (weight != 0).sum(dim=0, dtype=torch.float64)  # per input feature, over outputs
            samples = zeros[name][1] / module.in_features
            layers.append(
                {
                    "name": name,
                    "in_features": module.in_features,
                    "out_features": module.out_features,
                    **matmuls.layers[name].record(),
                    "input_sparsity": round(zeros[name][0] / zeros[name][1], 4),
                    "weight_density": round(nonzero_weights.sum().item() / weight.numel(), 4),
                    "joint_density": round(
                        (nonzero_inputs[name] @ nonzero_weights).item()
                        / (samples * module.in_features * module.out_features),
                        4,
                    ),
                    "samples_per_frame": per_ray[name.split(".")[0]],
                    "samples_per_frame_all": per_ray_all[name.split(".")[0]],
                }
            )
        return {
            "samples_per_frame": sum(per_ray.values()),
            "precision": matmuls.precision(),
            "weight_bits": matmuls.weight_bits(),
            "int8_kernel": matmuls.int8_kernel(),
            "emulated": matmuls.emulated(),
            "layers": layers,
        }


def evaluate_trained(evaluation: Evaluation, model, log: RunLog | None) -> dict:
    """Every test view (metrics and renders) and validation view (metrics), the video, layers.json and the
    model file; returns the summary's fields that describe the trained model, its precision and weight bits
    as layers.json measured them. Under DDP every rank renders its share of the views and frames; rank 0 alone
    writes the files (the census renders one chunk), and the others return {}."""
    config, scene, run_dir = evaluation.config, evaluation.scene, evaluation.run_dir
    results = evaluation.test_views(model)
    validation = evaluation.test_views(model, scene.i_val) if scene.i_val.size else None
    video = evaluation.video(model)
    if results is None:
        return {}
    evaluation.write_test_views(results)
    layers = evaluation.layers(model, results)
    measured.check_layers(layers, config, evaluation.dtype, "the final evaluation")
    write_json(run_dir / rundir.LAYERS, layers)
    model_path = rundir.write_model_file(run_dir, model, config.model, evaluation.dtype)
    log.video(video[-1])
    return {
        "experiment": config.group or config.name,
        "seed": config.seed,
        "model": config.model,
        "precision": layers["precision"],
        "global_batch_rays": config.batch_rays,
        **evaluation.metrics(results),
        **(
            {**evaluation.metrics(validation, "val"), "val_views": [r["view"] for r in validation]}
            if validation
            else {}
        ),
        **evaluation.skipped_samples(model, results),
        "weight_bits": layers["weight_bits"],
        "int8_kernel": layers["int8_kernel"],
        "emulated": layers["emulated"],
        "compiled": measured.compiled(model),
        "model_bytes": model_path.stat().st_size,
        "scene": scene.name,
        "device": str(evaluation.device),
        **device_identity(evaluation.device),
        "torch_version": torch.__version__,
        "commit": git_commit(CODE),
        **precision.float32_matmul_settings(evaluation.device),
    }
