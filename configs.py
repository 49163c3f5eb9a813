"""Experiment configurations: one dataclass, EXP1, and every other experiment as its twin with one axis
changed: exp2, exp4 and exp5 are exp1 with one axis, exp3 is exp2 with a 4x batch (so against exp1 it
changes two: AMP and the batch), exp6 is exp4 with DDP (against exp1: BitNeRF and DDP).

An experiment is a function of a base configuration (`AXES`), so the same axis applies to the full
configuration (`EXP1`) and to the CPU preset (`QUICK`): `experiment("exp3", QUICK)` is the quick
exp2 with a 4x batch at the same rays, nothing else changed.
"""

from dataclasses import dataclass, field, replace

from utils import UserError

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
# The fields with a fixed set of values: ExperimentConfig refuses any other, and expN.py offers these.
CHOICES = {
    "precision": PRECISIONS,
    "amp_dtype": AMP_DTYPES,
    "compile": COMPILE_MODES,
    "model": MODELS,
    "first_layer": FIRST_LAYERS,
    "device": DEVICES,
    "wandb": WANDB_MODES,
    "preset": PRESETS,
    "int8_kernel": INT8_KERNELS,
    "quantized_training": QUANTIZED_TRAINING,
    "grad_compression": GRAD_COMPRESSIONS,
}


