"""What the scripts under benchmarks/ share: the repository on the import path, the configuration of a benchmark
(the quick preset or the full one, shrunk by --tiny to a model that trains a step in milliseconds) and a training
step set up as bench.py and train.py set it up (bitnerf.build_model, step.Optimization.build, step.train_step)."""

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import bitnerf  # noqa: E402
import configs  # noqa: E402
import precision  # noqa: E402
from dataset import RaySampler  # noqa: E402
from step import Optimization, train_step  # noqa: E402

CPU = torch.device("cpu")
# --tiny: a model and batch small enough that every script runs in seconds (what tests/test_benchmarks.py runs).
TINY = dict(depth=2, width=32, skips=(), pos_freqs=4, n_coarse=8, n_fine=8, batch_rays=32, occupancy_grid=False)


def add_common_flags(parser: argparse.ArgumentParser, full: bool = False) -> None:
    """--data, the preset (--full, or --quick where the full configuration is the default: args.full either way)
    and --tiny, the same in every script."""
    parser.add_argument(
        "--data", default=None, help="the scene: a tiny-nerf .npz or a Blender folder (default: the built-in scene)"
    )
    if full:
        parser.add_argument(
            "--quick", dest="full", action="store_false", help="the quick preset (default: the full configuration)"
        )
        parser.set_defaults(full=True)
    else:
        parser.add_argument("--full", action="store_true", help="the full configuration (default: the quick preset)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny model and few repeats: runs in seconds, measures nothing worth keeping (what the tests run)",
    )


def config_of(name: str, full: bool = False, tiny: bool = False, **changes) -> configs.ExperimentConfig:
    """Experiment `name` on the quick preset (full: the full configuration), one process, eager; tiny: shrunk."""
    config = configs.experiment(name, configs.EXP1 if full else configs.QUICK)
    return dataclasses.replace(config, **{"distributed": False, "compile": "off", **(TINY if tiny else {}), **changes})


@dataclasses.dataclass
class Training:
    """One experiment's model, optimizer and rays, on the CPU: step(i) trains on batch i (step.train_step)."""

    config: configs.ExperimentConfig
    model: torch.nn.Module
    optimization: Optimization
    sampler: RaySampler
    autocast: Callable

    def step(self, index: int, micro_batch_rays: int = 0) -> dict:
        return train_step(
            self.model, self.sampler.batch(index), self.optimization, self.config, self.autocast, micro_batch_rays
        )


def training(config: configs.ExperimentConfig, scene, model: torch.nn.Module | None = None) -> Training:
    """config's training set-up on the CPU as train.py builds it; model: these weights (default: a new model of
    config.seed)."""
    dtype = precision.amp_dtype(config, CPU)
    if model is None:
        torch.manual_seed(config.seed)
        model = bitnerf.build_model(config, scene, CPU)
    model.train()
    return Training(
        config,
        model,
        Optimization.build(config, model, CPU, dtype),
        RaySampler(scene, CPU, config.batch_rays, config.seed, config.jitter_per_ray),
        lambda: precision.autocast(CPU, dtype),
    )


def add_counts(parser: argparse.ArgumentParser, counts: dict[str, tuple[int, int, str]]) -> None:
    """Integer flags {name: (default, value under --tiny, help)}; parse() puts the --tiny values in."""
    for name, (default, _, text) in counts.items():
        parser.add_argument(f"--{name}", type=int, default=default, help=f"{text} (default {default})")
    parser.set_defaults(tiny_counts={name.replace("-", "_"): tiny for name, (_, tiny, _) in counts.items()})


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser's arguments, with each count of add_counts at its --tiny value under --tiny."""
    args = parser.parse_args(argv)
    if args.tiny:
        for name, value in getattr(args, "tiny_counts", {}).items():
            setattr(args, name, value)
    return args
