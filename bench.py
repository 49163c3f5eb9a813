"""Training throughput, FLOPs and MFU of each experiment, and the seed's data pipeline for comparison.

`python bench.py --quick` measures, in one process, for each experiment's configuration (the quick
preset with --quick, as `expN.py --quick` trains it):

- throughput of the real training step (step.train_step, as train.py runs it): samples/s (MLP queries)
  and rays/s over a
  fixed number of steps after warm-up, and the peak memory;
- the model's FLOPs per sample, counted from its Linear shapes: 2*in*out per layer for the forward
  pass, times 3 for forward and backward (the backward pass multiplies for the input's gradient and
  for the weight's, each as much as the forward). Autograd skips the first layer's input gradient, so
  it runs slightly fewer than counted (tests/test_bench.py checks both against FlopCounterMode);
- the machine's dense matmul rate at the same shapes and compute dtype (each layer's x @ W.T, g @ W
  and g.T @ x), and MFU = the model FLOP/s achieved ÷ that rate;
- the share of a training step outside the MLP (ray batching, sampling, encoding, compositing, loss,
  optimizer), from a torch.profiler trace;
- the seed's pipeline on the same model: one whole image per step, its points sampled and encoded in
  a DataLoader worker and shipped to the device, then the coarse MLP, compositing and the optimizer.

Training, the matmuls and the seed pipeline are timed in interleaved rounds and each keeps its
fastest round, so that load from other processes does not skew one side of a ratio alone. The table
goes to stdout, the rows to bench.json.
"""

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

import bitnerf
import configs
import precision
from camera import get_rays
from configs import ExperimentConfig
from dataset import RaySampler, Scene, load_scene
from devices import Stopwatch, peak_memory_bytes, reset_peak_memory, resolve_device
from files import write_json
from nerf import MLP_RANGE, NeRF, RadianceField, composite
from step import Optimization, train_step
from utils import OneLineParser, UserError, exit_on_user_error

# Forward and backward FLOPs per forward FLOP: the backward pass computes the input's and the weight's gradient.
FORWARD_BACKWARD = 3
# The experiments one process can run (the distributed ones launch several processes).
EXPERIMENTS = tuple(name for name in configs.AXES if not configs.experiment(name).distributed)
STEP_RANGE = "train_step"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
ACCUMULATE_GRAD = BACKWARD_PREFIX + "torch::autograd::AccumulateGrad"


@dataclass(frozen=True)
class Budget:
    """How much to run: untimed warm-up steps, then rounds of timed training, matmul and seed-pipeline steps."""

    warmup: int = 10
    steps: int = 60  # timed training steps, split evenly across the rounds
    seed_steps: int = 6  # timed seed-pipeline steps (whole images), split across the rounds
    # Many short rounds: under bursts of load from other processes, each measurement is more likely
    # to find a quiet round (fewer, longer ones let one burst skew a ratio: docs/performance.md, "bench.py").
    rounds: int = 6
    profile_steps: int = 5