def option(default, help_text: str):
    """A configuration field with its help: the help of its `--field-name` option (command_line.py)."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class ExperimentConfig:
    """One run's configuration. Each field's help (its metadata) is the help of its `--field-name` option in
    `expN.py --help` and in docs/flags.md (`python command_line.py > docs/flags.md`)."""

    name: str = option(
        "exp1", "the run's name: the run directory is OUT/NAME, and W&B and the report show the run under it"
    )
    # Overrides on top keep it: a quick run with more steps is still a quick-preset run, and W&B tags it so.
    preset: str = option(
        "full",
        "the preset the run started from: full, or quick with --quick (no option of its own); W&B tags the run with it",
    )
    data: str | None = option(
        None, "the scene: a tiny-nerf .npz file or a Blender scene folder; without it, the built-in scene"
    )
    downscale: int = option(1, "Blender folders only: load the images at 1/DOWNSCALE of their resolution")
    val_views: int = option(
        0,
        "scenes without validation views (.npz, the built-in scene): hold out this many training views, evenly spaced,"
        " as validation views, on which settings are chosen, never on test views (0: none)",
    )
    out: str = option("runs", "the directory of the run directories: the run writes OUT/NAME")
    device: str = option("auto", "where to train; auto: a CUDA GPU where PyTorch can use one, else the CPU")
    seed: int = option(
        0, "the random seed of the initialisation, the ray batches, the sample jitter and the occupancy grid"
    )
    group: str | None = option(
        None,
        "the group the report and W&B average over, such as one experiment's runs on several seeds (--seeds sets it); "
        "without it, the run is a group of its own, named as the run",
    )

    model: str = option(
        "nerf",
        "nerf: the NeRF of Mildenhall et al. (2020); bitnerf: its MLP with BitNet b1.58 ternary weights and int8 "
        "activations (torchao)",
    )
    # Off: ternary heads cost test PSNR and would save only a few of the model's weights.
    quantize_heads: bool = option(
        False,
        "bitnerf only: quantize the density and colour heads too; off, as in torchao's BitNet recipe, they stay in "
        'high precision (docs/bitnerf.md, "Ternary heads")',
    )
    first_layer: str = option(
        "ternary",
        "bitnerf only: what each field's first layer, the one that multiplies the positional encoding, trains as: "
        "ternary like the hidden layers, int8 (int8 weights and inputs) or fp32; its bits count in layers.json and in "
        "the model file",
    )
    depth: int = option(8, "layers of each radiance field's MLP (coarse and fine)")
    width: int = option(256, "units in each layer of the MLP")
    skips: tuple[int, ...] = option(
        (4,), "the layers (from 0, below DEPTH-1) after which the encoded point is concatenated again; no values: none"
    )
    pos_freqs: int = option(10, "frequencies of the positional encoding of points")
    dir_freqs: int = option(4, "frequencies of the positional encoding of view directions (with --use-viewdirs)")
    use_viewdirs: bool = option(
        True, "a colour head that also sees the encoded view direction (off: colour and density from the point alone)"
    )
    # 64 coarse + 64 fine samples, as Mildenhall et al.: enough at 100x100.
    n_coarse: int = option(64, "stratified samples per ray for the coarse field (at least 2; 3 with a fine pass)")
    n_fine: int = option(
        64,
        "samples per ray drawn from the coarse weights for the fine field, which evaluates the coarse samples again "
        "with them (0: no fine pass)",
    )
    perturb: bool = option(True, "jitter the training samples within their bins (off: deterministic samples)")
    # The same in every experiment, so that it changes no comparison.
    occupancy_grid: bool = option(
        False,
        "empty-space skipping (nerf.OccupancyGrid): samples in empty cells of a grid over the scene's box skip the "
        "MLP, and rendering stops rays that have become opaque",
    )
    occupancy_resolution: int = option(128, "cells per side of the occupancy grid (RESOLUTION^3 cells)")
    # nerfacc's 0.95 lets a cell once opaque stay occupied for many updates, which a short run never outlives.
    occupancy_decay: float = option(
        0.95,
        "the factor by which a visited cell's running opacity decays per grid update, unless its new value is larger; "
        "in [0, 1)",
    )
    occupancy_threshold: float = option(
        0.01,
        "a cell is occupied while its running opacity (alpha over a coarse sample's spacing) is above this, or above "
        "the mean of the positive ones if that is lower, as in nerfacc; in (0, 1)",
    )

    # 11000 steps of 4096 rays are about 50 epochs of a 100x100 scene's ~90 training views.
    steps: int = option(
        11000,
        "optimizer steps, counted at exp1's batch: exp3, at 4x the batch, trains a quarter of them, the same rays",
    )
    batch_rays: int = option(4096, "rays per optimizer step; in a distributed run, the global batch over all processes")
    lr: float = option(
        5e-4, "AdamW's learning rate at the start (after any warm-up), decaying exponentially to LR_FINAL"
    )
    lr_final: float = option(5e-5, "the learning rate at the last step (at most LR)")
    warmup_steps: int = option(0, "the learning rate rises linearly over these first steps (0: no warm-up)")
    stage2_at: float = option(
        1.0,
        "BitNet b1.58's two-stage schedule: from this fraction of the steps on, the learning rate is scaled by "
        "STAGE2_LR_SCALE and weight decay stops (1: a single stage, the plain schedule)",
    )
    stage2_lr_scale: float = option(1.0, "the factor on the learning rate in the second stage (--stage2-at); in (0, 1]")
    weight_decay: float = option(0.0, "AdamW's weight decay (in the first stage only when --stage2-at is below 1)")
    grad_clip: float = option(
        0.0, "clip the gradients' global norm to this (0: no clipping; the norm is logged either way)"
    )
    precision: str = option("fp32", "fp32, or amp: automatic mixed precision (autocast to --amp-dtype)")
    amp_dtype: str = option(
        "auto",
        "--precision amp only: the autocast dtype; auto: fp16 with gradient scaling on CUDA, bf16 on the CPU (no fast "
        "fp16 matmul there)",
    )
    # auto: NeRF's matmul-bound step ran slower compiled on the CPU (plan.compile_decision).
    compile: str = option(
        "auto",
        "torch.compile the radiance fields; auto: BitNeRF's and fp8 training's, whose many small quantization ops "
        "inductor fuses, and only where inductor can compile (see --plan)",
    )
    # Off, so that exp1 is the strict baseline that AMP and BitNeRF are measured against.
    tf32: bool = option(
        False, "TF32 for fp32 matmuls and cuDNN on GPUs that have it, the fast fp32 baseline (off: IEEE fp32)"
    )
    distributed: bool = option(
        False,
        "DistributedDataParallel over torchrun processes, which expN.py launches itself (--nproc); BATCH_RAYS is the "
        "global batch",
    )
    grad_compression: str = option(
        "none",
        "--distributed only: how the gradients travel between the processes: none (fp32 all-reduce), bf16 (DDP's bf16 "
        "compression hook) or powersgd (PowerSGD's low-rank factors)",
    )
    quantized_training: str = option(
        "none",
        "--model nerf only: what its Linear layers train as: none (the model's own layers), int8 (int8 weights and "
        "activations in the forward pass), or fp8 with torchao's tensorwise or rowwise scaling",
    )
    # Not an experiment axis: a step's update does not depend on it.
    micro_batch_rays: int = option(
        0,
        "split each process's share of a step's rays into micro-batches of at most N rays, whose gradients add up to "
        "the whole batch's; auto: the largest that fits the device (plan.py)",
    )
    int8_kernel: str = option(
        "auto",
        "the int8 matmul of the layers that run in int8 (BitNeRF's, --quantized-training int8's): torchao's Triton "
        "kernel, torch._int_mm, or torch._int_mm with K padded to a multiple of 8; auto: plan.py's rule for the device"
        " (docs/gpus.md)",
    )

    log_every: int = option(100, "log the training loss and PSNR every this many steps (and at the last)")
    eval_every: int = option(1000, "evaluate on EVAL_VIEWS views every this many steps")
    eval_views: int = option(
        2,
        "views rendered at each periodic evaluation (validation views where the scene has them, else test views); the "
        "final evaluation renders all",
    )
    ckpt_every: int = option(
        1000, "save a checkpoint, which --resume continues from, every this many steps (and at the last)"
    )
    video_frames: int = option(120, "frames of the 360-degree video rendered at the end")
    chunk: int = option(8192, "rays per rendering chunk when evaluating (fewer: less memory)")
    wandb: str = option(
        "auto", "Weights & Biases logging; auto: WANDB_MODE if set, else online with W&B credentials here, else offline"
    )

    def __post_init__(self):
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        positive = (
            "steps",
            "batch_rays",
            "depth",
            "width",
            "n_coarse",
            "log_every",
            "eval_every",
            "eval_views",
            "ckpt_every",
            "video_frames",
            "chunk",
            "downscale",
            "occupancy_resolution",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in (
            "n_fine",
            "pos_freqs",
            "dir_freqs",
            "weight_decay",
            "grad_clip",
            "seed",
            "val_views",
            "warmup_steps",
            "micro_batch_rays",
        ):
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
            raise UserError(
                f"occupancy_threshold is an opacity: give a value in (0, 1), got {self.occupancy_threshold}"
            )
        if not 0 <= self.occupancy_decay < 1:
            raise UserError(f"occupancy_decay must lie in [0, 1), got {self.occupancy_decay}")
        if not 0 < self.stage2_at <= 1:
            raise UserError(
                f"stage2_at is the fraction of the steps where the second stage starts: give a value"
                f" in (0, 1] (1: one stage), got {self.stage2_at}"
            )
        if not 0 < self.stage2_lr_scale <= 1:
            raise UserError(f"stage2_lr_scale must lie in (0, 1], got {self.stage2_lr_scale}")
        if any(not 0 <= s < self.depth - 1 for s in self.skips):
            raise UserError(f"skips must lie in [0, depth-1) = [0, {self.depth - 1}), got {list(self.skips)}")
        if self.grad_compression != "none" and not self.distributed:
            raise UserError(
                f"--grad-compression {self.grad_compression} compresses what DDP's processes send each other:"
                f" add --distributed (exp9 is exp5 with it), or use --grad-compression none"
            )
        if self.model == "bitnerf" and self.quantized_training != "none":
            raise UserError(
                f"--quantized-training {self.quantized_training} converts NeRF's layers, and BitNeRF"
                f" trains its own ternary ones: use --model nerf, or --quantized-training none"
            )
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

# The CPU preset: the same code paths, sized to run on 2 CPU cores (docs/runs.md, "The presets"). Chosen by
# test PSNR at equal compute on the 100x100 lego scene (docs/history/2026-11-23-quick-preset.md): a 4x128
# MLP, far cheaper per sample than 8x256; 6 frequencies as in tiny-NeRF (faster
# early convergence at 100x100); no view-dependent branch; 16 coarse + 32 fine samples; and many
# small batches with a high, decaying learning rate, which beat fewer larger ones. An occupancy grid of
# 32^3 cells whose cells decay by 0.8 per update (docs/occupancy.md, "The quick preset's grid"): a 128^3 or
# 64^3 grid costs more to update on 2 CPU cores than it saves, and nerfacc's 0.95 keeps cells that were
# opaque early occupied for longer than this run lasts. The time the grid saves buys 3600 steps instead
# of 2400; the step count and a 16-frame video keep all of `make suite` within its 25 minutes on 2 CPU cores
# (docs/performance.md, "How long the commands take").
QUICK = replace(
    EXP1,
    preset="quick",
    depth=4,
    width=128,
    skips=(),
    pos_freqs=6,
    use_viewdirs=False,
    n_coarse=16,
    n_fine=32,
    occupancy_grid=True,
    occupancy_resolution=32,
    occupancy_decay=0.8,
    steps=3600,
    batch_rays=256,
    lr=5e-3,
    lr_final=2.5e-4,
    log_every=100,
    eval_every=900,
    ckpt_every=900,
    video_frames=16,
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
# and which layers stay in high precision, on the validation views of both scenes (sweep.py; docs/bitnerf.md,
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
    "exp3": lambda base: replace(
        AXES["exp2"](base),
        batch_rays=4 * base.batch_rays,
        steps=base.steps // 4,
        **{k: max(1, getattr(base, k) // 4) for k in STEP_INTERVALS},
    ),
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
