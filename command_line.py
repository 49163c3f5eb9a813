"""The command line of `expN.py`: every configuration field as `--field-name`, with its help, choices and that
experiment's default taken from the field (configs.py), plus the run-control flags; and docs/flags.md, written from
the same source by `python command_line.py > docs/flags.md`."""

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import replace

import gpus
from configs import AXES, CHOICES, EXP1, QUICK, STEP_COUNTS, ExperimentConfig, experiment
from utils import OneLineParser, UserError, without_option


def _option_type(annotation):
    """The argparse type for a dataclass field annotation (int, float, str, str | None, tuple[int, ...])."""
    if isinstance(annotation, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0]
    return annotation


CLI_FIELDS = [f for f in dataclasses.fields(ExperimentConfig) if f.name != "preset"]  # --quick sets the preset
# The option groups of --help and docs/flags.md, each field's option in one (tests/test_configs.py checks it).
FIELD_GROUPS = {
    "run control": ("name", "out", "device", "seed", "group"),
    "data": ("data", "downscale", "val_views"),
    "model": (
        "model",
        "quantize_heads",
        "first_layer",
        "depth",
        "width",
        "skips",
        "pos_freqs",
        "dir_freqs",
        "use_viewdirs",
        "n_coarse",
        "n_fine",
        "perturb",
    ),
    "occupancy grid": ("occupancy_grid", "occupancy_resolution", "occupancy_decay", "occupancy_threshold"),
    "optimisation": (
        "steps",
        "batch_rays",
        "lr",
        "lr_final",
        "warmup_steps",
        "stage2_at",
        "stage2_lr_scale",
        "weight_decay",
        "grad_clip",
        "micro_batch_rays",
    ),
    "precision and kernels": ("precision", "amp_dtype", "tf32", "quantized_training", "compile", "int8_kernel"),
    "distributed": ("distributed", "grad_compression"),
    "evaluation and outputs": ("log_every", "eval_every", "eval_views", "ckpt_every", "video_frames", "chunk", "wandb"),
}


def shown_default(name: str, base: ExperimentConfig, key: str) -> str:
    """Field key's default in experiment name on base, as its option takes it: a step count in the base's steps,
    with the experiment's own where its axis scales them (exp3)."""

    def text(value):
        if isinstance(value, bool):
            return "on" if value else "off"
        if value is None or value == ():
            return "none"
        if isinstance(value, tuple):
            return " ".join(map(str, value))
        return "auto" if key == "micro_batch_rays" and value == 0 else str(value)

    value = getattr(experiment(name, base), key)
    if key in STEP_COUNTS and value != getattr(base, key):
        return f"{text(getattr(base, key))} ({value} of {name}'s steps)"
    return text(value)


def default_help(name: str, key: str) -> str:
    full, quick = shown_default(name, EXP1, key), shown_default(name, QUICK, key)
    return f"default: {full}" + ("" if quick == full else f"; --quick: {quick}")


def build_parser(name: str) -> OneLineParser:
    """expN.py's options: the run-control flags, and every config field as `--field-name` with its help, its
    choices and its default in this experiment (and in the quick preset where that differs)."""
    parser = OneLineParser(prog=f"{name}.py", description=f"Train {name}: {EXPERIMENT_HELP[name]}.")
    groups = {title: parser.add_argument_group(title) for title in FIELD_GROUPS}
    run = groups["run control"]
    run.add_argument(
        "--quick", action="store_true", help='the CPU preset, sized for 2 cores (docs/runs.md, "The presets")'
    )
    run.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        metavar="S,S,...",
        help="one run per seed, named NAME-seedS (the same seeds for every experiment pair them in the report)",
    )
    run.add_argument(
        "--plan",
        nargs="?",
        const="",
        default=None,
        metavar="PROFILE",
        help="print the run's plan (device, precision, compile, int8 kernel, micro-batches, memory,"
        " time) without training; PROFILE plans for that GPU on any machine:"
        f" {', '.join(gpus.PROFILES)}",
    )
    fields = {f.name: f for f in CLI_FIELDS}
    for title, keys in FIELD_GROUPS.items():
        for key in keys:
            f = fields[key]
            if f.type is bool:
                kwargs = dict(action=argparse.BooleanOptionalAction)
            elif key == "micro_batch_rays":
                kwargs = dict(type=parse_micro_batch_rays, metavar="auto|N")
            elif typing.get_origin(f.type) is tuple:
                kwargs = dict(type=int, nargs="*", metavar="N")
            elif key in CHOICES:
                kwargs = dict(choices=CHOICES[key])
            else:
                kwargs = dict(type=_option_type(f.type), metavar=key.upper())
            text = f"{f.metadata.get('help', '')} [{default_help(name, key)}]"
            groups[title].add_argument(
                "--" + key.replace("_", "-"), default=None, help=text.replace("%", "%%"), **kwargs
            )
    ddp = groups["distributed"]
    ddp.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="distributed runs: processes to launch [default: one per GPU, else 2 on the CPU]",
    )
    ddp.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help="distributed runs: restart every process up to N times after one dies; each restart"
        " resumes from the last checkpoint [default: 0]",
    )
    return parser


