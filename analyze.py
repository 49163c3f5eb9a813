"""Analyses of trained runs, after the Accelerating-NeRFs seed: which work could a NeRF accelerator skip?

`python analyze.py [--runs runs] [--out report] [--only NAME ...]` runs the analyses on every run
directory and merges their results into `report/analyses.json`, which report.py renders. Each one is
reproducible on its own with `--only NAME`:

- activation_sparsity: per Linear layer, the fraction of exactly-zero inputs (layers.json, measured
  by the training run on test rays): the MACs that zero-gating could skip.
- weight_sparsity: per Linear layer, the fraction of weights with |w| <= 1e-3 * max|w| of that layer;
  for BitNeRF's quantized layers also the exact fraction of zeros among the ternary weights its
  forward pass multiplies by.
- render_weight_sparsity: on the first test view (--views N: more), one pixel of every 2x2 block,
  the fraction of samples whose compositing weight is below 1e-4 (they change no pixel visibly),
  split into empty space in front of the surface (what empty-space skipping could skip) and samples
  behind it, where the transmittance has fallen below 1e-4 (what early ray termination could skip).
- time_breakdown: torch.profiler over the render of the first test view, split into ray generation,
  sampling, positional encoding, MLP, compositing and the rest.

The model-based analyses evaluate the model as training evaluated it (eval mode, the run's autocast).
"""

import contextlib
import functools
import os
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from tqdm import tqdm

import bitnerf
import nerf
import rundir
from devices import resolve_device
from evaluation import Evaluation
from files import read_json, write_json
from utils import OneLineParser, UserError, exit_on_user_error

# The CUDA build's profiler library (Kineto) logs its stages, and a failed GPU probe on a CPU-only
# machine, to stderr at every use; silence it unless the user asked for its logs.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

NEAR_ZERO_WEIGHT = 1e-3  # a weight counts as near zero at |w| <= NEAR_ZERO_WEIGHT * max|w| of its layer
SKIPPABLE_WEIGHT = 1e-4  # a sample whose compositing weight is below this contributes < 1e-4 of a pixel
# render_weight_sparsity renders one pixel of every PIXEL_STRIDE x PIXEL_STRIDE block: a quarter of the
# view's pixels, spread over all of it, keeps the analyses short on 2 CPU cores (docs/report.md, "The analyses").
PIXEL_STRIDE = 2
TIME_STAGES = ("ray generation", "sampling", "encoding", "MLP", "compositing", "other")


class TrainedRun:
    """A run directory whose config, scene and model are loaded on first use, once for every analysis."""

    def __init__(self, run_dir: Path, data: str | None, device: torch.device, n_views: int):
        self.run_dir, self.data, self.device, self.n_views = run_dir, data, device, n_views

    @functools.cached_property
    def loaded(self):
        return rundir.load_trained(self.run_dir, self.data, self.device)

    @property
    def config(self):
        return self.loaded[0]

    @property
    def scene(self):
        return self.loaded[1]

    @property
    def model(self) -> nerf.NeRF:
        return self.loaded[2]

    @functools.cached_property
    def evaluation(self) -> Evaluation:
        """The evaluation the run's training did: its autocast dtype on its scene."""
        return Evaluation.of(self.config, self.scene, self.device)

    @property
    def views(self) -> list[int]:
        return [int(v) for v in self.scene.i_test[: self.n_views]]


def activation_sparsity(run: TrainedRun) -> list[dict]:
    layers = rundir.read_layers(run.run_dir)
    return [{"name": layer["name"], "input_sparsity": layer["input_sparsity"]} for layer in layers]


@torch.no_grad()
def weight_sparsity(run: TrainedRun) -> list[dict]:
    """Near-zero fraction per Linear layer (of the latent weights, for BitNeRF) and BitNeRF's ternary zeros."""
    quantized = bitnerf.quantized_linears(run.model)
    layers = []
    for name, module in run.model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = (module.weight._data if name in quantized else module.weight).float().abs()
        layer = {"name": name, "near_zero": round((weight <= NEAR_ZERO_WEIGHT * weight.max()).float().mean().item(), 4)}
        if name in quantized:
            ternary, _ = bitnerf.ternarize(module.weight)
            layer["ternary_zero"] = round((ternary == 0).float().mean().item(), 4)
        layers.append(layer)
    return layers


@torch.no_grad()
def render_weight_sparsity(run: TrainedRun) -> dict:
    """Per pass (coarse, fine): MLP samples per ray and the fractions skippable, in empty space and behind the
    surface."""
    model, chunk = run.model, run.config.chunk
    field_names = {model.coarse: "coarse", model.fine: "fine"}
    counts = {name: {"samples": 0, "skippable": 0, "behind_surface": 0} for name in model.samples_per_ray()}
    render = model._render

    def counting_render(field, origins, dirs, viewdirs, t):
        out = render(field, origins, dirs, viewdirs, t)
        weights = out["weights"]
        # w_i = T_i * alpha_i, and the weights before sample i sum to 1 - T_i.
        transmittance = 1.0 - (torch.cumsum(weights, -1) - weights)
        count = counts[field_names[field]]
        count["samples"] += weights.numel()
        count["skippable"] += int((weights < SKIPPABLE_WEIGHT).sum())
        count["behind_surface"] += int((transmittance < SKIPPABLE_WEIGHT).sum())
        return out

    with mock.patch.object(model, "_render", counting_render), run.evaluation.autocast():
        for view in run.views:
            origins, dirs = (x[::PIXEL_STRIDE, ::PIXEL_STRIDE].reshape(-1, 3) for x in run.evaluation.rays(view))
            for origins_chunk, dirs_chunk in zip(origins.split(chunk), dirs.split(chunk)):
                model(origins_chunk, dirs_chunk)
    passes = {}
    for name, count in counts.items():
        # A sample behind the surface has w <= T < 1e-4: it is skippable too.
        passes[name] = {
            "samples_per_ray": model.samples_per_ray()[name],
            "skippable": round(count["skippable"] / count["samples"], 4),
            "empty_space": round((count["skippable"] - count["behind_surface"]) / count["samples"], 4),
            "behind_surface": round(count["behind_surface"] / count["samples"], 4),
        }
    return {"views": run.views, "passes": passes}