def linear_shapes(model: NeRF, batch_rays: int) -> list[tuple[int, int, int]]:
    """(rows, in_features, out_features) of every Linear layer's matmul in a step: rows are the samples its field
    sees."""
    per_ray = model.samples_per_ray()
    return [
        (batch_rays * per_ray[name.split(".")[0]], m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]


def forward_flops(shapes: list[tuple[int, int, int]]) -> int:
    """The forward matmuls' FLOPs: a multiply and an add per (row, input, output) of each layer."""
    return sum(2 * rows * n_in * n_out for rows, n_in, n_out in shapes)


def flops_per_sample(model: NeRF) -> float:
    """Training FLOPs per MLP query: the Linear layers' forward FLOPs times FORWARD_BACKWARD."""
    return FORWARD_BACKWARD * forward_flops(linear_shapes(model, batch_rays=1)) / sum(model.samples_per_ray().values())


def matmul_seconds(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """Wall time of `repeats` passes over every layer's forward and backward matmuls, as autograd runs them."""
    operands = {
        shape: [
            torch.randn(size, dtype=dtype, device=device)
            for size in ((shape[0], shape[1]), (shape[2], shape[1]), (shape[0], shape[2]))
        ]
        for shape in set(shapes)
    }
    counts = Counter(shapes)

    def one_pass():
        for shape, count in counts.items():
            x, weight, grad = operands[shape]
            for _ in range(count):
                x @ weight.T, grad @ weight, grad.T @ x

    one_pass()  # warm-up: the allocator's blocks and the BLAS library's threads
    clock = Stopwatch(device)
    with clock:
        for _ in range(repeats):
            one_pass()
    return clock.elapsed


def event_duration(event, device: torch.device) -> float:
    """A profiler event's time in microseconds: its kernels' time on CUDA, its CPU time elsewhere."""
    return event.device_time_total if device.type == "cuda" else event.cpu_time_total


def non_mlp_share(step, steps: int, device: torch.device) -> float:
    """The fraction of training-step time outside the MLP, from a torch.profiler trace of `steps` calls of step(i).

    The MLP's time is its forward ops (inside nerf.MLP_RANGE), the backward nodes those ops created
    (matched by autograd sequence number) and the gradient accumulation into its weights. Everything
    else counts against it, Python overhead between ops included. On CUDA the times are kernel times.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for i in range(steps):
            with torch.profiler.record_function(STEP_RANGE):
                step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = profile.events()

    def duration(event) -> float:
        return event_duration(event, device)

    def descendants(event):
        for child in event.cpu_children:
            yield child
            yield from descendants(child)

    mlp_ranges = [e for e in events if e.name == MLP_RANGE]
    mlp_ops = {e.sequence_nr for r in mlp_ranges for e in descendants(r) if e.sequence_nr >= 0}
    mlp_backward = [
        e
        for e in events
        if e.name == ACCUMULATE_GRAD or (e.name.startswith(BACKWARD_PREFIX) and e.sequence_nr in mlp_ops)
    ]
    # Every op sits under a top-level CPU event: a step, or on CUDA also a backward node on autograd's device thread.
    total = sum(duration(e) for e in events if e.cpu_parent is None and e.device_type == DeviceType.CPU)
    return 1.0 - sum(duration(e) for e in mlp_ranges + mlp_backward) / total


class SeedViews(Dataset):
    """The seed's data: one training view per item, its rays' stratified samples encoded here, in a DataLoader
    worker."""

    def __init__(self, scene: Scene, field: RadianceField, n_samples: int):
        self.scene, self.n_samples = scene, n_samples
        self.pos_encoding = copy.deepcopy(field.pos_encoding).cpu()
        self.dir_encoding = copy.deepcopy(field.dir_encoding).cpu() if field.use_viewdirs else None

    def __len__(self) -> int:
        return len(self.scene.i_train)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        scene, view = self.scene, self.scene.i_train[index]
        origins, dirs = (
            x.reshape(-1, 3)
            for x in get_rays(scene.height, scene.width, scene.focal, torch.from_numpy(scene.poses[view]))
        )
        bin_width = (scene.far - scene.near) / self.n_samples
        t = scene.near + (torch.arange(self.n_samples) + torch.rand(len(origins), self.n_samples)) * bin_width
        points = origins[:, None] + dirs[:, None] * t[..., None]
        item = {
            "encoded": self.pos_encoding(points),
            "t": t,
            "dirs": dirs,
            "rgb": torch.from_numpy(scene.images[view]).reshape(-1, 3),
        }
        if self.dir_encoding is not None:
            item["encoded_dirs"] = self.dir_encoding(F.normalize(dirs, dim=-1)[:, None].expand(points.shape))
        return item


class SeedPipeline:
    """The seed's training step on the same coarse MLP: a whole image's encoded samples from a DataLoader worker."""

    def __init__(self, config: ExperimentConfig, scene: Scene, device: torch.device, autocast_dtype):
        self.scene, self.device, self.autocast_dtype = scene, device, autocast_dtype
        self.field = bitnerf.build_model(config, scene, device).coarse.train()
        optimization = Optimization.build(config, self.field, device, autocast_dtype)
        self.optimizer, self.scaler = optimization.optimizer, optimization.scaler
        self.views = SeedViews(scene, self.field, config.n_coarse)
        self.samples_per_step = scene.height * scene.width * config.n_coarse

    def step(self, item: dict[str, torch.Tensor]) -> None:
        item = {k: v.to(self.device, non_blocking=True) for k, v in item.items()}
        with precision.autocast(self.device, self.autocast_dtype):
            rgb, density = self.field.decode(item["encoded"], item.get("encoded_dirs"))
        out = composite(rgb.float(), density.float(), item["t"], item["dirs"], self.scene.far, self.scene.white_bkgd)
        loss = F.mse_loss(out["rgb"], item["rgb"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def seconds(self, steps: int) -> float:
        """Wall time of `steps` steps, after an untimed one that starts the worker (stopped again at the end)."""
        loader = DataLoader(
            self.views,
            batch_size=None,
            num_workers=1,
            pin_memory=self.device.type == "cuda",
            sampler=RandomSampler(self.views, replacement=True, num_samples=steps + 1),
        )
        items = iter(loader)
        self.step(next(items))
        clock = Stopwatch(self.device)
        with clock:
            for item in items:
                self.step(item)
        return clock.elapsed


def bench_experiment(config: ExperimentConfig, scene: Scene, device: torch.device, budget: Budget) -> dict:
    """One row of bench.json: throughput, FLOPs, MFU, non-MLP share and memory of config's training step."""
    autocast_dtype = precision.amp_dtype(config, device)
    torch.manual_seed(config.seed)
    model = bitnerf.build_model(config, scene, device).train()
    optimization = Optimization.build(config, model, device, autocast_dtype)
    sampler = RaySampler(scene, device, config.batch_rays, config.seed, config.jitter_per_ray)

    def train_steps(first: int, count: int) -> None:
        for step in range(first, first + count):
            train_step(
                model, sampler.batch(step), optimization, config, lambda: precision.autocast(device, autocast_dtype)
            )

    steps_per_round = max(1, budget.steps // budget.rounds)
    seed_steps_per_round = max(1, budget.seed_steps // budget.rounds)
    shapes = linear_shapes(model, config.batch_rays)
    seed = SeedPipeline(config, scene, device, autocast_dtype)
    reset_peak_memory(device)
    train_steps(0, budget.warmup)
    train_s, matmul_s, seed_s = [], [], []
    for round_index in range(budget.rounds):
        clock = Stopwatch(device)
        with clock:
            train_steps(budget.warmup + round_index * steps_per_round, steps_per_round)
        train_s.append(clock.elapsed)
        if round_index == 0:
            peak_mem = peak_memory_bytes(device)  # before the seed pipeline's whole-image batches
        matmul_s.append(matmul_seconds(shapes, autocast_dtype or torch.float32, device, steps_per_round))
        seed_s.append(seed.seconds(seed_steps_per_round))
    share = non_mlp_share(lambda i: train_steps(i, 1), budget.profile_steps, device)

    samples_per_step = config.batch_rays * config.samples_per_ray
    samples_per_s = samples_per_step * steps_per_round / min(train_s)
    matmul_flops_per_s = FORWARD_BACKWARD * forward_flops(shapes) * steps_per_round / min(matmul_s)
    seed_samples_per_s = seed.samples_per_step * seed_steps_per_round / min(seed_s)
    model_flops_per_s = samples_per_s * flops_per_sample(model)
    return {
        "experiment": config.name,
        "model": config.model,
        "precision": precision.precision_name(config, autocast_dtype),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_rays": config.batch_rays,
        "samples_per_ray": config.samples_per_ray,
        "timed_steps": steps_per_round,
        "samples_per_s": round(samples_per_s),
        "rays_per_s": round(samples_per_s / config.samples_per_ray),
        "flops_per_sample": flops_per_sample(model),
        "model_flops_per_s": round(model_flops_per_s),
        "matmul_dtype": str(autocast_dtype or torch.float32).removeprefix("torch."),
        "matmul_flops_per_s": round(matmul_flops_per_s),
        "mfu": round(model_flops_per_s / matmul_flops_per_s, 3),
        "non_mlp_share": round(share, 3),
        "peak_mem_bytes": peak_mem,
        "seed_pipeline_samples_per_s": round(seed_samples_per_s),
        "speedup_vs_seed_pipeline": round(samples_per_s / seed_samples_per_s, 2),
    }


def print_table(rows: list[dict]) -> None:
    print(
        f"{'experiment':<11}{'precision':<14}{'samples/s':>11}{'rays/s':>9}{'model GFLOP/s':>15}"
        f"{'matmul GFLOP/s':>16}{'MFU':>7}{'non-MLP':>9}{'peak MiB':>10}{'seed samples/s':>16}{'speedup':>9}"
    )
    for r in rows:
        print(
            f"{r['experiment']:<11}{r['precision']:<14}{r['samples_per_s']:>11,}{r['rays_per_s']:>9,}"
            f"{r['model_flops_per_s'] / 1e9:>15.1f}{r['matmul_flops_per_s'] / 1e9:>16.1f}{r['mfu']:>7.2f}"
            f"{r['non_mlp_share']:>9.1%}{r['peak_mem_bytes'] / 2**20:>10,.0f}{r['seed_pipeline_samples_per_s']:>16,}"
            f"{r['speedup_vs_seed_pipeline']:>8.1f}x"
        )


def parse_experiments(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown or not names:
        raise UserError(f"--experiments takes a comma-separated list from {', '.join(EXPERIMENTS)}, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each experiment's quick CPU preset (as expN.py --quick)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help="comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="where the rows go (default bench.json)")
    parser.add_argument("--data", help="a scene .npz or Blender folder (default: the built-in scene)")
    parser.add_argument("--device", default="auto", choices=configs.DEVICES)
    for field in ("warmup", "steps", "seed_steps", "rounds", "profile_steps"):
        parser.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(Budget, field), metavar="N")
    with exit_on_user_error():
        args = parser.parse_args(argv)
        names = parse_experiments(args.experiments)
        budget = Budget(args.warmup, args.steps, args.seed_steps, args.rounds, args.profile_steps)
        if min(budget.steps, budget.seed_steps, budget.rounds, budget.profile_steps) < 1 or budget.warmup < 0:
            raise UserError(
                "--steps, --seed-steps, --rounds and --profile-steps must be at least 1, --warmup at least 0"
            )
        device = resolve_device(args.device)
        scene = load_scene(args.data)
    base = configs.QUICK if args.quick else configs.EXP1
    rows = [
        bench_experiment(configs.experiment(name, base), scene, device, budget)
        for name in tqdm(names, desc="bench", disable=None)
    ]
    write_json(args.out, rows)
    print_table(rows)


if __name__ == "__main__":
    main()