def parse_args(name: str, argv: list[str] | None = None) -> tuple[ExperimentConfig, argparse.Namespace]:
    """The command line of `expN.py` (build_parser): every config field as `--field-name`, plus run-control flags.

    Overrides apply on top of EXPn, or of the quick preset with the same axis when `--quick` is given.
    Step counts (STEP_COUNTS) count the base's steps: they apply before the axis, so exp3 scales them to
    its 4x batch (and refuses a --steps that is not a multiple of 4, which no equal budget of rays has).
    """
    args = build_parser(name).parse_args(argv)
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
            raise UserError(
                f"--steps {step_counts['steps']}: {name} trains 1/{factor} of the steps at {factor}x the"
                f" batch (the rays of exp1 --steps N), so give a multiple of {factor}"
            )
        if factor > 1 and os.environ.get("RANK", "0") == "0":
            print(
                f"{name}: --steps {step_counts['steps']} counts exp1's steps of {base.batch_rays} rays: {scaled.steps}"
                f" steps of {scaled.batch_rays} rays, the same rays",
                file=sys.stderr,
            )
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


def flags_markdown() -> str:
    """docs/flags.md: expN.py's options group by group with exp1's defaults, and what each experiment changes."""

    def row(*cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    fields = {f.name: f for f in CLI_FIELDS}
    lines = [
        "# expN.py's options",
        "",
        (
            "Generated from configs.py's fields by `python command_line.py > docs/flags.md`; tests/test_configs.py"
            " fails when it is stale. Defaults are exp1's, under `--quick` the quick preset's; `python expN.py --help`"
            " shows expN's, and the last table what each experiment changes."
        ),
    ]
    for group in build_parser("exp1")._action_groups:
        if group.title not in FIELD_GROUPS:
            continue  # argparse's own, with --help alone
        lines += [
            "",
            f"## {group.title}",
            "",
            row("option", "choices", "default", "--quick", "what it does"),
            row(*["---"] * 5),
        ]
        for action in group._group_actions:
            flags = ", ".join(f"`{s}`" for s in action.option_strings)
            choices = ", ".join(f"`{c}`" for c in action.choices or ())
            if action.dest in fields:
                full, quick = (shown_default("exp1", base, action.dest) for base in (EXP1, QUICK))
                lines.append(row(flags, choices, full, quick, fields[action.dest].metadata["help"]))
            else:
                text, _, default = action.help.partition(" [default: ")  # a run-control flag's default in its help
                default = default.removesuffix("]") or ("off" if action.default is False else "")
                lines.append(row(flags, choices, default, default, text))
    lines += [
        "",
        "## Each experiment's defaults",
        "",
        row("experiment", "what it trains", "defaults unlike exp1's", "under --quick"),
        row(*["---"] * 4),
    ]
    for name in AXES:
        changed = [
            [
                f"`--{key.replace('_', '-')}` {shown_default(name, base, key)}"
                for key in fields
                if key != "name" and getattr(experiment(name, base), key) != getattr(base, key)
            ]
            for base in (EXP1, QUICK)
        ]
        lines.append(row(name, EXPERIMENT_HELP[name], *(", ".join(c) or "none" for c in changed)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(flags_markdown())
