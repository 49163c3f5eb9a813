"""Experiment configurations: one dataclass, EXP1, and every other experiment as its twin with one axis
changed: exp2, exp4 and exp5 are exp1 with one axis, exp3 is exp2 with a 4x batch (so against exp1 it
changes two: AMP and the batch), exp6 is exp4 with DDP (against exp1: BitNeRF and DDP).

An experiment is a function of a base configuration (`AXES`), so the same axis applies to the full
configuration (`EXP1`) and to the CPU preset (`QUICK`): `experiment("exp3", QUICK)` is the quick
exp2 with a 4x batch at the same rays, nothing else changed.
"""

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, replace

import gpus
from utils import OneLineParser, UserError, without_option

PRECISIONS = ("fp32", "amp")
AMP_DTYPES = ("auto", "fp16", "bf16")
COMPILE_MODES = ("auto", "on", "off")
MODELS = ("nerf", "bitnerf")
FIRST_LAYERS = ("ternary", "int8", "fp32")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("auto", "online", "offline", "disabled")
# The int8 matmul that BitNeRF's int8 and ternary layers run (bitnerf.INT8_KERNELS); auto: plan.py's device rule.
INT8_KERNELS = ("auto", "torchao-triton", "int-mm", "int-mm-padded")
# What the Linear layers train as, each a model converter applied in one place (bitnerf.build_model):
# none (the model's own layers), int8 (int8 weights and activations in the forward pass) and fp8 with
# torchao's tensorwise or rowwise scaling.
QUANTIZED_TRAINING = ("none", "int8", "fp8-tensorwise", "fp8-rowwise")
# DDP's gradient communication: plain all-reduce, or a torch.distributed.algorithms.ddp_comm_hooks hook.
GRAD_COMPRESSIONS = ("none", "bf16", "powersgd")
PRESETS = ("full", "quick")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "exp1"
    # The preset the run started from (QUICK sets "quick"; --quick chooses it, it is no option of its own).
    # Overrides on top keep it: a quick run with more steps is still a quick-preset run, and W&B tags it so.
    preset: str = "full"
    data: str | None = None  # a tiny-nerf .npz or a Blender scene folder; None: the built-in scene
    downscale: int = 1  # Blender folders only: load images at 1/downscale resolution
    # Scenes without validation views (.npz, the built-in scene): hold out this many training views, evenly
    # spaced, as validation views (dataset.with_validation); settings are chosen on them, never on test views.
    val_views: int = 0
    out: str = "runs"
    device: str = "auto"
    seed: int = 0
    # The runs of one experiment on several seeds (--seeds) share a group, which the report and W&B
    # average over; None: the run is a group of its own, named as the run.
    group: str | None = None

    # Model: the NeRF of Mildenhall et al. (2020) with 64 coarse + 64 fine samples, enough at 100x100.
    model: str = "nerf"
    # BitNeRF only: also quantize the density and colour heads. Off, as in torchao's BitNet recipe:
    # ternary heads cost test PSNR and would save only a few of the model's weights (BENCHMARKS.md,
    # "BitNeRF: ternary heads or high-precision heads").
    quantize_heads: bool = False
    # BitNeRF only: what each field's first layer, the one that multiplies the positional encoding, trains
    # as: ternary like the hidden layers, int8 (int8 weights and inputs, bitnerf.py) or fp32. Its bits
    # count in layers.json and in the model file.
    first_layer: str = "ternary"
    depth: int = 8
    width: int = 256
    skips: tuple[int, ...] = (4,)
    pos_freqs: int = 10
    dir_freqs: int = 4
    use_viewdirs: bool = True
    n_coarse: int = 64
    n_fine: int = 64
    perturb: bool = True  # jitter training samples within their bins (off: deterministic samples)
    # Empty-space skipping (nerf.OccupancyGrid): samples in empty cells of a resolution^3 grid over the
    # scene's box skip the MLP, and rendering stops rays that have become opaque. The same in every experiment.
    occupancy_grid: bool = False
    occupancy_resolution: int = 128
    # The factor by which a visited cell's running opacity decays per update, unless its new value is larger:
    # nerfacc's 0.95 lets a cell once opaque stay occupied for many updates, which a short run never outlives.
    occupancy_decay: float = 0.95
    # A cell is occupied while its running opacity (alpha over a coarse sample's spacing) is above this, or
    # above the mean of the positive ones if that is lower: nerfacc's 0.01.
    occupancy_threshold: float = 0.01

    # Optimisation. 11000 steps of 4096 rays are about 50 epochs of a 100x100 scene's ~90 training views.
    steps: int = 11000
    batch_rays: int = 4096
    lr: float = 5e-4
    lr_final: float = 5e-5  # exponential decay from lr to lr_final over the run
    warmup_steps: int = 0  # the learning rate rises linearly over these first steps (0: none)
    # BitNet b1.58's two-stage schedule: from this fraction of the steps on, the learning rate is scaled by
    # stage2_lr_scale and weight decay stops (1.0: a single stage, the plain schedule).
    stage2_at: float = 1.0
    stage2_lr_scale: float = 1.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0: no clipping (the norm is logged either way)
    precision: str = "fp32"
    amp_dtype: str = "auto"  # auto: fp16 with gradient scaling on CUDA, bf16 on the CPU (no fast fp16 GEMM there)
    # torch.compile of the radiance fields. auto: BitNeRF's only, whose many small quantization ops
    # inductor fuses; NeRF's matmul-bound step ran slower compiled on the CPU (plan.compile_decision).
    compile: str = "auto"
    # TF32 for fp32 matmuls and cuDNN on GPUs that have it: the fast fp32 baseline. Off, fp32 is IEEE fp32,
    # so that exp1 is the strict baseline that AMP and BitNeRF are measured against.
    tf32: bool = False
    distributed: bool = False  # DistributedDataParallel over torchrun processes; batch_rays is the global batch
    grad_compression: str = "none"  # distributed runs: how the gradients travel between the processes
    quantized_training: str = "none"
    # How a process splits its share of a step's rays to fit its device: micro-batches of at most this many
    # rays whose gradients add up to the whole batch's (0: auto, the largest that fits, plan.py). Not an
    # experiment axis: a step's update does not depend on it.
    micro_batch_rays: int = 0
    int8_kernel: str = "auto"

    # Evaluation and outputs.
    log_every: int = 100
    eval_every: int = 1000
    eval_views: int = 2  # test views rendered at each periodic evaluation; the final one uses all
    ckpt_every: int = 1000
    video_frames: int = 120
    chunk: int = 8192  # rays per rendering chunk
    wandb: str = "auto"  # auto: WANDB_MODE if set, else online with W&B credentials here, else offline (runlog.py)

    def __post_init__(self):
        choices = {"precision": PRECISIONS, "amp_dtype": AMP_DTYPES, "compile": COMPILE_MODES, "model": MODELS,
                   "first_layer": FIRST_LAYERS, "device": DEVICES, "wandb": WANDB_MODES,
                   "preset": PRESETS, "int8_kernel": INT8_KERNELS,
                   "quantized_training": QUANTIZED_TRAINING, "grad_compression": GRAD_COMPRESSIONS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        positive = ("steps", "batch_rays", "depth", "width", "n_coarse", "log_every", "eval_every",
                    "eval_views", "ckpt_every", "video_frames", "chunk", "downscale", "occupancy_resolution")
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("n_fine", "pos_freqs", "dir_freqs", "weight_decay", "grad_clip", "seed", "val_views",
                    "warmup_steps", "micro_batch_rays"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must not be negative, got {getattr(self, key)}")
        if self.n_coarse < 2:
            raise UserError(f"n_coarse must be at least 2, got {self.n_coarse}")
        if self.n_fine and self.n_coarse < 3:
            # The fine pass samples the coarse weights of the interior bins, of which 2 samples have none.
            raise UserError(f"a fine pass (n_fine > 0) needs n_coarse of at least 3, got {self.n_coarse}")
        if not 0 < self.lr_final <= self.lr:
            raise UserError(f"need 0 < lr_final <= lr, got lr={self.lr}, lr_final={self.lr_final}")
        if not 0 < self.occupancy_threshold < 1:
            raise UserError(f"occupancy_threshold is an opacity: give a value in (0, 1), got {self.occupancy_threshold}")
        if not 0 <= self.occupancy_decay < 1:
            raise UserError(f"occupancy_decay must lie in [0, 1), got {self.occupancy_decay}")
        if not 0 < self.stage2_at <= 1:
            raise UserError(f"stage2_at is the fraction of the steps where the second stage starts: give a value"
                            f" in (0, 1] (1: one stage), got {self.stage2_at}")
        if not 0 < self.stage2_lr_scale <= 1:
            raise UserError(f"stage2_lr_scale must lie in (0, 1], got {self.stage2_lr_scale}")
        if any(not 0 <= s < self.depth - 1 for s in self.skips):
            raise UserError(f"skips must lie in [0, depth-1) = [0, {self.depth - 1}), got {list(self.skips)}")
        if self.grad_compression != "none" and not self.distributed:
            raise UserError(f"--grad-compression {self.grad_compression} compresses what DDP's processes send each other:"
                            f" add --distributed (exp9 is exp5 with it), or use --grad-compression none")
        if self.model == "bitnerf" and self.quantized_training != "none":
            raise UserError(f"--quantized-training {self.quantized_training} converts NeRF's layers, and BitNeRF"
                            f" trains its own ternary ones: use --model nerf, or --quantized-training none")
        if not self.name or "/" in self.name:
            raise UserError(f"name must be a plain directory name, got {self.name!r}")

    @property
    def samples_per_ray(self) -> int:
        """MLP queries per ray: the coarse samples, plus coarse and fine samples again in the fine pass."""
        return self.n_coarse + (self.n_coarse + self.n_fine if self.n_fine else 0)

    @property
    def jitter_per_ray(self) -> int:
        """Uniforms per training ray that place its samples within their bins (NeRF.forward); 0 without perturb."""
        return self.n_coarse + self.n_fine if self.perturb else 0


EXP1 = ExperimentConfig()

# The CPU preset: the same code paths, sized to finish in about 5 minutes on 2 CPU cores. Chosen by
# test PSNR at equal compute on the 100x100 lego scene (BENCHMARKS.md, "How the quick preset was
# chosen"): a 4x128 MLP, far cheaper per sample than 8x256; 6 frequencies as in tiny-NeRF (faster
# early convergence at 100x100); no view-dependent branch; 16 coarse + 32 fine samples; and many
# small batches with a high, decaying learning rate, which beat fewer larger ones. An occupancy grid of
# 32^3 cells whose cells decay by 0.8 per update (BENCHMARKS.md, "Empty-space skipping"): a 128^3 or
# 64^3 grid costs more to update on 2 CPU cores than it saves, and nerfacc's 0.95 keeps cells that were
# opaque early occupied for longer than this run lasts. The time the grid saves buys 3600 steps instead
# of 2400; the step count and a 16-frame video keep all of `make suite` within its 25 minutes on 2 CPU cores.
QUICK = replace(
    EXP1, preset="quick",
    depth=4, width=128, skips=(), pos_freqs=6, use_viewdirs=False, n_coarse=16, n_fine=32,
    occupancy_grid=True, occupancy_resolution=32, occupancy_decay=0.8,
    steps=3600, batch_rays=256, lr=5e-3, lr_final=2.5e-4,
    log_every=100, eval_every=900, ckpt_every=900, video_frames=16,
    # On the CPU, rendering in chunks of 1024 rays is faster than 4096: smaller activations stay clear
    # of the allocator's page-faulting large-block path.
    chunk=1024,
)

# Step counts between bookkeeping events; an experiment that changes the rays per step scales them.
STEP_INTERVALS = ("log_every", "eval_every", "ckpt_every")
# Options counted in the base experiment's steps: the command line applies them before the axis, so that
# exp3 --steps N trains N/4 steps of its 4x batch, the rays of exp1 --steps N.
STEP_COUNTS = ("steps", *STEP_INTERVALS)

# BitNeRF's own recipe, part of exp4's axis: chosen among learning rates, BitNet b1.58's two-stage schedule
# (a warm-up, then from half-way on a lower learning rate, with and without weight decay in the first stage)
# and which layers stay in high precision, on the validation views of both scenes (sweep.py; BENCHMARKS.md,
# "BitNeRF's own recipe"). The first layer, which multiplies the positional encoding, trains in int8 (and
# counts its 8 bits). Weight decay 0.1 in the first stage, none in the second, as BitNet b1.58 2B4T trains.
# exp1's recipe is --first-layer ternary --warmup-steps 0 --stage2-at 1 --stage2-lr-scale 1 --weight-decay 0.
BITNET_RECIPE = dict(first_layer="int8", warmup_steps=100, stage2_at=0.5, stage2_lr_scale=0.6, weight_decay=0.1)

# Each experiment changes one axis of its twin (exp1; exp2 for exp3; exp4 for exp6); everything else stays
# equal so comparisons are fair.
AXES = {
    "exp1": lambda base: base,
    "exp2": lambda base: replace(base, precision="amp"),
    # exp2 with a 4x batch at an equal budget of rays (a quarter of the steps): what the batch size buys
    # in throughput and quality for the same data, in a quarter of the optimizer steps. Logging,
    # evaluation and checkpoints keep their spacing in rays, so the curves compare point by point.
    "exp3": lambda base: replace(AXES["exp2"](base), batch_rays=4 * base.batch_rays, steps=base.steps // 4,
                                 **{k: max(1, getattr(base, k) // 4) for k in STEP_INTERVALS}),
    # BitNet b1.58 training with its own recipe (BITNET_RECIPE).
    "exp4": lambda base: replace(base, model="bitnerf", **BITNET_RECIPE),
    # Data parallel: the global batch stays exp1's (exp4's), split across the processes.
    "exp5": lambda base: replace(base, distributed=True),
    "exp6": lambda base: replace(AXES["exp4"](base), distributed=True),
    # The precision ladder: int8 and fp8 training of exp1's NeRF, and exp5 with compressed gradients.
    "exp7": lambda base: replace(base, quantized_training="int8"),
    "exp8": lambda base: replace(base, quantized_training="fp8-tensorwise"),
    "exp9": lambda base: replace(AXES["exp5"](base), grad_compression="bf16"),
}


def saved_fields(saved: dict) -> dict:
    """The fields of a configuration a checkpoint saved (dataclasses.asdict), in today's names and types:
    `quantize_first_layer` (a bool) became `first_layer`, and JSON-like lists are tuples again."""
    saved = dict(saved)
    if "quantize_first_layer" in saved:
        saved.setdefault("first_layer", "ternary" if saved.pop("quantize_first_layer") else "fp32")
    if "skips" in saved:
        saved["skips"] = tuple(saved["skips"])
    return saved


def experiment(name: str, base: ExperimentConfig = EXP1) -> ExperimentConfig:
    return replace(AXES[name](base), name=name)


def _option_type(annotation):
    """The argparse type for a dataclass field annotation (int, float, str, str | None, tuple[int, ...])."""
    if isinstance(annotation, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0]
    return annotation


CLI_FIELDS = [f for f in dataclasses.fields(ExperimentConfig) if f.name != "preset"]  # --quick sets the preset


def parse_args(name: str, argv: list[str] | None = None) -> tuple[ExperimentConfig, argparse.Namespace]:
    """The command line of `expN.py`: every config field as `--field-name`, plus run-control flags.

    Overrides apply on top of EXPn, or of the quick preset with the same axis when `--quick` is given.
    Step counts (STEP_COUNTS) count the base's steps: they apply before the axis, so exp3 scales them to
    its 4x batch (and refuses a --steps that is not a multiple of 4, which no equal budget of rays has).
    """
    parser = OneLineParser(prog=f"{name}.py", description=f"Train {name}: {EXPERIMENT_HELP[name]}.")
    parser.add_argument("--quick", action="store_true", help="the CPU preset (about 5 minutes on 2 cores)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="distributed runs: processes to launch (default: one per GPU, else 2 on the CPU)")
    parser.add_argument("--seeds", type=parse_seeds, default=None, metavar="S,S,...",
                        help="one run per seed, named NAME-seedS (the same seeds for every experiment pair"
                             " them in the report)")
    parser.add_argument("--plan", nargs="?", const="", default=None, metavar="PROFILE",
                        help="print the run's plan (device, precision, compile, int8 kernel, micro-batches, memory,"
                             " time) without training; PROFILE plans for that GPU on any machine:"
                             f" {', '.join(gpus.PROFILES)}")
    parser.add_argument("--max-restarts", type=int, default=0, metavar="N",
                        help="distributed runs: restart every process up to N times after one dies; each"
                             " restart resumes from the last checkpoint")
    for f in CLI_FIELDS:
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "micro_batch_rays":
            parser.add_argument(flag, type=parse_micro_batch_rays, default=None, metavar="auto|N",
                                help="split each step's rays into micro-batches of at most N rays per process,"
                                     " whose gradients add up to the whole batch's (default: auto, the largest"
                                     " that fits the device)")
        elif typing.get_origin(f.type) is tuple:
            parser.add_argument(flag, type=int, nargs="*", default=None, metavar="N")
        else:
            parser.add_argument(flag, type=_option_type(f.type), default=None, metavar=f.name.upper())
    args = parser.parse_args(argv)
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    if args.max_restarts < 0:
        raise UserError(f"--max-restarts must not be negative, got {args.max_restarts}")
    if args.seeds and args.seed is not None:
        raise UserError("give --seed or --seeds, not both")
    overrides = {f.name: getattr(args, f.name) for f in CLI_FIELDS if getattr(args, f.name) is not None}
    if "skips" in overrides:
        overrides["skips"] = tuple(overrides["skips"])
    base = QUICK if args.quick else EXP1
    step_counts = {k: overrides.pop(k) for k in STEP_COUNTS if k in overrides}
    scaled = experiment(name, replace(base, **step_counts))
    if "steps" in step_counts:
        factor = experiment(name, base).batch_rays // base.batch_rays
        if step_counts["steps"] % factor:
            raise UserError(f"--steps {step_counts['steps']}: {name} trains 1/{factor} of the steps at {factor}x the"
                            f" batch (the rays of exp1 --steps N), so give a multiple of {factor}")
        if factor > 1 and os.environ.get("RANK", "0") == "0":
            print(f"{name}: --steps {step_counts['steps']} counts exp1's steps of {base.batch_rays} rays: {scaled.steps}"
                  f" steps of {scaled.batch_rays} rays, the same rays", file=sys.stderr)
    return replace(scaled, **overrides), args


def parse_micro_batch_rays(text: str) -> int:
    """--micro-batch-rays auto|N: auto is 0 in the configuration."""
    if text == "auto":
        return 0
    try:
        rays = int(text)
    except ValueError:
        rays = 0
    if rays < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a number of rays of at least 1, got {text!r}")
    return rays


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds such as 0,1,2, got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and not negative, got {text!r}")
    return seeds


def seed_argvs(argv: list[str], seeds: list[int], name: str) -> list[list[str]]:
    """The command line of each run of `--seeds`: run NAME-seedS with --seed S in group NAME."""
    base = without_option(argv, "--seeds")
    return [[*base, "--seed", str(s), "--name", f"{name}-seed{s}", "--group", name] for s in seeds]


EXPERIMENT_HELP = {
    "exp1": "NeRF baseline in fp32",
    "exp2": "automatic mixed precision with gradient scaling",
    "exp3": "exp2 with a 4x larger batch at an equal budget of rays (--steps counts exp1's steps: it trains a quarter)",
    "exp4": "BitNeRF, BitNet b1.58 ternary weights and int8 activations (torchao), trained with its own recipe",
    "exp5": "NeRF with DistributedDataParallel (launches torchrun itself)",
    "exp6": "BitNeRF with DistributedDataParallel (launches torchrun itself)",
    "exp7": "NeRF trained in int8: int8 weights and activations in every hidden layer's forward pass",
    "exp8": "NeRF trained in fp8 (torchao's float8 training; emulated where the device has no fp8 matmul)",
    "exp9": "exp5 with compressed gradients: DDP with a bf16 compression hook (launches torchrun itself)",
}