def profiled(label: str, fn, device: torch.device):
    """fn inside a torch.profiler range; on CUDA it waits for the GPU, so the range holds the kernels' time too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            out = fn(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return out

    return wrapper


@torch.no_grad()
def time_breakdown(run: TrainedRun) -> dict:
    """Seconds per rendering stage of one test image, from torch.profiler ranges around nerf.py's functions.

    The ranges wrap nerf.py's functions only while profiling (nerf.py itself is unchanged); the MLP is
    the radiance field's time less its positional encoding, and `other` is the rest of the render
    (chunking, sorting the fine samples, view directions).
    """
    model, device, chunk, view = run.model, run.device, run.config.chunk, run.views[0]
    stage_functions = [
        (nerf, "sample_stratified", "sampling"),
        (nerf, "sample_pdf", "sampling"),
        (nerf.PositionalEncoding, "forward", "encoding"),
        (nerf.RadianceField, "forward", "field"),
        (nerf, "composite", "compositing"),
    ]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with contextlib.ExitStack() as patches, run.evaluation.autocast():
        for owner, attribute, label in stage_functions:
            patches.enter_context(
                mock.patch.object(owner, attribute, profiled(label, getattr(owner, attribute), device))
            )
        origins, dirs = run.evaluation.rays(view)
        nerf.render_image(model, origins, dirs, chunk)  # warm-up: first-call allocations and kernel choices

        def render():
            origins, dirs = profiled("ray generation", run.evaluation.rays, device)(view)
            nerf.render_image(model, origins, dirs, chunk)

        with profile(activities=activities) as profiler:
            profiled("render", render, device)()
    seconds = {event.key: event.cpu_time_total / 1e6 for event in profiler.key_averages()}
    stages = {
        "ray generation": seconds["ray generation"],
        "sampling": seconds["sampling"],
        "encoding": seconds["encoding"],
        "MLP": seconds["field"] - seconds["encoding"],
        "compositing": seconds["compositing"],
    }
    stages["other"] = seconds["render"] - sum(stages.values())
    return {
        "view": view,
        "pixels": run.scene.height * run.scene.width,
        "device": str(device),
        "total_s": round(seconds["render"], 5),
        "stages_s": {name: round(stages[name], 5) for name in TIME_STAGES},
    }


ANALYSES = {
    "activation_sparsity": activation_sparsity,
    "weight_sparsity": weight_sparsity,
    "render_weight_sparsity": render_weight_sparsity,
    "time_breakdown": time_breakdown,
}


def analyze(
    runs_dir: Path,
    out_dir: Path,
    names=tuple(ANALYSES),
    data: str | None = None,
    device: torch.device = torch.device("cpu"),
    n_views: int = 1,
) -> dict:
    """Run the named analyses on every run and merge them into out_dir/analyses.json; returns its contents."""
    runs = [TrainedRun(run_dir, data, device, n_views) for run_dir, _ in rundir.find_runs(runs_dir)]
    path = out_dir / "analyses.json"
    results = read_json(path) if path.exists() else {}
    # What the analyses' thresholds and stages are, for report.py, which reads this file without torch.
    results["definitions"] = {
        "near_zero_weight": NEAR_ZERO_WEIGHT,
        "skippable_weight": SKIPPABLE_WEIGHT,
        "pixel_stride": PIXEL_STRIDE,
        "time_stages": list(TIME_STAGES),
    }
    for name in names:
        results[name] = {}
    for run in tqdm(runs, desc="analyses", disable=None):
        for name in names:
            results[name][run.run_dir.name] = ANALYSES[name](run)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, results)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="analyze.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the folder of run directories")
    parser.add_argument("--out", type=Path, default=Path("report"), help="where analyses.json goes")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ANALYSES,
        default=list(ANALYSES),
        metavar="NAME",
        help=f"run only these analyses: {', '.join(ANALYSES)}",
    )
    parser.add_argument("--data", help="the scene, if not where the runs found it")
    parser.add_argument("--views", type=int, default=1, help="test views per run for render_weight_sparsity")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    with exit_on_user_error():
        args = parser.parse_args(argv)
        if args.views < 1:
            raise UserError(f"--views must be at least 1, got {args.views}")
        analyze(args.runs, args.out, args.only, args.data, resolve_device(args.device), args.views)
    print(f"analyses {', '.join(args.only)} -> {args.out / 'analyses.json'}")


if __name__ == "__main__":
    main()
